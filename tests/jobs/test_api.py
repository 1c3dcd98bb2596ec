"""The Python job API (shipit.jobs.api): standalone runs in-process and in real processes, and the
attached mode under `shipit job run`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shipit.errors import GateWaitTimeout
from shipit.gate.base import CHECKPOINTED, FAILED, FINISHED, INTERRUPTED, RUNNING
from shipit.jobs.api import current_run, job
from tests.jobs.runtime_kit import (
    EXAMPLES,
    JobStore,
    close_gate,
    job_env,
    lines_of,
    only_run,
    read_line,
    start,
)


@pytest.fixture
def store_env(job_store: JobStore, monkeypatch: pytest.MonkeyPatch) -> JobStore:
    """The store reachable from this process the way a job would see it (SHIPIT_STORE)."""
    for name in [n for n in os.environ if n.startswith("SHIPIT_")]:
        monkeypatch.delenv(name)
    for name, value in job_store.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SHIPIT_STORE", job_store.url)
    return job_store


def test_standalone_run_is_claimed_heartbeated_and_finished(store_env: JobStore) -> None:
    assert current_run() is None
    with job("reindex", key="reindex", heartbeat=0.05) as run:
        assert current_run() is run
        assert not run.attached and run.resume_state is None
        with store_env.open() as store:
            live = store.get_run(run.id)
            assert live.state == RUNNING and live.pid == os.getpid() and live.key == "reindex"
            assert store.is_alive(live)
        run.progress(3, 10)
    assert current_run() is None
    with store_env.open() as store:
        done = store.get_run(run.id)
    assert done.state == FINISHED and done.exit_code == 0
    assert (done.progress_done, done.progress_total) == (3, 10)


def test_stop_request_reaches_should_stop_and_ends_checkpointed(store_env: JobStore) -> None:
    with store_env.open() as deploy, job("crunch", heartbeat=0.05) as run:
        lease = close_gate(deploy)
        deploy.request_stop(run.id, lease.epoch)
        os.kill(os.getpid(), signal.SIGUSR1)  # what the deploy does for a same-host store
        assert run.sleep(30), "the stop request never reached should_stop()"
        run.checkpoint({"next": 7})
    with store_env.open() as store:
        ended = store.get_run(run.id)
    assert ended.state == CHECKPOINTED and ended.checkpoint == {"next": 7}


def test_stop_without_checkpoint_ends_interrupted(store_env: JobStore) -> None:
    with store_env.open() as deploy, job("stateless", heartbeat=0.05) as run:
        lease = close_gate(deploy)
        deploy.request_stop(run.id, lease.epoch)
        assert run.sleep(30)
    with store_env.open() as store:
        assert store.get_run(run.id).state == INTERRUPTED


def test_exception_in_the_block_fails_the_run(store_env: JobStore) -> None:
    with pytest.raises(RuntimeError), job("boom") as run:
        raise RuntimeError("disk full")
    with store_env.open() as store:
        failed = store.get_run(run.id)
    assert failed.state == FAILED and "disk full" in (failed.message or "")


def test_checkpoint_refuses_what_json_cannot_hold(store_env: JobStore) -> None:
    with job("picky") as run:
        with pytest.raises(TypeError, match="JSON-serialisable"):
            run.checkpoint({"when": object()})
        run.checkpoint({"ok": True})
    with store_env.open() as store:
        assert store.get_run(run.id).checkpoint == {"ok": True}


def test_coalesced_checkpoints_are_flushed_when_the_block_ends(store_env: JobStore) -> None:
    with store_env.open() as store, job("batch") as run:
        for i in range(1, 26):
            run.checkpoint({"next": i}, every=10)
        assert store.get_run(run.id).checkpoint == {"next": 20}  # writes at 10 and 20 only
    with store_env.open() as store:
        assert store.get_run(run.id).checkpoint == {"next": 25}


def test_standalone_gives_up_at_a_closed_gate(store_env: JobStore) -> None:
    with store_env.open() as store:
        close_gate(store)
        with pytest.raises(GateWaitTimeout), job("late", max_wait=0.2):
            pytest.fail("the block ran while the gate was closed")
        assert store.list_runs() == []


_STANDALONE = textwrap.dedent(
    """
    import sys
    from shipit.jobs.api import job
    with job("standalone", heartbeat=0.1) as run:
        print("claimed", run.id, flush=True)
        while not run.sleep(30):
            pass
        run.checkpoint({"stopped": True})
    """
)


def test_standalone_process_waits_at_the_gate_then_stops_on_sigterm(
    store_env: JobStore, tmp_path: Path
) -> None:
    script = tmp_path / "standalone.py"
    script.write_text(_STANDALONE)
    with store_env.open() as store:
        lease = close_gate(store)
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env=job_env(store_env.env, SHIPIT_STORE=store_env.url))
        assert "alice@ci" in read_line(proc.stderr)
        store.open_gate(lease.epoch, actor="alice@ci")
        run_id = read_line(proc.stdout).split()[1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        run = store.get_run(run_id)
    assert run.state == CHECKPOINTED and run.checkpoint == {"stopped": True}
    # A deploy restarting it runs the same command line again.
    assert run.command == (sys.executable, str(script))


def test_attached_job_sees_term_as_should_stop_and_resumes_from_state(
    job_store: JobStore, tmp_path: Path
) -> None:
    out, total = tmp_path / "items.txt", 30
    env = job_env(job_store.env, CRUNCH_DELAY="0.01")
    cmd = [sys.executable, str(EXAMPLES / "crunch.py"), str(total), str(out)]
    proc = start(job_store.url, cmd, env=env)
    read_line(proc.stdout)
    with job_store.open() as store:
        run = only_run(store)
        proc.send_signal(signal.SIGTERM)  # forwarded to the job's group by the supervisor
        assert proc.wait(timeout=30) == 0
        ended = store.get_run(run.id)
        # No stop request from a deploy: the job's exit code decides.
        assert ended.state == FINISHED
        assert ended.checkpoint == {"next": len(lines_of(out)) + 1}
        again = start(job_store.url, [], "--continues", run.id, env=env)
        assert f"attempt 2 starting at {ended.checkpoint['next']}" in read_line(again.stdout)
        assert again.wait(timeout=60) == 0
    assert lines_of(out) == list(range(1, total + 1))


def test_job_in_a_worker_thread_records_no_pid_and_still_sees_stops(store_env: JobStore) -> None:
    import threading

    seen: dict[str, object] = {}

    def worker() -> None:
        with job("threaded", heartbeat=0.05) as run:
            seen["id"] = run.id
            with store_env.open() as deploy:
                seen["pid"] = deploy.get_run(run.id).pid
                deploy.request_stop(run.id, close_gate(deploy).epoch)
            seen["stopped"] = run.sleep(30)
            run.checkpoint({"at": "worker"})

    t = threading.Thread(target=worker)
    t.start()
    t.join(timeout=60)
    # No pid: a deploy's SIGUSR1 would have killed this process (no handler off the main thread).
    assert seen["pid"] is None and seen["stopped"] is True
    with store_env.open() as store:
        assert store.get_run(str(seen["id"])).state == CHECKPOINTED
