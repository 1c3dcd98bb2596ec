"""Helpers for the deploy-side job tests: real supervisors (`shipit job run`) against a real store.

Waits poll the store with a short sleep and a generous deadline: they are "until this happens"
waits, never assertions about how long something took.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shipit.events import EventBus, Recorder
from shipit.gate.base import ACTIVE_STATES, Run, Store

SHIPIT = [sys.executable, "-m", "shipit"]

# A stateful job: counts items start..total into a file, and on SIGTERM saves where it got to
# through the store (the same thing the job API does) and exits.
STATEFUL_JOB = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from shipit.gate.url import open_store
    total, out, delay = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    state = json.loads(os.environ.get("SHIPIT_RESUME_STATE") or '{"next": 1}')
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    i = state["next"]
    while i <= total:
        if stop:
            store = open_store(os.environ["SHIPIT_STORE"])
            store.save_checkpoint(os.environ["SHIPIT_RUN_ID"], {"next": i})
            store.close()
            sys.exit(0)
        time.sleep(delay)
        with open(out, "a") as fh:
            rel = os.path.basename(os.path.realpath(os.getcwd()))
            fh.write(f"{i} {os.environ['SHIPIT_ATTEMPT']} {rel}\\n")
        i += 1
    """
)


def wait_for(pred: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def start_job(
    url: str, name: str, command: list[str], *, host: str = "h1", cwd: str | None = None,
    grace: float = 2.0, log: Path | None = None,
) -> subprocess.Popen[bytes]:
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    argv = [*SHIPIT, "job", "run", "--store", url, "--host", host, "--name", name,
            "--grace", str(grace), "--heartbeat", "0.2", "--max-wait", "30"]
    if cwd:
        argv += ["--cwd", cwd]
    proc = subprocess.Popen([*argv, "--", *command], stdout=out, stderr=out,
                            start_new_session=True)
    if log:
        out.close()  # type: ignore[union-attr]
    return proc


def running_run(store: Store, name: str, timeout: float = 20.0) -> Run:
    def find() -> Run | None:
        for r in store.list_runs(states=ACTIVE_STATES):
            if r.job == name and store.is_alive(r):
                return r
        return None

    return wait_for(find, timeout, f"job {name} to be running")


def stateful_command(tmp: Path, total: int = 400, delay: float = 0.02) -> tuple[list[str], Path]:
    script = tmp / "stateful.py"
    script.write_text(STATEFUL_JOB)
    out = tmp / "items.txt"
    return [sys.executable, str(script), str(total), str(out), str(delay)], out


def bus() -> tuple[EventBus, Recorder]:
    b = EventBus()
    r = Recorder()
    b.subscribe(r)
    return b, r


def emitter(b: EventBus) -> Callable[..., Any]:
    return b.emit


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def agent(op: str, opts: dict[str, Any], *, env: dict[str, str] | None = None,
          timeout: float = 60.0) -> tuple[int, list[dict[str, Any]]]:
    proc = subprocess.run(
        [*SHIPIT, "agent", op], input=json.dumps(opts) + "\n", capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})}, check=False,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, lines
