"""The least-privilege PostgreSQL setup from docs/security.md, on a real cluster: an owner role
creates the tables once; the role jobs and deploys use has CONNECT, USAGE on the schema and
SELECT/INSERT/UPDATE on the tables (and their sequences), no DDL, no DELETE. A real
`shipit job run` and the deploy side's drain/restart work with only that."""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shipit.crypto import generate_key
from shipit.gate.base import CHECKPOINTED, ClaimSpec
from shipit.gate.postgres import PostgresStore
from shipit.jobs.drain import drain
from shipit.jobs.restart import local_spawner, restart
from tests.jobs.deploy_kit import SHIPIT, continuation, kill_group, running_run, start_job, wait_for

JOB = (
    "import json, os, signal, subprocess, sys, time\n"
    "stop = []\n"
    "signal.signal(signal.SIGTERM, lambda *a: stop.append(1))\n"
    "open(sys.argv[1], 'w').close()\n"
    "while not stop: time.sleep(0.02)\n"
    f"subprocess.run({SHIPIT!r} + ['job', 'checkpoint', json.dumps({{'next': 5}})], check=True)\n"
)


def setup_roles(admin_dsn: str) -> tuple[str, str]:
    """The SQL of docs/security.md "PostgreSQL roles", run as a superuser."""
    db = conninfo_to_dict(admin_dsn)["dbname"]
    owner_pw, app_pw = secrets.token_hex(8), secrets.token_hex(8)
    suffix = secrets.token_hex(3)
    owner, app = f"shipit_owner_{suffix}", f"shipit_app_{suffix}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for stmt in (
            f"CREATE ROLE {owner} LOGIN PASSWORD '{owner_pw}'",
            f"CREATE ROLE {app} LOGIN PASSWORD '{app_pw}'",
            f'REVOKE ALL ON DATABASE "{db}" FROM PUBLIC',
            f'GRANT CONNECT ON DATABASE "{db}" TO {owner}, {app}',
            f"CREATE SCHEMA shipit AUTHORIZATION {owner}",
            f'ALTER ROLE {owner} IN DATABASE "{db}" SET search_path = shipit',
            f'ALTER ROLE {app} IN DATABASE "{db}" SET search_path = shipit',
        ):
            conn.execute(stmt)
    owner_dsn = make_conninfo(admin_dsn, user=owner, password=owner_pw)
    PostgresStore(owner_dsn).close()  # the owner creates the tables (migrations) once
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute(f"GRANT USAGE ON SCHEMA shipit TO {app}")
        conn.execute(f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA shipit TO {app}")
        conn.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA shipit TO {app}")
    return owner_dsn, make_conninfo(admin_dsn, user=app, password=app_pw)


def test_jobs_and_deploys_work_with_the_least_privilege_role(pg_dsn: str, tmp_path: Path) -> None:
    _, app_dsn = setup_roles(pg_dsn)
    env = {"SHIPIT_DSN": app_dsn}
    script = tmp_path / "job.py"
    script.write_text(JOB)
    ready = tmp_path / "ready"
    proc = start_job("postgres", "etl", [sys.executable, str(script), str(ready)], env=env, grace=10)
    store = PostgresStore(app_dsn, heartbeat_stale=5.0)
    os.environ["SHIPIT_DSN"] = app_dsn  # for the supervisor the restart spawns
    try:
        run = running_run(store, "etl")
        wait_for(ready.exists, what="the job to handle SIGTERM")  # a stop before that kills it
        result = drain(store, holder="ci", deploy_id="d1", reason="deploy", ttl=30, timeout=0.2,
                       policy="terminate", grace=10, emit=lambda *a, **k: None)
        assert [r.id for r in result.recorded] == [run.id]
        assert store.get_run(run.id).state == CHECKPOINTED
        outcomes = restart(store, epoch=result.lease.epoch, actor="ci", recorded=result.recorded,
                           spawn=local_spawner(SHIPIT, "postgres", log_dir=str(tmp_path / "logs")),
                           definitions=None, max_restarts=5, emit=lambda *a, **k: None)
        assert [o["outcome"] for o in outcomes] == ["restarted"]
        new = wait_for(lambda: continuation(store, run.id), what="the restarted run")
        assert new.attempt == 2 and not store.gate().is_closed(0)
        for r in store.list_runs():  # the restarted job is not needed for what follows
            if r.pid and store.is_alive(r):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(r.pid, 9)
        # Rotating keys needs no more than UPDATE either.
        os.environ["SHIPIT_STATE_KEYS"] = generate_key()
        try:
            assert store.reencrypt_state() == 2
            assert store.get_run(run.id).opened().checkpoint == {"next": 5}
        finally:
            del os.environ["SHIPIT_STATE_KEYS"]
    finally:
        os.environ.pop("SHIPIT_DSN", None)
        kill_group(proc)
        store.close()


@pytest.mark.parametrize("stmt", [
    "CREATE TABLE shipit.evil (x int)",
    "DROP TABLE shipit_runs",
    "ALTER TABLE shipit_runs ADD COLUMN x int",
    "DELETE FROM shipit_audit",
    "TRUNCATE shipit_runs",
])
def test_the_app_role_cannot_change_the_schema_or_erase_history(pg_dsn: str, stmt: str) -> None:
    _, app_dsn = setup_roles(pg_dsn)
    with psycopg.connect(app_dsn, autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(stmt)


def test_waiting_entries_need_no_delete(pg_dsn: str) -> None:
    """A job waiting at the gate is shown through a waiting entry; the app role, which cannot
    DELETE, removes one by marking it gone, and the next waiter takes its row over."""
    _, app_dsn = setup_roles(pg_dsn)
    store = PostgresStore(app_dsn)
    try:
        lease = store.close_gate(holder="ci", deploy_id="d1", reason="deploy", ttl=30)
        spec = ClaimSpec(job="late", host="h1", command=("true",))
        for _ in range(3):
            entry = store.enter_waiting(spec, lease)
            assert [w.id for w in store.list_waiting()] == [entry.id]
            store.leave_waiting(entry.id)
            assert store.list_waiting() == []
        last = store.enter_waiting(spec, lease)
        store.open_gate(lease.epoch, actor="ci")
        run = store.claim(ClaimSpec(job="late", host="h1", command=("true",), run_id=last.id))
        assert getattr(run, "id", None) == last.id and store.list_waiting() == []
        with psycopg.connect(app_dsn) as conn:
            (rows,) = conn.execute("SELECT count(*) FROM shipit_waiting").fetchone()  # type: ignore[misc]
        assert rows == 1
    finally:
        store.close()
