"""A restart whose spawned supervisor dies before it claims its run (chaos finding 1): reconcile
restarts it exactly once, leaves a pending one alone, and a duplicate supervisor runs nothing.
Real supervisors, real SIGKILLs, every backend."""

from __future__ import annotations

import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipit.gate.base import CHECKPOINTED, FINISHED, ClaimSpec, Run, Store
from shipit.jobs.reconcile import leftovers, reconcile
from shipit.jobs.restart import local_spawner, restart
from tests.jobs.deploy_kit import (
    SHIPIT,
    Project,
    bus,
    continuation,
    items,
    kill_group,
    kill_jobs,
    wait_for,
)
from tests.jobs.runtime_kit import JobStore, job_env, read_line, start, wait_pid_gone

# What PostgreSQL judges a restart hold's heartbeat by, here: longer than a waiting supervisor's
# refresh period (at most 2 s), short enough for a test to see a killed one go stale.
STALE = 4.0
# The spawn grace: a re-spawned supervisor holds its claim well within it, so a second
# reconciler looking again after it never takes that one for lost.
GRACE = 3.0

# The job a restart continues: says which attempt it is and what state it was handed.
REPORT = 'echo "attempt=$SHIPIT_ATTEMPT state=$SHIPIT_RESUME_STATE" >> "$OUT"'


def stopped_run(store: Store, out: Path) -> tuple[Run, int]:
    """A run a deploy stopped with a checkpoint, and the epoch of the gate it left closed."""
    run = store.claim(ClaimSpec(job="report", host="h1", command=("sh", "-c", REPORT),
                                env={"OUT": str(out)}))
    assert isinstance(run, Run)
    lease = store.close_gate(holder="alice@ci", deploy_id="d1", reason="deploy", ttl=120)
    store.request_stop(run.id, lease.epoch)
    store.save_checkpoint(run.id, {"next": 7})
    return store.finish(run.id, CHECKPOINTED, 0), lease.epoch


def spawner(job_store: JobStore, log_dir: Path, url: str | None = None) -> Any:
    return local_spawner(SHIPIT, url or job_store.url, log_dir=str(log_dir), env=job_store.env)


def held(store: Store, run_id: str) -> bool:
    claim = store.restart_claims([run_id]).get(run_id)
    return bool(claim and claim.held)


def successors(store: Store, run_id: str) -> list[Run]:
    return [r for r in store.list_runs() if r.continues == run_id]


def _reconcile_in_threads(job_store: JobStore, log_dir: Path, n: int) -> list[dict[str, Any]]:
    go = threading.Barrier(n)
    outcomes: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    b, rec = bus()

    def one() -> None:
        with job_store.open(heartbeat_stale=STALE) as s:
            go.wait()
            try:
                res = reconcile(s, actor="ops", spawn=spawner(job_store, log_dir),
                                definitions={}, max_restarts=5, emit=b.emit, spawn_grace=GRACE)
                outcomes.extend(res["outcomes"])
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(rec.of("job.restart_respawned")) == sum(1 for o in outcomes if o.get("respawned"))
    return outcomes


def test_a_restart_killed_at_the_gate_is_respawned_once_and_a_pending_one_is_left_alone(
    job_store: JobStore, tmp_path: Path
) -> None:
    out, logs = tmp_path / "out.txt", tmp_path / "logs"
    with job_store.open(heartbeat_stale=STALE) as store:
        old, epoch = stopped_run(store, out)
        b, rec = bus()
        # The deploy's restart, with the gate still closed: the spawned supervisor waits there.
        outcomes = restart(store, epoch=epoch, actor="alice@ci", recorded=[old],
                           spawn=spawner(job_store, logs), definitions={}, max_restarts=5,
                           emit=b.emit, reopen_gate=False)
        assert [o["outcome"] for o in outcomes] == ["restarted"]
        pid = outcomes[0]["pid"]
        wait_for(lambda: held(store, old.id), timeout=30, what="the supervisor to hold its claim")

        # Pending and alive: neither reconcile's selection nor a second restart pass touch it.
        assert leftovers(store, spawn_grace=0) == []
        spawned: list[str] = []
        again = restart(store, epoch=epoch, actor="t", recorded=[store.get_run(old.id)],
                        spawn=lambda r: spawned.append(r.id) or {}, definitions={},
                        max_restarts=5, emit=b.emit, reopen_gate=False, spawn_grace=0)
        assert [o["outcome"] for o in again] == ["already"] and spawned == []

        os.killpg(pid, signal.SIGKILL)  # the host dies under it: nothing is recorded
        assert wait_pid_gone(pid)
        wait_for(lambda: not held(store, old.id), timeout=30, what="the hold to be free or stale")
        assert successors(store, old.id) == [] and not out.exists()
        wait_for(lambda: store.restart_claims([old.id])[old.id].age >= GRACE, what="the grace")
        assert [r.id for r in leftovers(store, spawn_grace=GRACE)] == [old.id]

        store.open_gate(epoch, actor="alice@ci")
        results = _reconcile_in_threads(job_store, logs, 2)
        assert sum(1 for o in results if o["outcome"] == "restarted") == 1
        assert [o["respawned"] for o in results if o["outcome"] == "restarted"] == [True]
        new = wait_for(lambda: successors(store, old.id), timeout=60, what="the re-spawned run")[0]
        wait_for(lambda: store.get_run(new.id).state == FINISHED, timeout=60, what="it to finish")
        assert [r.id for r in successors(store, old.id)] == [new.id]
        assert (new.attempt, new.restarts) == (old.attempt + 1, old.restarts + 1)  # counted once
        assert out.read_text() == 'attempt=2 state={"next": 7}\n'
        audit = [a.action for a in store.audit_log(limit=100)]
        assert audit.count("restart") == 1 and audit.count("restart-respawn") == 1
        assert rec.of("job.restart_respawned") == []  # the first pass re-spawned nothing
        # Nothing is left to restart: the chain is settled.
        assert leftovers(store, spawn_grace=0) == []


def test_a_restart_that_cannot_reach_the_store_is_respawned_by_reconcile(
    job_store: JobStore, tmp_path: Path
) -> None:
    out, logs = tmp_path / "out.txt", tmp_path / "logs"
    if job_store.kind == "postgres":
        bad = JobStore("postgres", "postgres", {"SHIPIT_DSN": "postgresql://u@127.0.0.1:1/none"})
    else:
        bad = JobStore(job_store.kind, f"{job_store.kind}:/proc/no-store-here/jobs.db", {})
    with job_store.open(heartbeat_stale=STALE) as store:
        old, epoch = stopped_run(store, out)
        store.open_gate(epoch, actor="alice@ci")
        outcomes = restart(store, epoch=epoch, actor="alice@ci", recorded=[old],
                           spawn=spawner(bad, logs), definitions={}, max_restarts=5,
                           emit=lambda *a, **k: None, reopen_gate=False)
        assert [o["outcome"] for o in outcomes] == ["restarted"]
        assert wait_pid_gone(outcomes[0]["pid"], timeout=60)
        log = Path(outcomes[0]["log"]).read_text()
        assert "job store" in log and "Traceback" not in log  # exit 5, one line
        assert successors(store, old.id) == []
        b, rec = bus()
        res = reconcile(store, actor="ops", spawn=spawner(job_store, logs), definitions={},
                        max_restarts=5, emit=b.emit, spawn_grace=GRACE)
        assert [(o["outcome"], o.get("respawned")) for o in res["outcomes"]] == [("restarted", True)]
        why = rec.of("job.restart_respawned")
        assert len(why) == 1 and "no live process holding it" in why[0].message
        new = wait_for(lambda: successors(store, old.id), timeout=60, what="the re-spawned run")[0]
        wait_for(lambda: store.get_run(new.id).state == FINISHED, timeout=60, what="it to finish")
        assert out.read_text() == 'attempt=2 state={"next": 7}\n'


def test_a_second_supervisor_for_the_same_restart_runs_nothing_and_exits_0(
    job_store: JobStore, tmp_path: Path
) -> None:
    out = tmp_path / "out.txt"
    env = job_env(job_store.env)
    with job_store.open() as store:
        old, epoch = stopped_run(store, out)
        assert store.claim_restart(old.id, epoch)
        # The first one waits at the closed gate, holding the restart.
        first = start(job_store.url, [], "--continues", old.id, env=env)
        assert "waiting" in read_line(first.stderr)
        wait_for(lambda: held(store, old.id), timeout=30, what="the hold")
        second = start(job_store.url, [], "--continues", old.id, env=env)
        _, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        assert "already starting its continuation" in err and err.count("\n") == 1
        store.open_gate(epoch, actor="alice@ci")
        assert first.wait(timeout=60) == 0
        new = successors(store, old.id)
        assert len(new) == 1
        # Once continued, any later supervisor for it says by which run, and runs nothing.
        third = start(job_store.url, [], "--continues", old.id, env=env)
        _, err = third.communicate(timeout=60)
        assert third.returncode == 0, err
        assert f"run {old.id} is already continued by run {new[0].id}" in err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert out.read_text() == 'attempt=2 state={"next": 7}\n'


# -- through real deploys and `shipit jobs reconcile` ---------------------------------------------


@pytest.fixture(params=["sqlite", "file", "postgres"])
def crash_project(request: pytest.FixtureRequest, tmp_path: Path) -> Project:
    """A project whose shipit, when a deploy's restart spawns `job run --continues`, dies at once
    (SIGKILL) while the flag file exists: a host crash right after the spawn."""
    env = {"SHIPIT_DSN": request.getfixturevalue("pg_dsn")} if request.param == "postgres" else {}
    p = Project(tmp_path, store=request.param, env=env)
    p.shipit("deploy", "s", check=True)
    flag = tmp_path / "crash-restarts"
    wrapper = tmp_path / "shipit-wrapper"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ -e "{flag}" ] && [ "$1 $2 $3" = "job run --continues" ]; then kill -9 $$; fi\n'
        f'exec {sys.executable} -m shipit "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    cfg = yaml.safe_load((p.root / "shipit.yaml").read_text())
    cfg["shipit_command"] = str(wrapper)
    (p.root / "shipit.yaml").write_text(yaml.safe_dump(cfg))
    flag.touch()
    return p


@pytest.mark.e2e
def test_a_deploy_whose_restart_dies_before_claiming_is_restarted_once_by_reconcile(
    crash_project: Project,
) -> None:
    project = crash_project
    proc, out = project.start_stateful(total=100000)
    store = project.store()
    try:
        wait_for(lambda: out.exists() and len(items(out)) >= 3, what="the job to make progress")
        res = project.shipit("deploy", "s")
        assert res.returncode == 0, res.stdout + res.stderr
        old = next(r for r in store.list_runs() if r.job == "crunch" and r.attempt == 1)
        assert old.state == CHECKPOINTED
        assert store.restart_claims([old.id])[old.id].held is False
        assert continuation(store, old.id) is None  # the restart was lost with its process
        (project.root / "crash-restarts").unlink()
        racers = [project.popen("jobs", "reconcile", "s") for _ in range(2)]
        for r in racers:
            _, err = r.communicate(timeout=120)
            assert r.returncode == 0, err
            assert "Traceback" not in err
        new = wait_for(lambda: continuation(store, old.id), timeout=60, what="the restarted run")
        wait_for(lambda: any(a == 2 for _, a, _ in items(out)), what="the restarted run to work")
        assert [r.id for r in store.list_runs() if r.continues == old.id] == [new.id]
        numbers = [n for n, _, _ in items(out)]
        assert numbers == list(range(1, len(numbers) + 1))  # resumed from its checkpoint
        assert {rel for _, a, rel in items(out) if a == 2} == {project.current()}
        actions = [a.action for a in store.audit_log(limit=200)]
        assert actions.count("restart-respawn") == 1
    finally:
        store.close()
        kill_group(proc)
        kill_jobs(project)


def test_a_restart_waiting_at_the_gate_rides_out_a_postgresql_restart(
    pg_cluster: Any, pg_dsn: str, tmp_path: Path
) -> None:
    """Chaos seed 591: a deploy's restart waited at the closed gate, holding its restart claim,
    when PostgreSQL restarted. It exited 5 and could not release the hold, which then looked
    alive for the 30 s heartbeat staleness: the next reconcile and deploy restarted nothing, and
    the job stayed down. Now the waiting restart keeps trying, and runs once the gate opens."""
    job_store = JobStore("postgres", "postgres", {"SHIPIT_DSN": pg_dsn})
    out = tmp_path / "out.txt"
    with job_store.open() as store:
        old, epoch = stopped_run(store, out)
        assert store.claim_restart(old.id, epoch)
        waiter = start(job_store.url, [], "--continues", old.id, env=job_env(job_store.env))
        try:
            assert "waiting" in read_line(waiter.stderr)
            wait_for(lambda: held(store, old.id), timeout=30, what="the hold")
            pg_cluster.restart()
            time.sleep(1.5)  # the waiter meets the outage (its next claim comes within 2 s)
            assert waiter.poll() is None, waiter.stderr.read()
            store.open_gate(epoch, actor="alice@ci")
            _, err = waiter.communicate(timeout=60)
            assert waiter.returncode == 0, err
            assert "cannot reach the job store" in err and "trying again" in err
        finally:
            if waiter.poll() is None:
                waiter.kill()
        [new] = successors(store, old.id)
        assert new.state == FINISHED
    assert out.read_text() == 'attempt=2 state={"next": 7}\n'


def test_a_job_that_ends_while_postgresql_is_down_has_its_end_recorded_once_it_is_back(
    pg_cluster: Any, pg_dsn: str, tmp_path: Path
) -> None:
    """Seen in the chaos run: a job ended during a PostgreSQL restart, its supervisor could not
    record the end and exited, and the run looked alive until its heartbeat went stale (30 s):
    the next deploy's drain waited for it that long. Now the supervisor rides the outage out."""
    job_store = JobStore("postgres", "postgres", {"SHIPIT_DSN": pg_dsn})
    flag = tmp_path / "go"
    proc = start(job_store.url, ["sh", "-c", f'while [ ! -e "{flag}" ]; do sleep 0.05; done'],
                 env=job_env(job_store.env))
    try:
        with job_store.open() as store:
            run = wait_for(lambda: next(iter(store.list_runs()), None), what="the run")
        pg_cluster.stop()
        try:
            flag.write_text("")
            time.sleep(2)  # the job has ended; its supervisor cannot reach the store
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        finally:
            pg_cluster.start()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "trying again to record the end" in err
        with job_store.open() as store:
            assert store.get_run(run.id).state == FINISHED
    finally:
        if proc.poll() is None:
            proc.kill()
