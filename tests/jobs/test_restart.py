"""restart() and reconcile() against a real SQLite store and real supervisors."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from shipit.gate.base import CHECKPOINTED, FINISHED, ClaimSpec, Run
from shipit.gate.sqlite import SQLiteStore
from shipit.jobs.drain import drain
from shipit.jobs.reconcile import leftovers, reconcile
from shipit.jobs.restart import dependency_order, local_spawner, restart
from tests.jobs.deploy_kit import SHIPIT, bus, running_run, start_job, stateful_command, wait_for


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(str(tmp_path / "store" / "jobs.db"))
    yield s
    s.close()


def url(store: SQLiteStore) -> str:
    return f"sqlite:{store.path}"


def stopped_run(store: SQLiteStore, job: str, *, restarts: int = 0) -> Run:
    """A run as a drain leaves it: claimed while open, stop requested, checkpointed."""
    epoch = store.gate().epoch
    if store.gate().state == "closed":
        store.open_gate(epoch, actor="test")
    run = store.claim(ClaimSpec(job=job, host="h1", command=("true",), restarts=restarts))
    assert isinstance(run, Run)
    lease = store.close_gate(holder="t", deploy_id=f"d-{job}", reason="", ttl=30)
    store.request_stop(run.id, lease.epoch)
    store.save_checkpoint(run.id, {"at": job})
    return store.finish(run.id, CHECKPOINTED)


def successors(store: SQLiteStore, run_id: str) -> list[Run]:
    return [r for r in store.list_runs() if r.continues == run_id]


def test_a_stopped_job_restarts_on_its_checkpoint_and_finishes_every_item_once(store, tmp_path):
    cmd, out = stateful_command(tmp_path, total=60, delay=0.02)
    start_job(url(store), "crunch", cmd)
    running_run(store, "crunch")
    wait_for(lambda: out.exists() and out.read_text().count("\n") >= 3, what="some items")
    b, rec = bus()
    result = drain(store, holder="t", deploy_id="d1", reason="", ttl=10, timeout=0.1,
                   policy="terminate", grace=5, emit=b.emit)
    spawn = local_spawner(SHIPIT, url(store), log_dir=str(tmp_path / "logs"))
    outcomes = restart(store, epoch=result.lease.epoch, actor="t", recorded=result.recorded,
                       spawn=spawn, definitions={}, max_restarts=5, emit=b.emit)
    assert [o["outcome"] for o in outcomes] == ["restarted"]
    old = result.recorded[0]
    new = wait_for(lambda: successors(store, old.id), what="the continuation")[0]
    wait_for(lambda: store.get_run(new.id).state == FINISHED, what="the continuation to finish")
    items = [int(line.split()[0]) for line in out.read_text().splitlines()]
    assert items == list(range(1, 61))
    assert store.get_run(new.id).attempt == old.attempt + 1
    assert not store.gate().is_closed(time.time())
    assert [e.data["run_id"] for e in rec.of("job.restarted")] == [old.id]


def test_twenty_concurrent_restarts_start_one_new_run(store, tmp_path):
    run = stopped_run(store, "solo")
    epoch = store.gate().epoch
    spawned: list[str] = []
    lock = threading.Lock()
    go = threading.Barrier(20)
    path = store.path

    def spawn(r: Run) -> dict:
        with lock:
            spawned.append(r.id)
        # What a real spawn ends up doing: a new run that continues the old one.
        s = SQLiteStore(path)
        s.claim(ClaimSpec(job=r.job, host=r.host, command=r.command, continues=r.id,
                          attempt=r.attempt + 1))
        s.close()
        return {}

    def attempt() -> None:
        s = SQLiteStore(path)
        go.wait()
        restart(s, epoch=epoch, actor="t", recorded=[run], spawn=spawn, definitions={},
                max_restarts=5, emit=lambda *a, **k: None)
        s.close()

    threads = [threading.Thread(target=attempt) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert spawned == [run.id]
    assert len(successors(store, run.id)) == 1


def test_after_dependencies_start_first(store):
    web = stopped_run(store, "indexer")
    db = stopped_run(store, "migrator")
    cache = stopped_run(store, "warmer")
    defs = {"indexer": {"after": ["migrator"]}, "warmer": {"after": ["indexer"]}}
    order: list[str] = []
    restart(store, epoch=store.gate().epoch, actor="t", recorded=[cache, web, db],
            spawn=lambda r: order.append(r.job) or {}, definitions=defs, max_restarts=5,
            emit=lambda *a, **k: None)
    assert order == ["migrator", "indexer", "warmer"]


def test_dependency_cycle_still_starts_everything_once():
    runs = [Run(id=str(i), job=j, host="h", command=(), state=CHECKPOINTED)
            for i, j in enumerate(["a", "b"])]
    defs = {"a": {"after": ["b"]}, "b": {"after": ["a"]}}
    assert sorted(r.job for r in dependency_order(runs, defs)) == ["a", "b"]


def test_max_restarts_gives_up_instead_of_restarting(store):
    run = stopped_run(store, "flaky", restarts=2)
    b, rec = bus()
    spawned: list[str] = []
    outcomes = restart(store, epoch=store.gate().epoch, actor="t", recorded=[run],
                       spawn=lambda r: spawned.append(r.id) or {},
                       definitions={"flaky": {"max_restarts": 2}}, max_restarts=5, emit=b.emit)
    assert spawned == []
    assert [o["outcome"] for o in outcomes] == ["given_up"]
    assert [e.data["run"]["run_id"] for e in rec.of("job.given_up")] == [run.id]


def test_restart_command_replaces_the_spawn(store, tmp_path):
    run = stopped_run(store, "unit")
    flag = tmp_path / "started"
    spawned: list[str] = []
    outcomes = restart(store, epoch=store.gate().epoch, actor="t", recorded=[run],
                       spawn=lambda r: spawned.append(r.id) or {},
                       definitions={"unit": {"restart_command": f"echo $SHIPIT_CONTINUES > {flag}"}},
                       max_restarts=5, emit=lambda *a, **k: None)
    assert [o["outcome"] for o in outcomes] == ["restarted"] and spawned == []
    assert flag.read_text().strip() == run.id


def test_reconcile_restarts_leftovers_once_after_the_lease_expires(store, tmp_path):
    run = stopped_run(store, "left")  # its deploy died: the gate stays closed at 30s TTL
    b, _ = bus()
    from shipit.errors import GateHeld

    with pytest.raises(GateHeld):
        reconcile(store, actor="t", spawn=lambda r: {}, definitions={}, max_restarts=5, emit=b.emit)
    # Let the lease run out (as a TTL would) and reconcile twice: one restart.
    epoch = store.gate().epoch
    store.renew(epoch, 0.05)
    wait_for(lambda: not store.gate().is_closed(time.time()), what="expiry")
    spawned: list[str] = []

    def spawn(r: Run) -> dict:
        # What the spawned supervisor does: claim the run that continues this one. (A spawn
        # that leaves no trace is a lost restart, which the next reconcile starts again.)
        spawned.append(r.id)
        store.claim(ClaimSpec(job=r.job, host=r.host, command=r.command, continues=r.id))
        return {}

    for _ in range(2):
        reconcile(store, actor="t", spawn=spawn, definitions={}, max_restarts=5, emit=b.emit)
    assert spawned == [run.id]
    assert store.gate().state == "open"


def test_leftovers_ignore_jobs_stopped_by_hand_and_finished_ones(store):
    store_run = store.claim(ClaimSpec(job="manual", host="h1", command=("true",)))
    store.finish(store_run.id, CHECKPOINTED)  # stopped by someone, not by a deploy
    ok = store.claim(ClaimSpec(job="fine", host="h1", command=("true",)))
    store.finish(ok.id, FINISHED)
    assert leftovers(store) == []
