"""Store URLs, redaction, permissions on first use, and an unreachable PostgreSQL."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from shipit.config.model import JobsConfig, StageConfig
from shipit.errors import CorruptState, StoreUnavailable, UsageError
from shipit.gate.base import ClaimSpec, Run
from shipit.gate.file import FileStore
from shipit.gate.postgres import PostgresStore
from shipit.gate.sqlite import SQLiteStore
from shipit.gate.url import open_store, redact, store_url_for


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_open_store_picks_the_backend(tmp_path: Path, pg_dsn: str) -> None:
    with open_store(f"file:{tmp_path / 'f'}") as s:
        assert isinstance(s, FileStore)
    with open_store(f"sqlite:{tmp_path / 's' / 'jobs.db'}") as s:
        assert isinstance(s, SQLiteStore)
    with open_store(pg_dsn) as s:
        assert isinstance(s, PostgresStore) and s.central
    with open_store("postgres", environ={"SHIPIT_DSN_ENV": "MY_DSN", "MY_DSN": pg_dsn}) as s:
        assert isinstance(s, PostgresStore)
    with open_store("postgres", environ={"SHIPIT_DSN": pg_dsn}) as s:
        assert isinstance(s, PostgresStore)


@pytest.mark.parametrize(
    "url, words",
    [
        ("file:relative/dir", ["absolute"]),
        ("sqlite:", ["absolute"]),
        ("mysql://u:hunter2@h/db", ["unknown job store URL", "***"]),
        ("", ["unknown job store URL"]),
    ],
)
def test_bad_urls_are_one_line_usage_errors(url: str, words: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        open_store(url)
    msg = str(info.value)
    assert "\n" not in msg and "hunter2" not in msg
    for w in words:
        assert w in msg


def test_bare_postgres_needs_the_dsn_variable() -> None:
    with pytest.raises(UsageError) as info:
        open_store("postgres", environ={"SHIPIT_DSN_ENV": "PROD_DSN"})
    assert "PROD_DSN" in str(info.value)


def test_redact_hides_passwords() -> None:
    assert redact("postgresql://app:p%40ss@db:5432/x?sslmode=require") == (
        "postgresql://app:***@db:5432/x?sslmode=require"
    )
    assert redact("host=db password=hunter2 user=app") == "host=db password=*** user=app"
    assert redact("postgres://db/x?password=hunter2&a=1") == "postgres://db/x?password=***&a=1"
    assert redact("sqlite:/srv/app/jobs.db") == "sqlite:/srv/app/jobs.db"


def _stage(store: str, path: str | None = None) -> StageConfig:
    return StageConfig.model_construct(
        name="prod", deploy_to="/srv/app", jobs=JobsConfig(store=store, path=path)  # type: ignore[arg-type]
    )


def test_store_url_for_stage() -> None:
    assert store_url_for(_stage("file")) == "file:/srv/app/shared/shipit"
    assert store_url_for(_stage("sqlite")) == "sqlite:/srv/app/shared/shipit/jobs.db"
    assert store_url_for(_stage("sqlite", "/var/lib/jobs")) == "sqlite:/var/lib/jobs/jobs.db"
    assert store_url_for(_stage("postgres")) == "postgres"


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_first_use_creates_private_dirs_and_files(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "deep" / "store"
    url = f"file:{root}" if kind == "file" else f"sqlite:{root / 'jobs.db'}"
    old = os.umask(0o022)
    try:
        with open_store(url) as store:
            run = store.claim(ClaimSpec(job="j", host="h", command=("true",)))
            assert isinstance(run, Run)
            store.close_gate(holder="a", deploy_id="d", reason="r", ttl=10)
            store.finish(run.id, "finished", 0)
            store.claim_restart(run.id, 1)
    finally:
        os.umask(old)
    for dirpath, _dirnames, filenames in os.walk(root):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o700, dirpath
        for f in filenames:
            mode = stat.S_IMODE(os.stat(os.path.join(dirpath, f)).st_mode)
            assert mode & 0o077 == 0, f"{f} is {oct(mode)}"


def test_unreachable_postgres_is_store_unavailable() -> None:
    dsn = f"postgresql://shipit:hunter2@127.0.0.1:{_free_port()}/jobs"
    with pytest.raises(StoreUnavailable) as info:
        PostgresStore(dsn, connect_timeout=2)
    msg = str(info.value)
    assert msg.startswith("cannot reach the job store:") and "hunter2" not in msg
    assert info.value.exit_code == 5


def test_postgres_survives_a_server_restart(pg_cluster, pg_dsn: str) -> None:  # type: ignore[no-untyped-def]
    store = PostgresStore(pg_dsn)
    try:
        run = store.claim(ClaimSpec(job="j", host="h", command=("true",)))
        assert isinstance(run, Run)
        pg_cluster.restart()
        # The broken connection is replaced transparently and nothing was lost.
        assert store.get_run(run.id).state == "running"
        pg_cluster.stop()
        try:
            with pytest.raises(StoreUnavailable) as info:
                store.heartbeat(run.id)
            assert "s3cret-pg" not in str(info.value)
        finally:
            pg_cluster.start()
        assert store.heartbeat(run.id) is False
    finally:
        store.close()


@pytest.mark.parametrize("url", ["file:/proc/shipit-store", "sqlite:/proc/shipit-store/jobs.db"])
def test_unusable_store_location_is_one_line_error(url: str) -> None:
    with pytest.raises(StoreUnavailable) as info:
        open_store(url)
    assert "/proc/shipit-store" in str(info.value) and "\n" not in str(info.value)


def test_sqlite_file_that_is_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "jobs.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CorruptState) as info:
        open_store(f"sqlite:{tmp_path / 'jobs.db'}")
    assert str(tmp_path / "jobs.db") in str(info.value)
