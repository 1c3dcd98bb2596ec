"""Jobs against the central PostgreSQL store: the deploy drains in-process, restarts through the
agent on the host the job ran on; the DSN only ever travels in the environment and on stdin."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from shipit.gate.base import CHECKPOINTED, FINISHED
from shipit.gate.url import open_store
from shipit.jobs.drain import drain
from tests.jobs.deploy_kit import (
    Project,
    bus,
    continuation,
    items,
    kill_group,
    kill_jobs,
    running_run,
    sigterm_after_the_stop_request,
    sigterm_while_the_drain_waits,
    start_job,
    wait_for,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def project(tmp_path: Path, pg_dsn: str) -> Project:
    p = Project(tmp_path, store="postgres", env={"SHIPIT_DSN": pg_dsn})
    p.shipit("deploy", "s", check=True)
    return p


def test_drain_waits_for_a_short_job_and_records_nothing(pg_dsn, tmp_path):
    store = open_store(pg_dsn)
    proc = start_job("postgres", "short", ["sleep", "0.5"], env={"SHIPIT_DSN": pg_dsn})
    try:
        run = running_run(store, "short")
        b, rec = bus()
        result = drain(store, holder="ci", deploy_id="d1", reason="", ttl=5, timeout=30,
                       policy="terminate", grace=3, emit=b.emit)
        proc.wait(timeout=10)
        assert result.recorded == []
        assert store.get_run(run.id).state == FINISHED
        assert rec.of("job.stop_requested") == []
    finally:
        kill_group(proc)
        store.close()


def test_deploy_checkpoints_and_restarts_on_the_new_release(project):
    proc, out = project.start_stateful(total=100000)
    first = project.current()
    store = project.store()
    try:
        wait_for(lambda: out.exists() and len(items(out)) >= 5, what="the job to make progress")
        res = project.shipit("deploy", "s")
        assert res.returncode == 0, res.stdout + res.stderr
        assert project.env["SHIPIT_DSN"] not in res.stdout + res.stderr
        second = project.current()
        old = next(r for r in store.list_runs() if r.job == "crunch" and r.attempt == 1)
        assert old.state == CHECKPOINTED
        wait_for(lambda: sum(1 for _, a, _ in items(out) if a == 2) >= 3, what="the restarted run")
        assert len([r for r in store.list_runs() if r.continues == old.id]) == 1
        rows = items(out)
        assert [n for n, _, _ in rows] == list(range(1, len(rows) + 1))
        assert {rel for _, a, rel in rows if a == 2} == {second} and second != first
    finally:
        kill_group(proc)
        kill_jobs(project)
        store.close()


def test_killed_deploy_then_reconcile_restarts_once(project):
    proc, out = project.start_stateful(total=100000)
    store = project.store()
    deploy = None
    try:
        wait_for(lambda: out.exists() and len(items(out)) >= 3, what="the job to make progress")
        deploy = project.popen("deploy", "s")
        stopped = wait_for(
            lambda: next((r for r in store.list_runs() if r.stop_requested_at), None),
            what="the deploy to ask the job to stop",
        )
        os.kill(deploy.pid, signal.SIGKILL)
        deploy.wait(timeout=10)
        wait_for(lambda: store.get_run(stopped.id).state == CHECKPOINTED, what="the checkpoint")
        wait_for(lambda: not store.gate().is_closed(time.time()), timeout=60, what="the lease to expire")
        racers = [project.popen("jobs", "reconcile", "s") for _ in range(3)]
        for r in racers:
            assert r.wait(timeout=60) == 0, r.stderr.read()  # type: ignore[union-attr]
        new = wait_for(lambda: continuation(store, stopped.id), what="the restarted run")
        assert [r.id for r in store.list_runs() if r.continues == stopped.id] == [new.id]
    finally:
        if deploy and deploy.poll() is None:
            deploy.kill()
        kill_group(proc)
        kill_jobs(project)
        store.close()


def test_sigterm_while_the_deploy_waits_for_a_job_reopens_the_gate_before_exiting(tmp_path, pg_dsn):
    """A cancelled CI job mid-drain (drain in the deploy process): recovery knows the lease and
    reopens it; the gate does not stay closed for its TTL (60 s here)."""
    project = Project(tmp_path, store="postgres", env={"SHIPIT_DSN": pg_dsn},
                      lease_ttl=60, drain_timeout=60)
    sigterm_while_the_drain_waits(project, reopened_within=None)


def test_sigterm_after_the_stop_request_restarts_the_stopped_job_once(tmp_path, pg_dsn):
    """Cancelled while the job saves its checkpoint: the deploy waits for that (within the
    grace), reopens, restarts the run on the live release once, then exits 130."""
    project = Project(tmp_path, store="postgres", env={"SHIPIT_DSN": pg_dsn},
                      lease_ttl=60, drain_timeout=0.5, grace=10)
    sigterm_after_the_stop_request(project, reopened_within=None)


def test_lock_and_status_against_the_central_store(project):
    project.shipit("lock", "acquire", "s", "-m", "freeze", check=True)
    status = project.shipit("status", "s")
    assert status.returncode == 0 and "freeze" in status.stdout
    assert project.current() in status.stdout  # current release read from the host
    assert project.env["SHIPIT_DSN"] not in status.stdout + status.stderr
    deploy = project.shipit("deploy", "s")
    assert deploy.returncode == 3 and "freeze" in deploy.stdout + deploy.stderr
    project.shipit("lock", "release", "s", check=True)
    store = project.store()
    try:
        assert not store.gate().is_closed(time.time())
    finally:
        store.close()


def test_store_down_aborts_the_deploy_before_it_stops_anything(project, pg_cluster):
    """PostgreSQL goes away while a job runs: the deploy fails with exit 5 before it closes the
    gate or stops the job, the job keeps working, and once the store is back the job is still
    recorded as running and a deploy goes through."""
    proc, out = project.start_stateful(total=100000, delay=0.05)
    first = project.current()
    store = project.store()
    try:
        wait_for(lambda: out.exists() and len(items(out)) >= 3, what="the job to make progress")
        run = running_run(store, "crunch")
        store.close()
        pg_cluster.stop("fast")
        try:
            res = project.shipit("deploy", "s")
            done_during = len(items(out))
        finally:
            pg_cluster.start()
        assert res.returncode == 5, res.stdout + res.stderr
        assert "Traceback" not in res.stderr and project.env["SHIPIT_DSN"] not in res.stdout + res.stderr
        assert project.current() == first
        assert proc.poll() is None, "the job was stopped although the deploy could not record it"
        wait_for(lambda: len(items(out)) > done_during, what="the job to keep working")
        store = project.store()
        after = store.get_run(run.id)
        assert after.state == "running" and after.stop_requested_at is None
        assert not store.gate().is_closed(time.time())
    finally:
        kill_group(proc)
        kill_jobs(project)
        store.close()
