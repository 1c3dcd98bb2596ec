"""Hand-edited or damaged job stores, met through the real CLI: a clear one-line message, exit 5,
and a safe action. The gate never reads open by accident (a job must not start), a run is never
silently lost (it is still listed, or the listing names the damaged record), and a deploy stops
before it switches anything.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shipit.gate.base import SCHEMA_VERSION

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SHIPIT = [sys.executable, "-m", "shipit"]


class Project:
    """A `local`-host project deployed once, its per-host store created."""

    def __init__(self, root: Path, store: str) -> None:
        self.root = root
        (root / "src").mkdir()
        (root / "src" / "app.py").write_text("x = 1\n")
        self.deploy_to = root / "app"
        (root / "shipit.yaml").write_text(yaml.safe_dump({
            "application": "app", "source": {"dir": "src"}, "deploy_to": str(self.deploy_to),
            "shipit_command": f"{sys.executable} -m shipit",
            "jobs": {"store": store, "lease_ttl": 5, "drain_timeout": 0.3},
            "stages": {"l": {"hosts": ["local"]}},
        }))
        self.store_dir = self.deploy_to / "shared" / "shipit"
        self.url = f"file:{self.store_dir}" if store == "file" else f"sqlite:{self.store_dir}/jobs.db"
        self.marker = root / "job ran"
        assert self.shipit("deploy", "l").returncode == 0

    def shipit(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("SHIPIT_")}
        return subprocess.run([*SHIPIT, *args], cwd=self.root, capture_output=True, text=True,
                              env={**base, "CI": "true", **(env or {})}, timeout=120, check=False)

    def job(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.shipit("job", "run", "--store", self.url, "--host", "local", "--max-wait", "0",
                           *extra, "--", "touch", str(self.marker))

    def current(self) -> str:
        return os.readlink(self.deploy_to / "current")


def one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    last = proc.stderr.strip().split("\n")[-1]
    assert last.startswith("shipit: error:"), proc.stderr
    for needle in needles:
        assert needle in last, (needle, last)
    return last


# Many more shapes of damage run in-process in tests/fuzz/test_store_fuzz.py.
@pytest.mark.parametrize("damage", ["truncated", "wrong-types", "newer-schema"])
def test_a_damaged_gate_json_keeps_jobs_out_and_the_deploy_stops_before_the_switch(
    tmp_path: Path, damage: str
) -> None:
    p = Project(tmp_path, "file")
    gate = p.store_dir / "gate.json"
    good = gate.read_bytes()
    gate.write_bytes({
        "truncated": good[: len(good) // 2],
        "garbage": b"\x00\xffnot json at all",
        "empty": b"",
        "wrong-types": b'{"schema": 1, "lease": {"state": "open", "epoch": "1"}}',
        "newer-schema": good.replace(f'"schema": {SCHEMA_VERSION}'.encode(), b'"schema": 99'),
    }[damage])
    one_line_error(p.job(), 5, "gate.json")
    assert not p.marker.exists()
    one_line_error(p.shipit("status", "l"), 5, "gate.json")
    before = p.current()
    deploy = p.shipit("deploy", "l")
    assert deploy.returncode == 5, deploy.stderr
    assert p.current() == before
    # The deploy's failure handling did not "repair" the gate into an open one behind our back.
    one_line_error(p.job(), 5)
    assert not p.marker.exists()
    # The safe action the message points at: a forced, audited reopen, after which jobs run.
    if damage != "newer-schema":
        opened = subprocess.run([*SHIPIT, "agent", "open"], input=json.dumps(
            {"store": p.url, "force": True, "actor": "repair"}), capture_output=True, text=True,
            timeout=60, check=False)
        assert opened.returncode == 0, opened.stdout + opened.stderr
        assert p.job().returncode == 0 and p.marker.exists()


def test_jobs_resume_force_repairs_an_unreadable_gate(tmp_path: Path) -> None:
    p = Project(tmp_path, "file")
    (p.store_dir / "gate.json").write_bytes(b"garbage")
    refused = p.shipit("jobs", "resume", "l")
    assert refused.returncode == 5 and "Traceback" not in refused.stderr
    assert p.job().returncode == 5 and not p.marker.exists()
    resumed = p.shipit("jobs", "resume", "l", "--force")
    assert resumed.returncode == 0, resumed.stderr
    assert p.job().returncode == 0 and p.marker.exists()


@pytest.mark.parametrize("store", ["file", "sqlite"])
def test_a_damaged_run_record_is_reported_not_lost_and_the_deploy_switches_nothing(
    tmp_path: Path, store: str
) -> None:
    p = Project(tmp_path, store)
    assert p.job("--name", "victim").returncode == 0
    p.marker.unlink()
    if store == "file":
        (run_file,) = (p.store_dir / "runs").glob("*.json")
        run_file.write_text('{"schema": 1, "run": {"id": "x", "attempt": "two"')
        needle = run_file.name
    else:
        with sqlite3.connect(p.store_dir / "jobs.db") as db:
            db.execute("UPDATE runs SET command = 'not json', attempt = 'two'")
        needle = "jobs.db"
    one_line_error(p.shipit("jobs", "list", "l"), 5, needle)
    before = p.current()
    deploy = p.shipit("deploy", "l")
    assert deploy.returncode == 5 and needle in deploy.stdout + deploy.stderr, deploy.stderr
    assert p.current() == before
    # The failed deploy reopened the gate: jobs are not left locked out by someone else's damage.
    assert p.job().returncode == 0 and p.marker.exists()


def test_a_newer_sqlite_schema_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    p = Project(tmp_path, "sqlite")
    db_path = p.store_dir / "jobs.db"
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    one_line_error(p.job(), 5, "newer shipit")
    assert not p.marker.exists()
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
        assert db.execute("SELECT value FROM meta").fetchone()[0] == "99"
    one_line_error(p.shipit("status", "l"), 5, "newer shipit")


def test_a_file_store_with_a_newer_schema_file_is_refused(tmp_path: Path) -> None:
    p = Project(tmp_path, "file")
    (p.store_dir / "schema").write_text("99\n")
    one_line_error(p.job(), 5, "newer shipit")
    assert not p.marker.exists()
    assert list((p.store_dir / "runs").glob("*.json")) == []


def test_a_postgres_store_with_a_newer_schema_is_refused_without_leaking_the_dsn(
    pg_dsn: str, tmp_path: Path
) -> None:
    import psycopg

    from shipit.gate.url import open_store

    env = {"SHIPIT_DSN": pg_dsn}
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHIPIT_")}
    marker = tmp_path / "job ran"

    def job() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*SHIPIT, "job", "run", "--store", "postgres", "--host", "h", "--max-wait", "0", "--",
             "touch", str(marker)],
            capture_output=True, text=True, env={**base, **env}, timeout=60, check=False,
        )

    open_store(pg_dsn).close()  # what the deploy does first: it creates the schema
    assert job().returncode == 0 and marker.exists()
    marker.unlink()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE shipit_schema SET version = 99")
        runs_before = conn.execute("SELECT count(*) FROM shipit_runs").fetchone()[0]
    proc = job()
    last = one_line_error(proc, 5, "newer shipit")
    password = pg_dsn.split(":")[2].split("@")[0]
    assert password and password not in proc.stderr + proc.stdout, last
    assert not marker.exists()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM shipit_runs").fetchone()[0] == runs_before
