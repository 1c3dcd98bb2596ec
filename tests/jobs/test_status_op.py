"""`shipit agent status` (what `shipit status` shows per store): jobs waiting at the gate,
running, and stopped ones only while they still await their restart; a stopped run's elapsed
time is its run time, not a clock that keeps going. A real agent process on a real store."""

from __future__ import annotations

import time
from pathlib import Path

from shipit.gate.base import CHECKPOINTED, FINISHED, INTERRUPTED, ClaimSpec, Run
from shipit.gate.sqlite import SQLiteStore
from shipit.jobs.drain import DEAD_MESSAGE
from tests.jobs.deploy_kit import agent


def _claim(store: SQLiteStore, job: str, **kw: object) -> Run:
    run = store.claim(ClaimSpec(job=job, host="h1", command=("x",), **kw))  # type: ignore[arg-type]
    assert isinstance(run, Run)
    return run


def _stopped(store: SQLiteStore, job: str, **kw: object) -> Run:
    """A run a deploy asked to stop and that saved a checkpoint."""
    run = _claim(store, job, **kw)
    lease = store.close_gate(holder="ci", deploy_id="d", reason="r", ttl=60)
    store.request_stop(run.id, lease.epoch, 1.0)
    store.save_checkpoint(run.id, {"next": 3})
    store.finish(run.id, CHECKPOINTED)
    store.open_gate(lease.epoch, actor="ci")
    return store.get_run(run.id)


def test_status_shows_waiting_running_and_pending_restarts_not_history(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "store" / "jobs.db"))
    url = f"sqlite:{store.path}"
    try:
        superseded = _stopped(store, "crunch")
        successor = _claim(store, "crunch", continues=superseded.id, attempt=2)
        store.finish(successor.id, FINISHED)
        pending = _stopped(store, "reindex")
        dead = _claim(store, "import")
        store.release_run_lock(dead.id)
        store.mark_interrupted(dead.id, DEAD_MESSAGE)  # found dead by a deploy: a restart is owed
        orphan = _claim(store, "cleanup")
        store.release_run_lock(orphan.id)
        store.mark_interrupted(orphan.id, "process gone (found when the job key was claimed again)")
        running = _claim(store, "live")  # this process holds its lock: alive
        lease = store.close_gate(holder="ci", deploy_id="d2", reason="r", ttl=60)
        waiting = store.enter_waiting(ClaimSpec(job="late", host="h1", command=("x",), pid=77), lease)

        code, lines = agent("status", {"store": url})
        assert code == 0, lines
        shown = {r["run_id"]: r for r in lines[-1]["result"]["runs"]}
        assert set(shown) == {waiting.id, running.id, pending.id, dead.id}
        assert shown[waiting.id]["state"] == "waiting" and shown[waiting.id]["job"] == "late"
        assert shown[waiting.id]["pid"] == 77 and shown[waiting.id]["host"] == "h1"
        assert shown[running.id]["alive"] is True
        assert shown[pending.id]["state"] == CHECKPOINTED and shown[dead.id]["state"] == INTERRUPTED
        ran = pending.finished_at - pending.started_at  # type: ignore[operator]
        assert abs(shown[pending.id]["elapsed"] - ran) < 0.01
        time.sleep(0.3)
        _, again = agent("status", {"store": url})
        later = {r["run_id"]: r for r in again[-1]["result"]["runs"]}
        assert later[pending.id]["elapsed"] == shown[pending.id]["elapsed"]  # it stopped growing
        assert later[running.id]["elapsed"] > shown[running.id]["elapsed"]  # this one runs on
        # The history is all still there for `jobs list`.
        _, listed = agent("list", {"store": url})
        ids = {r["id"] for r in listed[-1]["result"]["runs"]}
        assert {superseded.id, successor.id, orphan.id, waiting.id} <= ids
        _, only = agent("list", {"store": url, "state": "waiting"})
        assert [r["id"] for r in only[-1]["result"]["runs"]] == [waiting.id]
    finally:
        store.close()
