"""drain() against a real SQLite store with real `shipit job run` supervisors."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from shipit.gate.base import CHECKPOINTED, FINISHED, INTERRUPTED, STOP_REQUESTED
from shipit.gate.sqlite import SQLiteStore
from shipit.jobs.drain import DEAD_MESSAGE, DrainAborted, drain
from tests.jobs.deploy_kit import (
    bus,
    kill_group,
    running_run,
    start_job,
    stateful_command,
    wait_for,
)


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(str(tmp_path / "store" / "jobs.db"))
    yield s
    s.close()


def url(store: SQLiteStore) -> str:
    return f"sqlite:{store.path}"


def _drain(store, emit, **kw):
    opts = dict(holder="alice@ci", deploy_id="d1", reason="deploy", ttl=3.0, timeout=30.0,
                policy="terminate", grace=3.0, emit=emit)
    opts.update(kw)
    return drain(store, **opts)


def test_drain_waits_for_a_short_job_without_stopping_it(store, tmp_path):
    marker = tmp_path / "done"
    proc = start_job(url(store), "short", ["sh", "-c", f"sleep 0.6; touch {marker}"])
    run = running_run(store, "short")
    b, rec = bus()
    result = _drain(store, b.emit)
    proc.wait(timeout=10)
    assert result.recorded == []
    assert marker.exists()  # it ran to its end, drain did not cut it short
    assert store.get_run(run.id).state == FINISHED
    assert rec.of("job.stop_requested") == []
    assert [e.data["run"]["run_id"] for e in rec.of("job.running")] == [run.id]
    assert [e.data["run"]["run_id"] for e in rec.of("job.finished")] == [run.id]
    lease = store.gate()
    assert lease.is_closed(time.time()) and lease.holder == "alice@ci"


def test_terminate_checkpoints_a_stateful_job_and_records_it(store, tmp_path):
    cmd, out = stateful_command(tmp_path)
    proc = start_job(url(store), "crunch", cmd)
    run = running_run(store, "crunch")
    wait_for(lambda: out.exists() and out.read_text().count("\n") >= 3, what="some items")
    b, rec = bus()
    result = _drain(store, b.emit, timeout=0.2, grace=5.0)
    proc.wait(timeout=10)
    assert [r.id for r in result.recorded] == [run.id]
    stopped = store.get_run(run.id)
    assert stopped.state == CHECKPOINTED
    done = out.read_text().count("\n")
    assert stopped.checkpoint == {"next": done + 1}
    assert [e.data["run"]["run_id"] for e in rec.of("job.stopped")] == [run.id]


def test_abort_policy_reopens_and_fails_naming_the_job(store, tmp_path):
    proc = start_job(url(store), "forever", ["sleep", "60"])
    try:
        run = running_run(store, "forever")
        b, rec = bus()
        with pytest.raises(DrainAborted) as err:
            _drain(store, b.emit, timeout=0.2, policy="abort")
        assert "forever" in str(err.value)
        assert not store.gate().is_closed(time.time())
        again = store.get_run(run.id)
        assert again.state not in (STOP_REQUESTED, CHECKPOINTED, INTERRUPTED)
        assert store.is_alive(again)
    finally:
        kill_group(proc)


def test_wait_policy_gives_up_at_max_wait_and_reopens(store, tmp_path):
    proc = start_job(url(store), "forever", ["sleep", "60"])
    try:
        running_run(store, "forever")
        b, _ = bus()
        with pytest.raises(DrainAborted, match="max_wait"):
            _drain(store, b.emit, timeout=0.1, policy="wait", max_wait=0.4)
        assert not store.gate().is_closed(time.time())
    finally:
        kill_group(proc)


def test_a_supervisor_found_dead_is_marked_interrupted_and_recorded(store, tmp_path):
    proc = start_job(url(store), "victim", ["sleep", "60"])
    run = running_run(store, "victim")
    os.kill(run.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    b, rec = bus()
    result = _drain(store, b.emit)
    assert [r.id for r in result.recorded] == [run.id]
    dead = store.get_run(run.id)
    assert dead.state == INTERRUPTED and dead.message == DEAD_MESSAGE
    assert [e.data["run"]["run_id"] for e in rec.of("job.interrupted")] == [run.id]


def test_a_job_dying_during_the_drain_is_recorded(store, tmp_path):
    proc = start_job(url(store), "victim", ["sleep", "60"])
    run = running_run(store, "victim")
    b, rec = bus()

    def kill_when_listed(event):
        if event.kind == "job.running":
            os.kill(run.pid, signal.SIGKILL)

    b.subscribe(kill_when_listed)
    result = _drain(store, b.emit)
    proc.wait(timeout=10)
    assert [r.id for r in result.recorded] == [run.id]
    assert store.get_run(run.id).state == INTERRUPTED


def test_the_lease_is_renewed_while_draining(store, tmp_path):
    proc = start_job(url(store), "short", ["sleep", "1.5"])
    running_run(store, "short")
    b, rec = bus()
    result = _drain(store, b.emit, renew_every=0.3)
    proc.wait(timeout=10)
    assert rec.of("gate.renewed")
    assert result.lease.expires_at == store.gate().expires_at


def test_a_held_gate_is_refused_and_nothing_is_stopped(store, tmp_path):
    from shipit.errors import GateHeld

    store.close_gate(holder="bob@laptop", deploy_id="other", reason="hotfix", ttl=30)
    b, _ = bus()
    with pytest.raises(GateHeld) as err:
        _drain(store, b.emit)
    assert "bob@laptop" in str(err.value) and "hotfix" in str(err.value)
    assert err.value.exit_code == 3
