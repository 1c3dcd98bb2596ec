"""Restart claims that survive their supervisor: unique continuations, the pending-restart hold,
and re-taking a lost claim, on every backend (file, SQLite, PostgreSQL)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from typing import Any

import pytest

from shipit.errors import CorruptState, FencingError
from shipit.gate import _common as c
from shipit.gate.base import (
    CHECKPOINTED,
    FINISHED,
    GIVEN_UP,
    INTERRUPTED,
    SCHEMA_VERSION,
    ClaimSpec,
    Lease,
    Run,
    Store,
)
from shipit.gate.url import open_store
from tests.gate.conftest import StoreFactory

# Stands for the supervisor a restart spawns: holds the restart claim (refreshing it, as the
# waiting supervisor does) and says so, then waits to be killed.
HOLDER = r"""
import sys, time
from shipit.gate.url import open_store
store = open_store(sys.argv[1])
print("held" if store.hold_restart(sys.argv[2]) else "busy", flush=True)
while True:
    store.refresh_restart_hold(sys.argv[2])
    time.sleep(0.05)
"""


def claimed(result: Run | Lease) -> Run:
    assert isinstance(result, Run), f"claim refused: {result}"
    return result


def stopped(store: Store, job: str = "crunch", state: str = CHECKPOINTED) -> Run:
    """A run a deploy stopped: what a restart continues."""
    run = claimed(store.claim(ClaimSpec(job=job, host="h1", command=("python", "crunch.py"))))
    return store.finish(run.id, state)


def continuing(run: Run) -> ClaimSpec:
    return ClaimSpec(job=run.job, host="h1", command=run.command, continues=run.id,
                     attempt=run.attempt + 1, restarts=run.restarts + 1)


def successors(store: Store, run_id: str) -> list[Run]:
    return [r for r in store.list_runs() if r.continues == run_id]


def start_holder(url: str, run_id: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, url, run_id],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def wait_until(pred: Any, timeout: float = 30.0) -> bool:
    """For what no event announces (a heartbeat going stale): poll briefly, bounded."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def aged(store: Store, run_id: str, seconds: float) -> None:
    assert wait_until(lambda: store.restart_claims([run_id])[run_id].age >= seconds)


# -- unique continuation ---------------------------------------------------------------------------


def test_two_claims_continuing_the_same_run_make_one_run(store_factory: StoreFactory) -> None:
    first, second = store_factory(), store_factory()
    old = stopped(first)
    new = claimed(first.claim(continuing(old)))
    with pytest.raises(c.AlreadyContinued) as info:
        second.claim(continuing(old))
    assert (info.value.continued, info.value.by) == (old.id, new.id)
    assert info.value.exit_code == 0 and new.id in str(info.value)
    assert [r.id for r in successors(first, old.id)] == [new.id]
    assert len(first.list_runs()) == 2  # the refused claim inserted nothing
    # Continuing another run, or no run, is not affected.
    other = stopped(first, "other")
    claimed(second.claim(continuing(other)))
    claimed(second.claim(ClaimSpec(job="plain", host="h1", command=("true",))))


def _continue_worker(url: str, run_id: str, start: Any, out: Any) -> None:
    store = open_store(url)
    start.wait()
    try:
        run = store.claim(ClaimSpec(job="crunch", host="h1", command=("true",), continues=run_id))
        out.put(("run", run.id if isinstance(run, Run) else "lease"))
    except c.AlreadyContinued as exc:
        out.put(("already", exc.by))
    finally:
        store.close()


def test_racing_continuations_of_one_run_make_one_run(store_factory: StoreFactory) -> None:
    store = store_factory()
    old = stopped(store)
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_continue_worker, args=(store_factory.url, old.id, start, out))
             for _ in range(12)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    won = [rid for kind, rid in results if kind == "run"]
    assert len(won) == 1 and won[0] != "lease"
    assert {rid for kind, rid in results if kind == "already"} == set(won)
    assert [r.id for r in successors(store, old.id)] == won


# -- the pending-restart hold ----------------------------------------------------------------------


def test_restart_hold_is_alive_while_held_and_dead_once_its_process_is_sigkilled(
    store_factory: StoreFactory,
) -> None:
    # heartbeat_stale is what PostgreSQL judges the hold's heartbeat by; the others use a lock.
    store = store_factory(heartbeat_stale=1.0)
    old = stopped(store)
    epoch = store.gate().epoch
    assert store.restart_claims([old.id]) == {}
    assert store.claim_restart(old.id, epoch)
    holder = start_holder(store_factory.url, old.id)
    try:
        claim = store.restart_claims([old.id])[old.id]
        assert claim.held and claim.epoch == epoch and claim.respawns == 0
        time.sleep(1.5)  # past PostgreSQL's staleness: a live holder keeps it fresh
        assert store.restart_claims([old.id])[old.id].held
        assert store.retake_restart(old.id, epoch, grace=0) is None  # pending, not lost
        # A second supervisor for the same restart does not get it while the first lives.
        assert store_factory(heartbeat_stale=1.0).hold_restart(old.id) is False
        holder.send_signal(signal.SIGKILL)  # no chance to let go of anything
        holder.wait(10)
        assert wait_until(lambda: not store.restart_claims([old.id])[old.id].held)
        assert store_factory(heartbeat_stale=1.0).hold_restart(old.id) is True
    finally:
        holder.kill()
        holder.wait()


def test_a_released_hold_is_free_at_once(store_factory: StoreFactory) -> None:
    store, supervisor = store_factory(heartbeat_stale=30), store_factory(heartbeat_stale=30)
    old = stopped(store)
    assert store.claim_restart(old.id, store.gate().epoch)
    assert supervisor.hold_restart(old.id)
    assert store.restart_claims([old.id])[old.id].held
    # Gave up at the gate (exit 75): let go, so reconcile need not wait for staleness.
    supervisor.release_restart_hold(old.id, continued=False)
    assert not store.restart_claims([old.id])[old.id].held


def test_a_continuation_started_by_hand_holds_nothing(store_factory: StoreFactory) -> None:
    store = store_factory()
    old = stopped(store)
    assert store.hold_restart(old.id) is True  # no claim: nothing to wait for
    store.release_restart_hold(old.id, continued=True)
    assert store.restart_claims([old.id]) == {}


# -- re-taking a lost claim ------------------------------------------------------------------------


def test_retake_only_a_lost_claim_of_a_run_still_waiting_for_its_restart(
    store_factory: StoreFactory,
) -> None:
    store = store_factory(heartbeat_stale=30)
    old = stopped(store)
    epoch = store.gate().epoch
    assert store.retake_restart(old.id, epoch, grace=0) is None  # never claimed: claim it instead
    assert store.claim_restart(old.id, epoch)
    assert store.retake_restart(old.id, epoch, grace=60) is None  # may still be starting
    with pytest.raises(FencingError):
        store.retake_restart(old.id, epoch + 1, grace=0)
    lost = store.retake_restart(old.id, epoch, grace=0)
    assert lost is not None and lost.run_id == old.id and lost.respawns == 0
    claim = store.restart_claims([old.id])[old.id]
    assert claim.respawns == 1 and claim.claimed_at >= lost.claimed_at and claim.age < 60
    assert store.claim_restart(old.id, epoch) is False  # still exactly one claim
    # Continued meanwhile: nothing to re-take.
    claimed(store.claim(continuing(old)))
    assert store.retake_restart(old.id, epoch, grace=0) is None
    # Given up: nothing to re-take either.
    gone = stopped(store, "flaky", INTERRUPTED)
    assert store.claim_restart(gone.id, epoch)
    store.finish(gone.id, GIVEN_UP, message="max_restarts (5) reached")
    assert store.retake_restart(gone.id, epoch, grace=0) is None
    actions = [a for a in store.audit_log(limit=100) if a.action == "restart-respawn"]
    assert len(actions) == 1 and old.id in actions[0].reason


def test_a_stopped_run_can_be_given_up_and_nothing_else(store_factory: StoreFactory) -> None:
    store = store_factory()
    run = claimed(store.claim(ClaimSpec(job="flaky", host="h1", command=("true",))))
    ended = store.finish(run.id, CHECKPOINTED, 0, "stopped on request after saving a checkpoint")
    assert store.finish(run.id, FINISHED, 0).state == CHECKPOINTED  # the first outcome stays...
    given_up = store.finish(run.id, GIVEN_UP, message="max_restarts (5) reached")
    assert given_up.state == GIVEN_UP  # ...but the restart's verdict is recorded
    assert store.get_run(run.id).state == GIVEN_UP
    assert (given_up.exit_code, given_up.finished_at) == (0, ended.finished_at)
    assert given_up.message == "max_restarts (5) reached"
    assert store.finish(run.id, INTERRUPTED).state == GIVEN_UP
    done = claimed(store.claim(ClaimSpec(job="ok", host="h1", command=("true",))))
    store.finish(done.id, FINISHED, 0)
    assert store.finish(done.id, GIVEN_UP).state == FINISHED  # only a stopped run is given up


def _retake_worker(url: str, run_id: str, epoch: int, grace: float, start: Any, out: Any) -> None:
    store = open_store(url)
    start.wait()
    out.put(store.retake_restart(run_id, epoch, grace=grace) is not None)
    store.close()


def test_racing_retakes_of_a_lost_claim_win_once(store_factory: StoreFactory) -> None:
    store = store_factory()
    old = stopped(store)
    epoch = store.gate().epoch
    assert store.claim_restart(old.id, epoch)
    grace = 3.0  # every racer is done long before the winner's claim is this old again
    aged(store, old.id, grace)
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_retake_worker,
                         args=(store_factory.url, old.id, epoch, grace, start, out))
             for _ in range(12)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert sorted(results) == [False] * 11 + [True]
    assert store.restart_claims([old.id])[old.id].respawns == 1
    assert [a.action for a in store.audit_log(limit=100)].count("restart-respawn") == 1


# -- upgrading a schema-1 store --------------------------------------------------------------------


def _v1_store(factory: StoreFactory, runs: list[Run], claims: list[str]) -> None:
    """The store as the first schema left it: no continuation markers / index, old claims."""
    now = time.time()
    if factory.kind == "file":
        assert factory.root
        for sub in ("runs", "restarts"):
            (factory.root / sub).mkdir(parents=True, mode=0o700)
        (factory.root / "schema").write_text("1\n")
        gate = {"schema": 1, "lease": Lease("open", 0).to_dict()}
        (factory.root / "gate.json").write_text(json.dumps(gate))
        for run in runs:
            doc = {"schema": 1, "run": run.to_dict()}
            (factory.root / "runs" / f"{run.id}.json").write_text(json.dumps(doc))
        for run_id in claims:
            (factory.root / "restarts" / run_id).write_text(json.dumps({"epoch": 0, "ts": now}))
        return
    if factory.kind == "sqlite":
        from shipit.gate.sqlite import _SCHEMA

        assert factory.root
        factory.root.mkdir()
        db = sqlite3.connect(factory.root / "jobs.db")
        db.executescript(_SCHEMA + ";INSERT INTO meta VALUES ('schema_version', '1');")
        for run in runs:
            row = c.run_to_row(run)
            db.execute(f"INSERT INTO runs ({', '.join(V1_FIELDS)}) VALUES "
                       f"({','.join('?' * len(V1_FIELDS))})",
                       tuple(row[k] for k in V1_FIELDS))
        db.executemany("INSERT INTO restarts VALUES (?, 0, ?)", [(r, now) for r in claims])
        db.commit()
        db.close()
        return
    import psycopg

    from shipit.gate.postgres import SCHEMA

    with psycopg.connect(factory.url, autocommit=True) as conn:
        conn.execute(SCHEMA)
        for run in runs:
            row = c.run_to_row(run)
            conn.execute(f"INSERT INTO shipit_runs ({', '.join(V1_FIELDS)}) VALUES "
                         f"({', '.join(['%s'] * len(V1_FIELDS))})",
                         tuple(row[k] for k in V1_FIELDS))
        for run_id in claims:
            conn.execute("INSERT INTO shipit_restarts VALUES (%s, 0, %s, 'old-token')",
                         (run_id, now))


# The run columns of a schema-1 store (schema 3 added grace and stop_grace).
V1_FIELDS = tuple(f for f in c.RUN_FIELDS if f not in ("grace", "stop_grace"))


def _schema_version(factory: StoreFactory) -> int:
    if factory.kind == "file":
        assert factory.root
        return int((factory.root / "schema").read_text())
    if factory.kind == "sqlite":
        assert factory.root
        db = sqlite3.connect(factory.root / "jobs.db")
        try:
            return int(db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
        finally:
            db.close()
    import psycopg

    with psycopg.connect(factory.url) as conn:
        row = conn.execute("SELECT version FROM shipit_schema").fetchone()
        assert row
        return int(row[0])


def _old_run(run_id: str, **kw: Any) -> Run:
    now = time.time()
    return Run(id=run_id, job="crunch", host="h1", command=("true",), state=CHECKPOINTED,
               created_at=now, finished_at=now, stop_requested_at=now, **kw)


def test_a_schema_1_store_is_upgraded_on_first_open(store_factory: StoreFactory) -> None:
    runs = [_old_run("000001aaaa"), _old_run("000002bbbb", continues="000001aaaa", attempt=2),
            _old_run("000003cccc")]
    _v1_store(store_factory, runs, claims=["000001aaaa", "000003cccc"])
    store = store_factory()
    assert _schema_version(store_factory) == SCHEMA_VERSION == 3
    # A continuation claimed before the upgrade still counts...
    with pytest.raises(c.AlreadyContinued) as info:
        store.claim(ClaimSpec(job="crunch", host="h1", command=("true",), continues="000001aaaa"))
    assert info.value.by == "000002bbbb"
    # ...and an old claim nothing continues can be re-taken once its spawn grace is over.
    old = store.restart_claims(["000003cccc"])["000003cccc"]
    assert not old.held and old.respawns == 0
    assert store.retake_restart("000003cccc", 0, grace=0) is not None
    assert store.retake_restart("000001aaaa", 0, grace=0) is None  # continued
    store_factory().close()  # opening again: nothing left to upgrade
    assert _schema_version(store_factory) == SCHEMA_VERSION


def test_a_schema_1_store_with_two_continuations_of_one_run_is_refused(
    store_factory: StoreFactory,
) -> None:
    runs = [_old_run("000001aaaa"), _old_run("000002bbbb", continues="000001aaaa"),
            _old_run("000003cccc", continues="000001aaaa")]
    _v1_store(store_factory, runs, claims=[])
    with pytest.raises(CorruptState) as info:
        store_factory()
    msg = str(info.value)
    assert "000002bbbb" in msg and "000003cccc" in msg and "000001aaaa" in msg
    assert "\n" not in msg
    assert _schema_version(store_factory) == 1  # nothing half-upgraded


def test_continuation_markers_and_hold_files_are_private(store_factory: StoreFactory) -> None:
    if store_factory.kind == "postgres":
        pytest.skip("no files")
    store = store_factory()
    old = stopped(store)
    assert store.claim_restart(old.id, store.gate().epoch)
    assert store.hold_restart(old.id)
    claimed(store.claim(continuing(old)))
    assert store_factory.root
    paths = [store_factory.root / "restarts" / f"{old.id}.lock"]
    if store_factory.kind == "file":
        paths += [store_factory.root / "restarts" / old.id, store_factory.root / "continued" / old.id]
    for path in paths:
        assert os.stat(path).st_mode & 0o777 == 0o600, path
    for d in ("restarts",) + (("continued",) if store_factory.kind == "file" else ()):
        assert os.stat(store_factory.root / d).st_mode & 0o777 == 0o700
