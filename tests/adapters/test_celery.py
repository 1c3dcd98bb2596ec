"""The Celery adapter against a real redis-server broker and real `celery worker` processes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis
from celery import Celery

from shipit.adapters.base import WorkItem
from shipit.adapters.celery import PAUSED_PREFIX, CeleryAdapter, copy_id
from shipit.errors import ConfigError, DeployFailed
from tests.adapters import queue_fixtures as qf
from tests.adapters.queue_fixtures import Markers, Workers, make_ctx, wait_for

# The fixtures this module uses, by name (pytest finds them as module attributes).
job_dir, markers, queue_redis, workers = qf.job_dir, qf.markers, qf.queue_redis, qf.workers


def send(url: str, task: str, *args: object, queue: str = "work") -> str:
    app = Celery("client", broker=url, set_as_current=False)
    return str(app.send_task(task, args=list(args), queue=queue).id)


def adapter_for(url: str, name: str = "celery") -> CeleryAdapter:
    return CeleryAdapter(name, broker_url=url, queues=["work"], control_timeout=1.0)


def test_long_task_at_drain_is_terminated_and_sent_again_once_after_resume(
    queue_redis: str, workers: Workers, markers: Markers, tmp_path: Path
) -> None:
    workers.celery("w1", ["work"], pool="prefork")
    task_id = send(queue_redis, "long", str(markers.root), "long", 60)
    wait_for(lambda: markers.starts("long") == 1, 15, "the long task to start")
    ctx, _ = make_ctx(tmp_path)
    adapter = adapter_for(queue_redis)

    adapter.pause(ctx)
    items = adapter.running(ctx)
    assert [(i.id, i.name, i.detail["worker"], i.detail["state"]) for i in items] == [
        (task_id, "long", "w1@test", "active")]

    stopped = adapter.stop(ctx, items, grace=2)
    assert [i.id for i in stopped] == [task_id]
    assert adapter.running(ctx) == []
    assert [i.id for i in adapter.requeue(ctx, stopped)] == [task_id]
    assert adapter.requeue(ctx, stopped) == []
    assert adapter_for(queue_redis, "celery").requeue(ctx, stopped) == []
    conn = redis.Redis.from_url(queue_redis)
    # A BRPOP the worker issued before its consumer was cancelled can still take the copy;
    # kombu then pushes it back ("Requeuing undeliverable message ... No consumers"). So the
    # copy may be away for up to one BRPOP timeout (1 s) before it waits in the queue for good.
    wait_for(lambda: conn.llen("work") == 1, 10, "the copy to wait in the queue")
    time.sleep(1.5)
    assert conn.llen("work") == 1  # one copy, still waiting: the paused worker runs nothing
    assert markers.starts("long") == 1

    adapter.resume(ctx)
    wait_for(lambda: markers.starts("long") == 2, 15, "the copy to start on the resumed worker")
    markers.release("long")
    wait_for(lambda: markers.done("long"), 15, "the copy to finish")
    assert adapter.running(ctx) == [] and conn.llen("work") == 0
    assert markers.starts("long") == 2
    assert copy_id(task_id, "deploy-1") != task_id


def test_task_sent_while_paused_waits_and_a_later_deploy_can_resume(
    queue_redis: str, workers: Workers, markers: Markers, tmp_path: Path
) -> None:
    workers.celery("w1", ["work"])
    workers.celery("w2", ["work", "other"])
    ctx, _ = make_ctx(tmp_path)
    adapter_for(queue_redis).pause(ctx)

    send(queue_redis, "quick", str(markers.root), "late")
    time.sleep(1.5)  # a worker still consuming takes it within milliseconds
    assert markers.starts("late") == 0
    conn = redis.Redis.from_url(queue_redis)
    assert conn.llen("work") == 1
    assert {m.decode() for m in conn.smembers(f"{PAUSED_PREFIX}celery")} == {"w1@test", "w2@test"}

    # This deploy died; the next one's adapter (a new process) resumes what it left paused.
    next_ctx, _ = make_ctx(tmp_path, deploy_id="deploy-2")
    adapter_for(queue_redis).resume(next_ctx)
    wait_for(lambda: markers.done("late"), 15, "the task to run after resume")
    assert markers.starts("late") == 1
    assert conn.exists(f"{PAUSED_PREFIX}celery") == 0
    adapter_for(queue_redis).resume(next_ctx)  # idempotent


def test_acks_late_task_whose_worker_process_died_is_redelivered_by_the_broker_not_copied(
    queue_redis: str, workers: Workers, markers: Markers, tmp_path: Path
) -> None:
    workers.celery("w1", ["work"], pool="prefork", acks_late=True)
    task_id = send(queue_redis, "long", str(markers.root), "lost", 60)
    wait_for(lambda: markers.starts("lost") == 1, 15, "the task to start")
    ctx, _ = make_ctx(tmp_path)
    adapter = adapter_for(queue_redis)
    adapter.pause(ctx)
    [item] = adapter.running(ctx)

    # The pool process dies under the task (OOM killer, a crash) while the deploy drains: with
    # task_reject_on_worker_lost the broker gets the message back.
    os.kill(int(item.detail["worker_pid"]), signal.SIGKILL)
    wait_for(lambda: adapter.broker_holds(task_id), 15, "the message to return to the broker")
    assert adapter.requeue(ctx, [item]) == []

    adapter.resume(ctx)
    wait_for(lambda: markers.starts("lost") == 2, 15, "the broker to redeliver the task")
    markers.release("lost")
    wait_for(lambda: markers.done("lost"), 15, "the redelivered task to finish")
    assert markers.starts("lost") == 2
    assert redis.Redis.from_url(queue_redis).llen("work") == 0


def test_dry_run_lists_tasks_and_changes_nothing(
    queue_redis: str, workers: Workers, markers: Markers, tmp_path: Path
) -> None:
    workers.celery("w1", ["work"], pool="prefork")
    task_id = send(queue_redis, "long", str(markers.root), "busy", 60)
    wait_for(lambda: markers.starts("busy") == 1, 15, "the task to start")
    ctx, recorder = make_ctx(tmp_path, dry_run=True)
    adapter = adapter_for(queue_redis)
    adapter.pause(ctx)
    items = adapter.running(ctx)
    assert [i.id for i in items] == [task_id]
    assert adapter.stop(ctx, items, grace=0) == [] and adapter.requeue(ctx, items) == []
    adapter.resume(ctx)
    # The worker still consumes the queue (its one process is busy, so ask it rather than
    # send a second task).
    queues = Celery("c", broker=queue_redis, set_as_current=False).control.inspect(
        destination=["w1@test"], timeout=1, limit=1).active_queues()
    assert [q["name"] for q in queues["w1@test"]] == ["work"]
    assert [i.id for i in adapter.running(make_ctx(tmp_path)[0])] == [task_id]
    assert any("would revoke" in e.message for e in recorder.of("log"))


def test_a_non_redis_broker_is_a_config_error(tmp_path: Path) -> None:
    ctx, _ = make_ctx(tmp_path)
    adapter = CeleryAdapter("c", broker_url="amqp://guest:secret@rabbit//", queues=["work"])
    with pytest.raises(ConfigError, match="only Redis brokers") as err:
        adapter.pause(ctx)
    assert "secret" not in str(err.value)


def test_a_busy_solo_worker_cannot_be_drained_so_the_deploy_fails_before_any_change(
    queue_redis: str, workers: Workers, markers: Markers, tmp_path: Path
) -> None:
    # A solo-pool worker runs the task in its only thread: it answers no control message
    # until the task ends, so its work can be neither listed nor stopped.
    workers.celery("w1", ["work"])
    send(queue_redis, "long", str(markers.root), "solo", 60)
    wait_for(lambda: markers.starts("solo") == 1, 15, "the task to start")
    ctx, _ = make_ctx(tmp_path)
    adapter = CeleryAdapter("celery", broker_url=queue_redis, queues=["work"],
                            workers=["w1@test"], control_timeout=0.5)
    with pytest.raises(DeployFailed, match=r"w1@test did not answer within 0.5s"):
        adapter.pause(ctx)
    conn = redis.Redis.from_url(queue_redis)
    assert conn.exists(f"{PAUSED_PREFIX}celery") == 0
    adapter.resume(ctx)
    markers.release("solo")
    wait_for(lambda: markers.done("solo"), 15, "the task to finish untouched")
    assert markers.starts("solo") == 1


def test_a_task_that_ignores_its_stop_fails_the_deploy_and_stopped_ones_are_still_requeued(
    queue_redis: str, workers: Workers, markers: Markers, tmp_path: Path
) -> None:
    workers.celery("w1", ["work"], pool="prefork")
    task_id = send(queue_redis, "long", str(markers.root), "stops", 60)
    wait_for(lambda: markers.starts("stops") == 1, 15, "the task to start")
    ctx, _ = make_ctx(tmp_path)
    adapter = adapter_for(queue_redis)
    adapter.pause(ctx)
    items = adapter.running(ctx)
    # A second item on a worker that does not exist: nobody will ever confirm its stop.
    ghost = WorkItem(id="ghost", adapter="celery", name="long", host="*",
                     detail={"worker": "nobody@test", "queue": "work", "state": "active"})
    real_running = adapter.running

    def running(ctx_: object) -> list[WorkItem]:
        return [*real_running(ctx_), ghost]  # type: ignore[arg-type]

    adapter.running = running  # type: ignore[method-assign]
    with pytest.raises(DeployFailed, match=r"did not confirm the stop of long \(ghost\)"):
        adapter.stop(ctx, [*items, ghost], grace=0.2)
    adapter.running = real_running  # type: ignore[method-assign]
    assert adapter.requeue(ctx, items) == []  # already requeued by stop, once
    adapter.resume(ctx)
    wait_for(lambda: markers.starts("stops") == 2, 15, "the stopped task to run again")
    markers.release("stops")
    wait_for(lambda: markers.done("stops"), 15, "it to finish")
    assert markers.starts("stops") == 2 and task_id == items[0].id
