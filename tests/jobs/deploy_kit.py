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

import yaml

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
    grace: float = 2.0, log: Path | None = None, env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    argv = [*SHIPIT, "job", "run", "--store", url, "--host", host, "--name", name,
            "--grace", str(grace), "--heartbeat", "0.2", "--max-wait", "30"]
    if cwd:
        argv += ["--cwd", cwd]
    proc = subprocess.Popen([*argv, "--", *command], stdout=out, stderr=out,
                            start_new_session=True, env={**os.environ, **(env or {})})
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


class Project:
    def __init__(self, root: Path, *, store: str = "sqlite", env: dict[str, str] | None = None,
                 hosts: list[str] | None = None, ssh: dict[str, Any] | None = None,
                 **jobs: object) -> None:
        self.env = dict(env or {})
        self.root = root
        self.src = root / "src"
        self.src.mkdir()
        (self.src / "stateful.py").write_text(STATEFUL_JOB)
        self.deploy_to = root / "app"
        self.data = root / "data"
        self.data.mkdir()
        cfg = {
            "application": "t",
            "source": {"dir": str(self.src)},
            "deploy_to": str(self.deploy_to),
            "shipit_command": f"{sys.executable} -m shipit",
            "jobs": {"store": store, "lease_ttl": 3, "drain_timeout": 0.5, "grace": 5, **jobs},
            "stages": {"s": {"hosts": hosts or ["local"]}},
        }
        if ssh:
            cfg["ssh"] = ssh
        self.host = (hosts or ["local"])[0]
        self.lease_ttl = float(cfg["jobs"]["lease_ttl"])  # type: ignore[index]
        (root / "shipit.yaml").write_text(yaml.safe_dump(cfg))
        self.url = {"sqlite": f"sqlite:{self.deploy_to}/shared/shipit/jobs.db",
                    "file": f"file:{self.deploy_to}/shared/shipit"}.get(store, "postgres")

    def shipit(self, *args: str, env: dict[str, str] | None = None,
               check: bool = False) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*SHIPIT, *args], cwd=self.root, capture_output=True, text=True,
                              timeout=120, env={**os.environ, **self.env, **(env or {})}, check=False)
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen([*SHIPIT, *args], cwd=self.root, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **self.env, **(env or {})})

    def store(self) -> Store:
        from shipit.gate.url import open_store

        if self.url == "postgres":
            return open_store(self.env["SHIPIT_DSN"])
        return open_store(self.url)

    def current(self) -> str:
        return os.path.basename(os.readlink(self.deploy_to / "current"))

    def start_stateful(self, total: int = 150, delay: float = 0.02) -> tuple[subprocess.Popen[bytes], Path]:
        out = self.data / "items.txt"
        cmd = [sys.executable, "stateful.py", str(total), str(out), str(delay)]
        return start_job(self.url, "crunch", cmd, host=self.host, env=self.env,
                         cwd=str(self.deploy_to / "current"), grace=5), out


def items(out: Path) -> list[tuple[int, int, str]]:
    rows = [line.split() for line in out.read_text().splitlines()]
    return [(int(a), int(b), c) for a, b, c in rows]


def continuation(store: Store, run_id: str) -> Run | None:
    return next((r for r in store.list_runs() if r.continues == run_id), None)


def kill_jobs(project: Project) -> None:
    s = project.store()
    try:
        for r in s.list_runs():
            if r.pid and s.is_alive(r):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(r.pid, signal.SIGKILL)
    finally:
        s.close()


def sigterm_deploy(project: Project, ready: Callable[[], object]) -> str:
    """Start `shipit deploy s`, SIGTERM it (a cancelled CI job) once `ready()` holds; asserts it
    exits 130 and returns what it said."""
    deploy = project.popen("deploy", "s")
    try:
        wait_for(ready, what="the deploy to reach the moment")
        deploy.send_signal(signal.SIGTERM)
        out, err = deploy.communicate(timeout=60)
        assert deploy.returncode == 130, out + err
        return out + err
    finally:
        if deploy.poll() is None:
            deploy.kill()


def slow_stopping_job(project: Project) -> tuple[subprocess.Popen[bytes], Path]:
    """The stateful job, but it takes 2 s to save its checkpoint after SIGTERM (call after a
    deploy: it runs from `current`)."""
    (project.deploy_to / "current" / "slow_stop.py").write_text(
        STATEFUL_JOB.replace("if stop:\n", "if stop:\n        time.sleep(2)\n"))
    out = project.data / "items.txt"
    cmd = [sys.executable, "slow_stop.py", "100000", str(out), "0.02"]
    return start_job(project.url, "crunch", cmd, host=project.host, env=project.env,
                     cwd=str(project.deploy_to / "current"), grace=10), out


def sigterm_after_the_stop_request(project: Project, *, reopened_within: float | None) -> None:
    """A job slow to save its checkpoint is asked to stop by a deploy that is then cancelled
    (SIGTERM, exit 130). The gate must reopen (within `reopened_within` seconds; None: by the
    time the deploy has exited) and the run resume from its checkpoint on the live release,
    exactly once."""
    from shipit.gate.base import CHECKPOINTED

    project.shipit("deploy", "s", check=True)
    live = project.current()
    proc, out = slow_stopping_job(project)
    store = project.store()
    try:
        wait_for(lambda: out.exists() and len(items(out)) >= 3, what="the job to make progress")
        said = sigterm_deploy(project, lambda: any(r.stop_requested_at for r in store.list_runs()))
        if reopened_within is None:
            assert not store.gate().is_closed(time.time()), said
        else:
            wait_for(lambda: not store.gate().is_closed(time.time()), timeout=reopened_within,
                     what=f"the gate to reopen (well before its {project.lease_ttl:g} s TTL)")
        [old] = [r for r in store.list_runs() if r.attempt == 1]
        assert old.state == CHECKPOINTED, said
        new = wait_for(lambda: continuation(store, old.id), what="the restarted run")
        wait_for(lambda: any(a == 2 for _, a, _ in items(out)), what="the restart to work")
        rows = items(out)
        assert [n for n, _, _ in rows] == list(range(1, len(rows) + 1))  # resumed, nothing lost
        assert {rel for _, a, rel in rows if a == 2} == {live}
        assert [r.id for r in store.list_runs() if r.continues == old.id] == [new.id]
    finally:
        kill_group(proc)
        kill_jobs(project)
        store.close()


def sigterm_while_the_drain_waits(project: Project, *, reopened_within: float | None) -> None:
    """A deploy cancelled (SIGTERM, exit 130) while its drain waits for a running job: the gate
    reopens (within `reopened_within` seconds; None: by the time the deploy has exited), the job
    was never asked to stop and goes on, and a job starting now is admitted at once."""
    project.shipit("deploy", "s", check=True)
    proc, out = project.start_stateful(total=100000)
    store = project.store()
    try:
        wait_for(lambda: out.exists() and len(items(out)) >= 3, what="the job to make progress")
        said = sigterm_deploy(project, lambda: store.gate().is_closed(time.time()))
        if reopened_within is None:
            assert not store.gate().is_closed(time.time()), said
        else:
            wait_for(lambda: not store.gate().is_closed(time.time()), timeout=reopened_within,
                     what=f"the gate to reopen (well before its {project.lease_ttl:g} s TTL)")
        [run] = store.list_runs()
        assert run.state == "running" and store.is_alive(run) and run.stop_requested_at is None
        n = len(items(out))
        wait_for(lambda: len(items(out)) > n, what="the job to go on")
        late = start_job(project.url, "late", ["true"], host=project.host, env=project.env)
        assert late.wait(timeout=15) == 0
        assert [r.state for r in store.list_runs() if r.job == "late"] == ["finished"]
    finally:
        kill_group(proc)
        kill_jobs(project)
        store.close()
