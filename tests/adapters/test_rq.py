"""The RQ adapter against a real redis-server and real `rq worker` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.job import Job

from shipit.adapters.rq import SUSPEND_KEY, RQAdapter
from shipit.errors import ConfigError, StoreUnavailable
from tests.adapters import queue_fixtures as qf
from tests.adapters.queue_fixtures import Markers, Workers, make_ctx, wait_for

# The fixtures this module uses, by name (pytest finds them as module attributes).
job_dir, markers, queue_redis, workers = qf.job_dir, qf.markers, qf.queue_redis, qf.workers

MOD = "shipit_queue_jobs"


def enqueue(url: str, queue: str, func: str, *args: object) -> Job:
    return Queue(queue, connection=redis.Redis.from_url(url)).enqueue(f"{MOD}.{func}", *args)


def test_long_job_at_drain_is_stopped_and_requeued_once_onto_the_resumed_workers(
    queue_redis: str, workers: Workers, markers: Markers, tmp_path: Path
) -> None:
    workers.rq("w1", ["work"])
    job = enqueue(queue_redis, "work", "long_job", str(markers.root), "long", 60)
    wait_for(lambda: markers.starts("long") == 1, 15, "the long job to start")
    ctx, _ = make_ctx(tmp_path)
    adapter = RQAdapter("rq", url=queue_redis, queues=["work"])

    adapter.pause(ctx)
    items = adapter.running(ctx)
    assert [i.id for i in items] == [job.id]
    assert items[0].name == f"{MOD}.long_job" and items[0].detail["worker"] == "w1"

    stopped = adapter.stop(ctx, items, grace=1)
    assert [i.id for i in stopped] == [job.id]
    assert adapter.running(ctx) == []

    assert [i.id for i in adapter.requeue(ctx, stopped)] == [job.id]
    # The same deploy retrying, or a second process working for it: no duplicate.
    assert adapter.requeue(ctx, stopped) == []
    assert RQAdapter("again", url=queue_redis, queues=["work"]).requeue(ctx, stopped) == []
    assert Queue("work", connection=redis.Redis.from_url(queue_redis)).get_job_ids() == [job.id]
    assert markers.starts("long") == 1  # still suspended: waits for the new code

    adapter.resume(ctx)
    wait_for(lambda: markers.starts("long") == 2, 15, "the requeued job to start again")
    markers.release("long")
    conn = redis.Redis.from_url(queue_redis)
    wait_for(lambda: Job.fetch(job.id, connection=conn).get_status() == "finished", 15,
             "the requeued job to finish")
    assert markers.starts("long") == 2
    assert Job.fetch(job.id, connection=conn).meta["shipit"] == {
        "requeued_by": "deploy-1", "requeues": 1}


def test_job_enqueued_while_suspended_waits_for_resume_even_on_an_idle_worker(
    queue_redis: str, workers: Workers, markers: Markers, tmp_path: Path
) -> None:
    # Both workers sit in RQ's blocking pop (405 s by default) when the deploy suspends them.
    workers.rq("w1", ["work"])
    workers.rq("w2", ["work", "other"])
    ctx, _ = make_ctx(tmp_path)
    adapter = RQAdapter("rq", url=queue_redis, queues=["work"])
    adapter.pause(ctx)

    job = enqueue(queue_redis, "work", "quick_job", str(markers.root), "late")
    # A worker that missed the suspension would take the job within milliseconds.
    time.sleep(1.5)
    assert markers.starts("late") == 0
    assert job.get_status(refresh=True) == "queued"
    assert adapter.running(ctx) == []
    # The wake-up jobs are gone: only the user's job is queued.
    assert Queue("work", connection=redis.Redis.from_url(queue_redis)).get_job_ids() == [job.id]

    adapter.resume(ctx)
    wait_for(lambda: markers.done("late"), 15, "the queued job to run after resume")
    assert markers.starts("late") == 1


PAUSE_AND_HANG = """
import sys, time
from tests.adapters.queue_fixtures import make_ctx
from shipit.adapters.rq import RQAdapter
from pathlib import Path
ctx, _ = make_ctx(Path(sys.argv[2]))
RQAdapter("rq", url=sys.argv[1], queues=["work"], suspend_ttl=2).pause(ctx)
print("paused", flush=True)
time.sleep(600)
"""


def test_a_killed_deploy_leaves_no_suspension_behind_once_the_ttl_runs_out(
    queue_redis: str, workers: Workers, markers: Markers, tmp_path: Path
) -> None:
    workers.rq("w1", ["work"])
    conn = redis.Redis.from_url(queue_redis)
    deploy = subprocess.Popen(
        [sys.executable, "-c", PAUSE_AND_HANG, queue_redis, str(tmp_path)],
        stdout=subprocess.PIPE, cwd=Path(__file__).parents[2], start_new_session=True,
    )
    try:
        assert deploy.stdout is not None and deploy.stdout.readline() == b"paused\n"
        # The live deploy renews the suspension: its TTL goes back up rather than running out.
        low = wait_for(lambda: (t := conn.pttl(SUSPEND_KEY)) < 1500 and t, 5, "the TTL to fall")
        wait_for(lambda: conn.pttl(SUSPEND_KEY) > low + 200, 5, "the deploy to renew")
        job = enqueue(queue_redis, "work", "quick_job", str(markers.root), "after")
        os.killpg(deploy.pid, signal.SIGKILL)
    finally:
        if deploy.poll() is None:
            os.killpg(deploy.pid, signal.SIGKILL)
        deploy.wait()
    assert markers.starts("after") == 0
    wait_for(lambda: markers.done("after"), 15, "the suspension to expire and the job to run")
    assert conn.exists(SUSPEND_KEY) == 0
    # The job writes its marker before RQ records it finished: under load that takes a moment.
    wait_for(lambda: job.get_status(refresh=True) == "finished", 10, "RQ to record the job finished")


def test_a_suspension_made_by_hand_outlives_the_deploy(queue_redis: str, tmp_path: Path) -> None:
    conn = redis.Redis.from_url(queue_redis)
    conn.set(SUSPEND_KEY, 1)  # `rq suspend` without --duration
    ctx, recorder = make_ctx(tmp_path)
    adapter = RQAdapter("rq", url=queue_redis, queues=["work"])
    adapter.pause(ctx)
    adapter.resume(ctx)
    adapter.resume(ctx)  # the failure path may resume twice
    assert conn.exists(SUSPEND_KEY) == 1 and conn.ttl(SUSPEND_KEY) == -1
    assert any("by hand" in e.message for e in recorder.of("log"))


def test_resume_is_idempotent_and_clears_the_deploys_suspension(queue_redis: str, tmp_path: Path) -> None:
    conn = redis.Redis.from_url(queue_redis)
    ctx, _ = make_ctx(tmp_path)
    adapter = RQAdapter("rq", url=queue_redis, queues=["work"])
    RQAdapter("rq", url=queue_redis, queues=["work"]).resume(ctx)  # before any pause
    adapter.pause(ctx)
    assert 0 < conn.ttl(SUSPEND_KEY) <= 30  # the stage's lease_ttl
    adapter.resume(ctx)
    adapter.resume(ctx)
    assert conn.exists(SUSPEND_KEY) == 0


def test_dry_run_lists_running_jobs_and_changes_nothing(
    queue_redis: str, workers: Workers, markers: Markers, tmp_path: Path
) -> None:
    workers.rq("w1", ["work"])
    job = enqueue(queue_redis, "work", "long_job", str(markers.root), "busy", 60)
    wait_for(lambda: markers.starts("busy") == 1, 15, "the job to start")
    ctx, recorder = make_ctx(tmp_path, dry_run=True)
    adapter = RQAdapter("rq", url=queue_redis, queues=["work"])
    adapter.pause(ctx)
    items = adapter.running(ctx)
    assert [i.id for i in items] == [job.id]
    assert adapter.stop(ctx, items, grace=0) == []
    assert adapter.requeue(ctx, items) == []
    adapter.resume(ctx)
    conn = redis.Redis.from_url(queue_redis)
    assert conn.exists(SUSPEND_KEY) == 0
    assert job.get_status(refresh=True) == "started"
    assert any("would stop job" in e.message for e in recorder.of("log"))


def test_a_job_that_finished_before_the_stop_is_not_requeued(
    queue_redis: str, workers: Workers, markers: Markers, tmp_path: Path
) -> None:
    workers.rq("w1", ["work"])
    enqueue(queue_redis, "work", "long_job", str(markers.root), "short", 60)
    wait_for(lambda: markers.starts("short") == 1, 15, "the job to start")
    ctx, _ = make_ctx(tmp_path)
    adapter = RQAdapter("rq", url=queue_redis, queues=["work"])
    adapter.pause(ctx)
    items = adapter.running(ctx)
    markers.release("short")
    assert adapter.wait(ctx, items, timeout=15) == []
    assert adapter.stop(ctx, items, grace=1) == []
    assert adapter.requeue(ctx, items) == []
    adapter.resume(ctx)
    assert markers.starts("short") == 1


def test_unreachable_redis_is_one_line_without_the_password(tmp_path: Path) -> None:
    ctx, _ = make_ctx(tmp_path)
    adapter = RQAdapter("jobs", url="redis://:hunter2@127.0.0.1:1/0", queues=["work"])
    with pytest.raises(StoreUnavailable) as err:
        adapter.pause(ctx)
    assert "hunter2" not in str(err.value) and "redis://:***@127.0.0.1:1/0" in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_url_env_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHIPIT_TEST_NO_SUCH_URL", raising=False)
    ctx, _ = make_ctx(tmp_path)
    with pytest.raises(ConfigError, match="SHIPIT_TEST_NO_SUCH_URL"):
        RQAdapter("rq", url_env="SHIPIT_TEST_NO_SUCH_URL").running(ctx)


def test_shipit_yaml_adapter_entry_builds_an_rq_adapter(tmp_path: Path) -> None:
    from shipit.adapters.registry import build_adapters
    from shipit.config.model import Config

    config = Config.model_validate({
        "application": "app", "source": {"dir": str(tmp_path)}, "deploy_to": str(tmp_path / "app"),
        "jobs": {"adapters": [{"type": "rq", "name": "reports", "queues": ["high", "low"],
                               "url_env": "REPORTS_REDIS", "suspend_ttl": 90, "grace": 3}]},
        "stages": {"prod": {"hosts": ["local"]}},
    })
    [adapter] = build_adapters(config.stage("prod"))
    assert isinstance(adapter, RQAdapter)
    assert (adapter.name, adapter.queues, adapter.url_env, adapter.suspend_ttl, adapter.grace) == (
        "reports", ("high", "low"), "REPORTS_REDIS", 90, 3)
