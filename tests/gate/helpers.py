"""A real job process for liveness tests: claims a run, heartbeats, and waits for a line on
stdin (then finishes) or for a signal (then dies without recording anything)."""

from __future__ import annotations

import subprocess
import sys

JOB_SCRIPT = r"""
import sys, threading
from shipit.gate.url import open_store
from shipit.gate.base import ClaimSpec, Run

store = open_store(sys.argv[1])
run = store.claim(ClaimSpec(job="sleeper", host="h1", command=("sleep", "forever")))
assert isinstance(run, Run), run
print(run.id, flush=True)
done = threading.Event()

def beat():
    while not done.wait(0.05):
        store.heartbeat(run.id)

threading.Thread(target=beat, daemon=True).start()
sys.stdin.readline()
done.set()
store.finish(run.id, "finished", 0, "done")
store.close()
"""


def start_job(url: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", JOB_SCRIPT, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    run_id = proc.stdout.readline().strip()
    assert run_id, f"job process failed to claim (exit {proc.poll()})"
    return proc, run_id


WAITER_SCRIPT = r"""
import sys
from shipit.gate.url import open_store
from shipit.gate.base import ClaimSpec

store = open_store(sys.argv[1])
entry = store.enter_waiting(ClaimSpec(job="waiter", host="h1", command=("true",)), store.gate())
print(entry.id, flush=True)
sys.stdin.readline()
"""


def start_waiter(url: str) -> tuple[subprocess.Popen[str], str]:
    """A process with a waiting entry, until it gets a line on stdin or is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WAITER_SCRIPT, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    entry_id = proc.stdout.readline().strip()
    assert entry_id, f"the waiter failed to enter (exit {proc.poll()})"
    return proc, entry_id
