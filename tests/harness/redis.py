"""A real redis-server for the tests that use a Redis-backed job system (RQ, Celery).

Fixture
  redis_url   session-scoped "redis://127.0.0.1:PORT/0" of a redis-server started on a free
              loopback port in a temp dir, no persistence, stopped at the end of the session.
              Tests sharing it should use their own key prefix / queue name, or
              `redis.Redis.from_url(redis_url).flushdb()` first.

When redis-server is missing the fixture skips, except under CI=true where it fails.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.harness.sshd import free_port, require, wait_for_port

REDIS_SERVER = "redis-server"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require(REDIS_SERVER, "redis-server")
    binary = shutil.which(REDIS_SERVER) or REDIS_SERVER
    root = tmp_path_factory.mktemp("redis")
    port = free_port()
    log = root / "redis.log"
    argv = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(root),
        "--save", "",
        "--appendonly", "no",
        "--logfile", str(log),
        "--daemonize", "no",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, log, f"redis-server on port {port}")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
