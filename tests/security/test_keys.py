"""Keys end to end: the real CLI (`shipit keys`, `shipit job run`, `shipit deploy`) with
encrypted job state on the local host, and rotation of per-host and central stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipit.crypto import ENV_KEY_FILE, ENV_KEYS, generate_key
from shipit.gate.base import CHECKPOINTED, ClaimSpec, Run
from shipit.gate.url import open_store
from tests.jobs.deploy_kit import (
    SHIPIT,
    Project,
    continuation,
    items,
    kill_group,
    kill_jobs,
    wait_for,
)

SECRET = "tok-7f3a-not-for-eyes"


@pytest.fixture(autouse=True)
def no_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(ENV_KEYS, raising=False)
    monkeypatch.delenv(ENV_KEY_FILE, raising=False)
    yield


def checkpointed(url: str, key: str, command: list[str]) -> Run:
    os.environ[ENV_KEYS] = key
    try:
        store = open_store(url)
        run = store.claim(ClaimSpec(job="etl", host="h1", command=tuple(command), env={"API_TOKEN": SECRET}))
        assert isinstance(run, Run)
        store.save_checkpoint(run.id, {"next": 7, "token": SECRET})
        store.finish(run.id, CHECKPOINTED)
        store.close()
        return run
    finally:
        del os.environ[ENV_KEYS]


def test_generate_prints_a_fresh_usable_key() -> None:
    from cryptography.fernet import Fernet

    outs = [subprocess.run([*SHIPIT, "keys", "generate"], capture_output=True, text=True, check=True)
            for _ in range(2)]
    keys = [o.stdout.strip() for o in outs]
    assert keys[0] != keys[1]
    for k in keys:
        Fernet(k.encode())  # raises if it is not a key


def test_a_job_continued_with_the_wrong_key_exits_5_and_keeps_its_state(tmp_path: Path) -> None:
    url = f"sqlite:{tmp_path / 'store' / 'jobs.db'}"
    got = tmp_path / "resume.json"
    code = f"import os; open({str(got)!r}, 'w').write(os.environ['SHIPIT_RESUME_STATE'])"
    right, wrong = generate_key(), generate_key()
    run = checkpointed(url, right, [sys.executable, "-c", code])
    argv = [*SHIPIT, "job", "run", "--continues", run.id, "--store", url, "--host", "h1"]
    env = {**os.environ, ENV_KEYS: wrong}
    bad = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 5
    assert len(bad.stderr.strip().splitlines()) == 1 and "not among" in bad.stderr
    assert "Traceback" not in bad.stderr and wrong not in bad.stderr
    assert not got.exists()
    os.environ[ENV_KEYS] = right
    try:
        store = open_store(url)
        assert continuation(store, run.id) is None  # nothing was claimed under the wrong key
        store.close()
    finally:
        del os.environ[ENV_KEYS]
    ok = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, ENV_KEYS: right}, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(got.read_text()) == {"next": 7, "token": SECRET}


@pytest.mark.e2e
def test_deploy_with_a_key_resumes_the_job_and_keeps_state_and_env_encrypted(tmp_path: Path) -> None:
    key = generate_key()
    project = Project(tmp_path, env={ENV_KEYS: key, "SHIPIT_ENV_ALLOW": "API_TOKEN", "API_TOKEN": SECRET})
    project.shipit("deploy", "s", check=True)
    proc, out = project.start_stateful(total=100000)
    os.environ[ENV_KEYS] = key
    store = project.store()
    try:
        wait_for(lambda: out.exists() and len(items(out)) >= 5, what="the job to make progress")
        res = project.shipit("deploy", "s")
        assert res.returncode == 0, res.stderr
        old = next(r for r in store.list_runs() if r.job == "crunch" and r.attempt == 1)
        assert old.state == CHECKPOINTED and old.opened().env == {"API_TOKEN": SECRET}
        new = wait_for(lambda: continuation(store, old.id), what="the restarted run")
        wait_for(lambda: sum(1 for _, a, _ in items(out) if a == 2) >= 3, what="the restart to work")
        assert new.opened().env == {"API_TOKEN": SECRET}
        rows = items(out)
        assert [n for n, _, _ in rows] == list(range(1, len(rows) + 1))  # resumed from the checkpoint
        db = b"".join(p.read_bytes() for p in (project.deploy_to / "shared" / "shipit").glob("jobs.db*"))
        assert SECRET.encode() not in db and b'"next"' not in db
    finally:
        store.close()
        del os.environ[ENV_KEYS]
        kill_group(proc)
        os.environ[ENV_KEYS] = key
        try:
            kill_jobs(project)
        finally:
            del os.environ[ENV_KEYS]


def _write_keys(path: Path, *keys: str) -> None:
    path.write_text("\n".join(keys) + "\n")
    os.chmod(path, 0o600)


def test_rotate_a_per_host_store_with_the_stage_key_file(tmp_path: Path) -> None:
    old, new = generate_key(), generate_key()
    key_file = tmp_path / "state.keys"
    project = Project(tmp_path, key_file=str(key_file))
    run = checkpointed(project.url, old, ["true"])
    _write_keys(key_file, new)  # the old key already dropped: the rotation must refuse
    res = project.shipit("keys", "rotate", "s")
    assert res.returncode == 5, res.stderr
    assert "not among" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    _write_keys(key_file, new, old)
    res = project.shipit("keys", "rotate", "s")
    assert res.returncode == 0, res.stderr
    assert "[local] re-encrypted 1 run(s)" in res.stdout
    _write_keys(key_file, new)
    os.environ[ENV_KEY_FILE] = str(key_file)
    try:
        store = open_store(project.url)
        assert store.get_run(run.id).opened().checkpoint == {"next": 7, "token": SECRET}
        store.close()
    finally:
        del os.environ[ENV_KEY_FILE]


def test_rotate_the_central_store(tmp_path: Path, pg_dsn: str) -> None:
    old, new = generate_key(), generate_key()
    project = Project(tmp_path, store="postgres", env={"SHIPIT_DSN": pg_dsn, ENV_KEYS: f"{new},{old}"})
    run = checkpointed(pg_dsn, old, ["true"])
    res = project.shipit("keys", "rotate", "s", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"*": {"runs": 1}}
    assert pg_dsn not in res.stdout + res.stderr
    os.environ[ENV_KEYS] = new
    try:
        store = open_store(pg_dsn)
        assert store.get_run(run.id).opened().env == {"API_TOKEN": SECRET}
        store.close()
    finally:
        del os.environ[ENV_KEYS]


def _stopped_by_a_deploy(url: str, key: str) -> Run:
    """A run a deploy stopped, with its checkpoint encrypted under `key`: it awaits its restart."""
    os.environ[ENV_KEYS] = key
    try:
        store = open_store(url)
        run = store.claim(ClaimSpec(job="etl", host="local", command=("true",),
                                    env={"API_TOKEN": SECRET}))
        assert isinstance(run, Run)
        lease = store.close_gate(holder="ci", deploy_id="old", reason="r", ttl=60)
        store.request_stop(run.id, lease.epoch, 5.0)
        store.save_checkpoint(run.id, {"next": 7, "token": SECRET})
        store.finish(run.id, CHECKPOINTED)
        store.open_gate(lease.epoch, actor="ci")
        store.close()
        return run
    finally:
        del os.environ[ENV_KEYS]


@pytest.mark.e2e
def test_a_lost_key_blocks_no_listing_or_deploy_and_forget_is_the_way_out(tmp_path: Path) -> None:
    key = generate_key()
    project = Project(tmp_path)  # nothing here has the key any more
    project.shipit("deploy", "s", check=True)
    os.environ[ENV_KEYS] = key
    try:  # history: a finished run with an encrypted checkpoint
        with open_store(project.url) as store:
            done = store.claim(ClaimSpec(job="etl", host="local", command=("true",)))
            assert isinstance(done, Run)
            store.save_checkpoint(done.id, {"next": 1, "token": SECRET})
            store.finish(done.id, "finished", 0)
    finally:
        del os.environ[ENV_KEYS]
    owed = _stopped_by_a_deploy(project.url, key)
    store = open_store(project.url)
    try:
        token = store.get_run(owed.id).checkpoint
        listed = project.shipit("jobs", "list", "s")
        assert listed.returncode == 0, listed.stderr
        assert done.id in listed.stdout and owed.id in listed.stdout
        status = project.shipit("status", "s")
        assert status.returncode == 0 and owed.id in status.stdout
        deploy = project.shipit("deploy", "s")
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        out = deploy.stdout + deploy.stderr
        assert "job.restart_failed" in out
        assert "cannot be decrypted" in out and "no key is configured" in out and owed.id in out
        assert f"shipit jobs forget STAGE {owed.id}" in out
        # Reported, never lost: still owed, state untouched, nothing started.
        kept = store.get_run(owed.id)
        assert kept.state == CHECKPOINTED and kept.checkpoint == token
        assert continuation(store, owed.id) is None
        shown = project.shipit("jobs", "show", "s", owed.id, "--state")
        assert shown.returncode == 5 and owed.id in shown.stderr
        assert len(shown.stderr.strip().splitlines()) == 1 and SECRET not in shown.stderr
        assert project.shipit("jobs", "show", "s", owed.id).returncode == 0  # without its state
        # The way out when the key is lost: give the run up, with a reason.
        forgot = project.shipit("jobs", "forget", "s", owed.id, "-m", "state key lost")
        assert forgot.returncode == 0, forgot.stderr
        assert "given up" in forgot.stdout
        gone = store.get_run(owed.id)
        assert gone.state == "given_up" and "state key lost" in (gone.message or "")
        assert gone.checkpoint == token  # left in place, unread
        assert any(a.action == "forget" for a in store.audit_log())
        assert owed.id not in project.shipit("status", "s").stdout
        again = project.shipit("deploy", "s")
        assert again.returncode == 0 and "cannot be decrypted" not in again.stdout + again.stderr
        assert continuation(store, owed.id) is None
        # A finished run cannot be forgotten: only a stopped one awaits a restart.
        refused = project.shipit("jobs", "forget", "s", done.id, "-m", "x")
        assert refused.returncode == 2 and "only a stopped run" in refused.stderr
    finally:
        store.close()
