"""A long, stateful job: processes items 1..N, checkpointing its position after each.

Run it through shipit so a deploy can stop it and start it again on the new release:

    shipit job run --name crunch --cwd /srv/app/current -- python3 jobs/crunch.py 40

When a deploy asks it to stop, it saves where it got to and exits; the restarted run (attempt+1,
on the new code) resumes from that checkpoint. Every item lands exactly once in data/crunch.log.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

from shipit.jobs.api import job

HERE = pathlib.Path(__file__).resolve().parent.parent


def main() -> int:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    delay = float(os.environ.get("CRUNCH_DELAY", "0.25"))
    out = HERE / "data" / "crunch.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    with job("crunch", key="crunch") as run:
        state = run.resume_state or {"next": 1}
        start = state["next"]
        if start > 1:
            print(f"crunch: resuming at item {start} on release {HERE.name}", flush=True)
        for item in range(start, total + 1):
            if run.should_stop():
                run.checkpoint({"next": item})
                print(f"crunch: asked to stop, checkpointed at item {item}", flush=True)
                return 0
            time.sleep(delay)  # the "work"
            with out.open("a") as fh:
                fh.write(f"{item} {HERE.name}\n")
            run.checkpoint({"next": item + 1})
            run.progress(item, total)
        print(f"crunch: done, {total} items, last on release {HERE.name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
