"""A `shipit job run` waiting at the closed gate is visible (a waiting entry with its job, host,
pid and since when), is never a run the drain has to wait for, turns into its run once the gate
opens, and is gone when it gives up or dies. Real supervisors against every backend."""

from __future__ import annotations

import signal
import time

from shipit.gate.base import FINISHED, WAITING
from shipit.jobs.drain import drain
from tests.jobs.deploy_kit import bus
from tests.jobs.runtime_kit import (
    JobStore,
    close_gate,
    job_env,
    only_run,
    read_line,
    start,
    wait_pid_gone,
    wait_until,
)


def test_a_waiting_job_is_shown_is_no_run_for_the_drain_and_becomes_its_run(
    job_store: JobStore,
) -> None:
    with job_store.open() as store:
        lease = close_gate(store)
        proc = start(job_store.url, ["true"], "--name", "late", env=job_env(job_store.env))
        assert "job late waiting" in read_line(proc.stderr)
        assert wait_until(lambda: bool(store.list_waiting()))
        [entry] = store.list_waiting()
        assert (entry.job, entry.host, entry.pid, entry.state) == ("late", "h1", proc.pid, WAITING)
        assert entry.epoch == lease.epoch and entry.created_at <= time.time()
        assert store.list_runs() == []
        # The deploy that holds the gate drains: nothing is running, nothing to wait for.
        b, rec = bus()
        result = drain(store, holder="alice@ci", deploy_id="d-42", reason="deploying v2",
                       ttl=60, timeout=30, policy="terminate", grace=1, emit=b.emit)
        assert result.recorded == [] and rec.of("job.running") == []
        store.open_gate(lease.epoch, actor="alice@ci")
        assert proc.wait(timeout=30) == 0
        run = only_run(store)
        assert store.list_waiting() == []
    assert run.id == entry.id and run.state == FINISHED  # the entry turned into the run


def test_a_job_that_gives_up_waiting_leaves_no_entry_and_no_run(job_store: JobStore) -> None:
    with job_store.open() as store:
        close_gate(store)
        proc = start(job_store.url, ["true"], "--max-wait", "0.5", env=job_env(job_store.env))
        proc.communicate(timeout=30)
        assert proc.returncode == 75
        assert store.list_waiting() == [] and store.list_runs() == []


def test_a_waiting_job_killed_leaves_an_entry_that_reads_dead(job_store: JobStore) -> None:
    with job_store.open() as store:
        close_gate(store)
        proc = start(job_store.url, ["true"], env=job_env(job_store.env))
        read_line(proc.stderr)
        assert wait_until(lambda: bool(store.list_waiting()))
        proc.send_signal(signal.SIGKILL)
        assert wait_pid_gone(proc.pid)
        proc.wait(timeout=30)
    # File/SQLite: the entry's lock went with the process. PostgreSQL: its heartbeat goes stale.
    with job_store.open(heartbeat_stale=0.5) as strict:
        assert wait_until(lambda: strict.list_waiting() == [])
        assert strict.list_runs() == []
