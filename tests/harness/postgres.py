"""A throwaway PostgreSQL 15 cluster for the tests: initdb + pg_ctl in a temp dir.

PostgreSQL refuses to run as root, so when the tests run as root the cluster runs as the OS
user `shipit-pg` (created with useradd if missing) and its directory is chowned to it. It
listens on 127.0.0.1 on a free port, with its unix socket inside the temp dir, fsync off.

Fixtures
  pg_cluster   session-scoped PgCluster: .dsn(dbname), .port, .stop(), .start(), .restart()
               (for chaos tests: connections drop, data stays).
  pg_dsn       a DSN to a fresh, empty database for this test (CREATE DATABASE).

Missing binaries: the fixtures skip, except under CI=true where they fail.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

PG_BIN = os.environ.get("SHIPIT_PG_BIN", "/usr/lib/postgresql/15/bin")
PG_USER = "shipit-pg"
PASSWORD = "s3cret-pg"  # a real password, so tests can check it is never shown


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required under CI=true: {reason}")
    pytest.skip(f"PostgreSQL not available: {reason}")


class PgCluster:
    def __init__(self, root: str, port: int, run_as: str | None) -> None:
        self.root = root
        self.data = os.path.join(root, "data")
        self.port = port
        self.run_as = run_as
        self.log = os.path.join(root, "postgres.log")
        self._names = itertools.count(1)

    def _cmd(self, *argv: str) -> list[str]:
        if self.run_as:
            return ["runuser", "-u", self.run_as, "--", *argv]
        return list(argv)

    def _run(self, *argv: str) -> None:
        res = subprocess.run(self._cmd(*argv), capture_output=True, text=True, cwd=self.root)
        if res.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {res.stdout}\n{res.stderr}")

    def init(self) -> None:
        pwfile = os.path.join(self.root, "pw")
        with open(pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        if self.run_as:
            shutil.chown(pwfile, self.run_as)
        self._run(
            f"{PG_BIN}/initdb", "-D", self.data, "-U", "postgres", "--pwfile", pwfile,
            "-A", "scram-sha-256", "-E", "UTF8", "--locale", "C.UTF-8", "--no-sync",
        )
        os.unlink(pwfile)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\nfsync = off\n"
                "full_page_writes = off\nmax_connections = 300\n"
                "shared_buffers = 32MB\n"
            )

    def start(self) -> None:
        self._run(f"{PG_BIN}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def restart(self) -> None:
        # Immediate: a crash as far as clients are concerned. Committed data survives (fsync is
        # off but the WAL reaches the OS; synchronous_commit stays on).
        self.stop("immediate")
        self.start()

    def dsn(self, dbname: str = "postgres", *, password: bool = True) -> str:
        pw = f":{PASSWORD}" if password else ""
        return f"postgresql://postgres{pw}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)


def _ensure_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=True, capture_output=True,
        )
    return PG_USER


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    if not os.path.exists(f"{PG_BIN}/initdb"):
        _unavailable(f"{PG_BIN}/initdb not found (set SHIPIT_PG_BIN)")
    run_as = _ensure_user()
    root = tempfile.mkdtemp(prefix="shipit-pg-")
    os.chmod(root, 0o755)
    if run_as:
        shutil.chown(root, run_as, run_as)
    cluster = PgCluster(root, _free_port(), run_as)
    try:
        cluster.init()
        cluster.start()
    except (RuntimeError, OSError) as e:
        shutil.rmtree(root, ignore_errors=True)
        _unavailable(str(e))
    try:
        yield cluster
    finally:
        try:
            cluster.stop("immediate")
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_cluster: PgCluster) -> str:
    return pg_cluster.create_database()
