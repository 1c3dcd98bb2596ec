"""The job the chaos trials run on the hosts (copied into the deployed app).

argv: LEDGER TOTAL DELAY STATEFUL(0|1). Appends "item attempt release wall mono" to LEDGER for
every item it processes: wall is time.time() and mono time.monotonic() at the write, so the checker
can tell how far this job's clock was off (a host with a skewed clock fakes the first, not the
second). A stateful job checkpoints {"next": i + 1} after writing item i, so a crash between
the two re-does at most item i: the only duplicates allowed are items after the last checkpoint.
A stateless one starts again from item 1 on every attempt.
"""

from __future__ import annotations

import os
import sys
import time

from shipit.jobs.api import job


def main() -> int:
    ledger, total, delay, stateful = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
    release = os.path.basename(os.path.realpath("."))
    attempt = os.environ.get("SHIPIT_ATTEMPT", "0")
    with job("chaos") as run:
        start = int((run.resume_state or {}).get("next", 1)) if stateful else 1
        for i in range(start, total + 1):
            if run.sleep(delay):
                if stateful:
                    run.checkpoint({"next": i})
                return 0
            # One O_APPEND write per line: concurrent or killed writers never tear a line.
            fd = os.open(ledger, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, f"{i} {attempt} {release} {time.time():.3f} {time.monotonic():.3f}\n".encode())
            finally:
                os.close(fd)
            if stateful:
                run.checkpoint({"next": i + 1})
    return 0


if __name__ == "__main__":
    sys.exit(main())
