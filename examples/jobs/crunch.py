"""A long, stateful Python job: processes items 1..N exactly once across stops and restarts.

    shipit job run --name crunch -- python3 examples/jobs/crunch.py N OUT

Each processed item is appended to OUT. When a deploy asks the job to stop, the loop notices
(should_stop()), checkpoints the next item and exits; the next run resumes from there.
Without `shipit job run` around it, job() claims a run itself (SHIPIT_STORE must be set).
"""

from __future__ import annotations

import os
import sys
import time

from shipit.jobs.api import job


def main() -> int:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    out = sys.argv[2] if len(sys.argv) > 2 else "crunch.out"
    delay = float(os.environ.get("CRUNCH_DELAY", "0.02"))
    with job("crunch", key=os.environ.get("CRUNCH_KEY")) as run:
        state = run.resume_state or {"next": 1}
        print(f"crunch: run {run.id} attempt {run.attempt} starting at {state['next']}", flush=True)
        for item in range(state["next"], total + 1):
            if run.should_stop():
                run.checkpoint({"next": item})
                print(f"crunch: stopped, checkpointed at {item}", flush=True)
                return 0
            time.sleep(delay)  # the "work"
            with open(out, "a") as fh:
                fh.write(f"{item}\n")
            run.checkpoint({"next": item + 1})
            run.progress(item, total)
        print("crunch: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
