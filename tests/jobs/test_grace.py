"""jobs.grace reaches the supervisor: a deploy's stop request carries it, a job's own `--grace`
is recorded and waited for, restarts get it as their default. Real supervisors, real stores,
real signals; outcomes and the supervisor's own words are asserted, never how long it took."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from shipit.gate.base import FINISHED, INTERRUPTED, ClaimSpec, Run
from shipit.jobs.drain import drain
from shipit.jobs.restart import local_spawner, restart
from tests.jobs.deploy_kit import bus, continuation, wait_for
from tests.jobs.runtime_kit import SHIPIT, SHIPIT_CMD, JobStore, job_env, read_line, start

# Ignores TERM (and so does its `sleep`: an ignored signal stays ignored across exec).
STUBBORN = ["sh", "-c", 'trap "" TERM; echo ready; while :; do sleep 0.05; done']


def _drain(store, **kw):
    b, rec = bus()
    opts = dict(holder="alice@ci", deploy_id="d1", reason="deploy", ttl=30.0, timeout=0.1,
                policy="terminate", grace=1.0, emit=b.emit)
    opts.update(kw)
    return drain(store, **opts), rec


def test_a_term_ignoring_job_is_killed_after_the_deploys_grace_and_the_drain_succeeds(
    job_store: JobStore,
) -> None:
    # Started by hand without --grace and without $SHIPIT_GRACE: its default would be 10 s,
    # longer than the drain waits for a deploy with grace 1 (1 s + the 5 s margin).
    proc = start(job_store.url, STUBBORN, env=job_env(job_store.env))
    assert read_line(proc.stdout) == "ready\n"
    with job_store.open() as store:
        (run,) = store.list_runs()
        assert run.grace is None
        result, rec = _drain(store, grace=1.0)
        assert proc.wait(timeout=60) == 128 + signal.SIGKILL
        stopped = store.get_run(run.id)
    err = proc.stderr.read()
    assert "stop requested, sent SIGTERM (SIGKILL in 1s)" in err
    assert "still running 1s after SIGTERM, sent SIGKILL" in err
    assert [r.id for r in result.recorded] == [run.id]
    assert stopped.state == INTERRUPTED and stopped.stop_grace == 1.0
    assert stopped.message and stopped.message.startswith("killed after 1s grace")
    assert [e.data["run"]["run_id"] for e in rec.of("job.stopped")] == [run.id]


def test_a_jobs_own_grace_is_recorded_used_and_waited_for(job_store: JobStore) -> None:
    # --grace 3 is the job's choice: it wins over the deploy's 1 s, and the drain, whose own
    # budget would be 1 s + 0.5 s here, waits for it instead of failing the deploy.
    proc = start(job_store.url, STUBBORN, "--grace", "3", env=job_env(job_store.env))
    assert read_line(proc.stdout) == "ready\n"
    with job_store.open() as store:
        (run,) = store.list_runs()
        assert run.grace == 3.0
        result, _ = _drain(store, grace=1.0, stop_margin=0.5)
        assert proc.wait(timeout=60) == 128 + signal.SIGKILL
        assert [r.id for r in result.recorded] == [run.id]
        assert store.get_run(run.id).state == INTERRUPTED
    err = proc.stderr.read()
    assert "(SIGKILL in 3s)" in err and "still running 3s after SIGTERM" in err


def test_a_continuation_inherits_the_runs_own_grace(job_store: JobStore) -> None:
    with job_store.open() as store:
        first = store.claim(ClaimSpec(job="own", host="h1", command=("true",), grace=4.0))
        assert isinstance(first, Run)
        store.finish(first.id, INTERRUPTED)
        again = subprocess.run([*SHIPIT, "job", "run", "--continues", first.id, "--store",
                                job_store.url, "--host", "h1"], env=job_env(job_store.env),
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        new = continuation(store, first.id)
    assert new is not None and new.grace == 4.0 and new.state == FINISHED


def test_a_restart_gets_jobs_grace_as_its_default(job_store: JobStore, tmp_path: Path) -> None:
    """The restarted supervisor gets jobs.grace as $SHIPIT_GRACE: a TERM sent to it by anyone
    (not a deploy's stop request, which carries its own grace) is followed by KILL after it."""
    with job_store.open() as store:
        first = store.claim(ClaimSpec(job="stubborn", host="h1", command=tuple(STUBBORN),
                                      cwd=str(tmp_path)))
        assert isinstance(first, Run)
        store.finish(first.id, INTERRUPTED)
        spawn = local_spawner(SHIPIT_CMD, job_store.url, log_dir=str(tmp_path / "logs"),
                              env=job_store.env, grace=1.0)
        b, _ = bus()
        (outcome,) = restart(store, epoch=store.gate().epoch, actor="t", recorded=[first],
                             spawn=spawn, definitions=None, max_restarts=5, emit=b.emit,
                             reopen_gate=False)
        assert outcome["outcome"] == "restarted"
        log = Path(outcome["log"])
        wait_for(lambda: log.exists() and "ready" in log.read_text(), what="the restarted job")
        new = continuation(store, first.id)
        assert new is not None and new.grace is None  # not the job's own: a default
        os.kill(new.pid, signal.SIGTERM)  # someone else's TERM, passed on to the job
        wait_for(lambda: store.get_run(new.id).finished_at is not None, timeout=60,
                 what="the restarted run to end")
    assert "still running 1s after SIGTERM, sent SIGKILL" in log.read_text()
