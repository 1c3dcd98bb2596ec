"""Real queue workers for the RQ and Celery adapter tests.

Each test gets its own Redis database (flushed first) on the session's real redis-server
(tests/harness/redis.py), a directory of marker files its jobs write, and worker subprocesses
(`rq worker`, `celery worker`) that import a jobs module written into the test's directory.
Jobs append their pid to `<name>.starts` when they start and write `<name>.done` when they end,
so a test counts starts from the files, not from logs.

Import the fixtures into a test module by name (`from tests.adapters.queue_fixtures import
queue_redis, ...`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shipit.config.model import HostSpec, JobsConfig, SourceConfig, SSHConfig, StageConfig
from shipit.events import EventBus, Recorder
from shipit.phases.context import DeployContext

JOBS_MODULE = "shipit_queue_jobs"

JOBS_SOURCE = '''
"""Jobs the adapter tests enqueue (RQ functions and Celery tasks)."""
import os
import time
from pathlib import Path


def _run(marker_dir, name, seconds):
    d = Path(marker_dir)
    with open(d / f"{name}.starts", "a") as f:
        f.write(f"{os.getpid()}\\n")
    end = time.time() + seconds
    while time.time() < end and not (d / f"{name}.release").exists():
        time.sleep(0.02)
    (d / f"{name}.done").write_text("done")
    return name


def long_job(marker_dir, name, seconds=60):
    return _run(marker_dir, name, seconds)


def quick_job(marker_dir, name):
    return _run(marker_dir, name, 0)


if os.environ.get("SHIPIT_TEST_CELERY_BROKER"):
    from celery import Celery

    app = Celery("shipit_queue_jobs", broker=os.environ["SHIPIT_TEST_CELERY_BROKER"])
    app.conf.update(
        task_acks_late=os.environ.get("SHIPIT_TEST_ACKS_LATE") == "1",
        task_reject_on_worker_lost=os.environ.get("SHIPIT_TEST_ACKS_LATE") == "1",
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        broker_transport_options={"visibility_timeout": 3600},
    )

    @app.task(name="long")
    def celery_long(marker_dir, name, seconds=60):
        return _run(marker_dir, name, seconds)

    @app.task(name="quick")
    def celery_quick(marker_dir, name):
        return _run(marker_dir, name, 0)
'''


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll until predicate() is truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class Markers:
    def __init__(self, root: Path) -> None:
        self.root = root

    def starts(self, name: str) -> int:
        path = self.root / f"{name}.starts"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def done(self, name: str) -> bool:
        return (self.root / f"{name}.done").exists()

    def release(self, name: str) -> None:
        (self.root / f"{name}.release").write_text("go")


@pytest.fixture
def queue_redis(redis_url: str) -> Iterator[str]:
    """A Redis URL on its own database of the session's server, flushed before the test.
    RQ's suspension key is global to a database, so tests must not share one."""
    import redis

    url = redis_url.rsplit("/", 1)[0] + "/7"
    conn = redis.Redis.from_url(url)
    conn.flushdb()
    yield url
    conn.flushdb()
    conn.close()


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    d = tmp_path / "jobs"
    d.mkdir()
    (d / f"{JOBS_MODULE}.py").write_text(JOBS_SOURCE)
    (d / "markers").mkdir()
    return d


@pytest.fixture
def markers(job_dir: Path) -> Markers:
    return Markers(job_dir / "markers")


class Workers:
    """Worker subprocesses, each in its own session so teardown kills work horses too."""

    def __init__(self, job_dir: Path, redis_url: str) -> None:
        self.job_dir = job_dir
        self.redis_url = redis_url
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, argv: list[str], log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.job_dir / log_name, "ab")  # noqa: SIM115 - lives as long as the worker
        full_env = {**os.environ, "PYTHONPATH": str(self.job_dir), **(env or {})}
        proc = subprocess.Popen(argv, cwd=self.job_dir, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def rq(self, name: str, queues: list[str]) -> subprocess.Popen[bytes]:
        """`rq worker` with its default worker TTL: an idle worker blocks in a pop for 405 s,
        which is what makes a suspension slow to take hold without shipit's wake-up."""
        import redis
        from rq import Worker

        rq_bin = str(Path(sys.executable).parent / "rq")
        proc = self._spawn([rq_bin, "worker", "-u", self.redis_url, "--path", str(self.job_dir),
                            "-n", name, "--logging_level", "WARNING", *queues], f"rq-{name}.log")
        conn = redis.Redis.from_url(self.redis_url)

        def idle() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"rq worker {name} exited: {self.log(f'rq-{name}.log')}")
            return any(w.name == name and w.get_state() == "idle" for w in Worker.all(connection=conn))

        wait_for(idle, 20, f"rq worker {name} to listen")
        return proc

    def celery(self, name: str, queues: list[str], *, acks_late: bool = False,
               pool: str = "solo") -> subprocess.Popen[bytes]:
        env = {"SHIPIT_TEST_CELERY_BROKER": self.redis_url,
               "SHIPIT_TEST_ACKS_LATE": "1" if acks_late else "0"}
        argv = [sys.executable, "-m", "celery", "-A", JOBS_MODULE, "worker", "-n", f"{name}@test",
                "-P", pool, "-c", "1", "-Q", ",".join(queues), "--loglevel", "WARNING",
                "--without-gossip", "--without-mingle", "--without-heartbeat"]
        proc = self._spawn(argv, f"celery-{name}.log", env)
        from celery import Celery

        app = Celery("probe", broker=self.redis_url, set_as_current=False)
        node = f"{name}@test"

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"celery worker {name} exited: {self.log(f'celery-{name}.log')}")
            return bool(app.control.inspect(destination=[node], timeout=0.5, limit=1).ping())

        wait_for(ready, 30, f"celery worker {node} to answer")
        return proc

    def log(self, log_name: str) -> str:
        path = self.job_dir / log_name
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
def workers(job_dir: Path, queue_redis: str) -> Iterator[Workers]:
    w = Workers(job_dir, queue_redis)
    try:
        yield w
    finally:
        w.stop_all()


def make_ctx(tmp_path: Path, *, deploy_id: str = "deploy-1", dry_run: bool = False,
             lease_ttl: float = 30.0, jobs: JobsConfig | None = None) -> tuple[DeployContext, Recorder]:
    """A DeployContext with no hosts: the queue adapters talk to the broker, not to hosts."""
    stage = StageConfig(
        name="test", application="app", source=SourceConfig(dir=str(tmp_path)),
        deploy_to=str(tmp_path / "app"), keep_releases=2, linked_files=(), linked_dirs=(),
        parallelism=1, hosts=(HostSpec(name="local", hostname="localhost", local=True),),
        vars={}, hooks={}, ssh=SSHConfig(), jobs=jobs or JobsConfig(lease_ttl=lease_ttl),
        shipit_command="shipit",
    )
    bus = EventBus()
    recorder = Recorder()
    bus.subscribe(recorder)
    ctx = DeployContext(stage=stage, hosts=[], bus=bus, deploy_id=deploy_id, actor="test@here",
                        dry_run=dry_run)
    return ctx, recorder
