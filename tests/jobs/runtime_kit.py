"""Helpers for the supervisor / API tests: start `shipit job run` for real, play the deploy."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from shipit.gate.base import Lease, Run, Store
from shipit.gate.url import open_store

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "jobs"
SHIPIT = [sys.executable, "-m", "shipit"]
SHIPIT_CMD = f"{sys.executable} -m shipit"


@dataclass
class JobStore:
    kind: str
    url: str
    env: dict[str, str]  # extra environment a job needs to reach the store (postgres DSN)

    def open(self, **opts: Any) -> Store:
        return open_store(self.url, environ={**os.environ, **self.env}, **opts)


def job_env(store_env: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPIT_")}
    env.update(store_env)
    env["SHIPIT_CMD"] = SHIPIT_CMD
    env.update(extra)
    return env


def start(
    url: str,
    command: list[str],
    *opts: str,
    env: dict[str, str],
    stdout: int | IO[Any] = subprocess.PIPE,
    stderr: int | IO[Any] = subprocess.PIPE,
) -> subprocess.Popen[str]:
    argv = [*SHIPIT, "job", "run", "--store", url, "--host", "h1", "--heartbeat", "0.2", *opts]
    if command:
        argv += ["--", *command]
    return subprocess.Popen(argv, stdout=stdout, stderr=stderr, text=True, env=env)


def read_line(stream: IO[str]) -> str:
    """The next line the process writes (blocks; the pytest timeout bounds it)."""
    line = stream.readline()
    assert line, "the process ended without writing the expected line"
    return line


def only_run(store: Store) -> Run:
    runs = store.list_runs()
    assert len(runs) == 1, runs
    return runs[0]


def close_gate(store: Store, ttl: float = 60.0) -> Lease:
    return store.close_gate(holder="alice@ci", deploy_id="d-42", reason="deploying v2", ttl=ttl)


def stop_run(store: Store, run: Run, lease: Lease) -> None:
    """What a deploy does: request the stop, then SIGUSR1 the supervisor to see it at once."""
    store.request_stop(run.id, lease.epoch)
    assert run.pid
    os.kill(run.pid, signal.SIGUSR1)


def wait_pid_gone(pid: int, timeout: float = 10.0) -> bool:
    """Event-driven: a pidfd becomes readable when the process exits (zombies count as gone)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def wait_until(pred: Callable[[], bool], timeout: float = 15.0) -> bool:
    """For conditions no event announces (heartbeat age): poll briefly, bounded."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def lines_of(path: Path) -> list[int]:
    return [int(x.split()[0]) for x in path.read_text().split()] if path.exists() else []


def dump_env_command(path: Path) -> list[str]:
    code = f"import json, os; json.dump(dict(os.environ), open({str(path)!r}, 'w'))"
    return [sys.executable, "-c", code]


def load(path: Path) -> Any:
    return json.loads(path.read_text())
