"""Celery through the deploy's adapter phase (shipit/phases/adapters.py), configured as in
shipit.yaml: drain_jobs cancels consumption, waits drain_timeout, terminates; restart_jobs sends
the interrupted task again once and resumes consumption. Real redis-server, real celery workers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from celery import Celery

from shipit.adapters.celery import PAUSED_PREFIX
from shipit.config.model import JobsConfig
from shipit.errors import DeployFailed
from shipit.phases.adapters import drain_adapters, forget, recover_adapters, restart_adapters
from tests.adapters import queue_fixtures as qf
from tests.adapters.queue_fixtures import Markers, Workers, make_ctx, wait_for

job_dir, markers, queue_redis, workers = qf.job_dir, qf.markers, qf.queue_redis, qf.workers


def jobs_config(policy: str) -> JobsConfig:
    return JobsConfig.model_validate({
        "drain_timeout": 0.5, "drain_policy": policy, "grace": 2, "lease_ttl": 30,
        "adapters": [{"type": "celery", "name": "tasks", "broker_url_env": "SHIPIT_TEST_CELERY_URL",
                      "queues": ["work"], "control_timeout": 1.0}],
    })


def send(url: str, task: str, *args: object) -> str:
    app = Celery("client", broker=url, set_as_current=False)
    return str(app.send_task(task, args=list(args), queue="work").id)


def test_deploy_terminates_the_long_task_and_sends_it_again_once_after_the_switch(
    queue_redis: str, workers: Workers, markers: Markers, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHIPIT_TEST_CELERY_URL", queue_redis)
    workers.celery("w1", ["work"], pool="prefork")
    send(queue_redis, "long", str(markers.root), "j", 60)
    wait_for(lambda: markers.starts("j") == 1, 15, "the task to start")
    ctx, recorder = make_ctx(tmp_path, jobs=jobs_config("terminate"))
    conn = redis.Redis.from_url(queue_redis)
    try:
        drain_adapters(ctx)
        assert [e.data["item"]["name"] for e in recorder.of("job.stopped")] == ["long"]
        assert conn.smembers(f"{PAUSED_PREFIX}tasks") == {b"w1@test"}
        # A task sent mid-deploy waits in the broker: nobody consumes while the release switches.
        send(queue_redis, "quick", str(markers.root), "late")
        time.sleep(1.0)
        assert markers.starts("late") == 0
        restart_adapters(ctx)
        assert len(recorder.of("job.restarted")) == 1
        assert recover_adapters(ctx) == []  # a failure after the restart: nothing twice
    finally:
        forget(ctx)
    assert conn.smembers(f"{PAUSED_PREFIX}tasks") == set()
    wait_for(lambda: markers.starts("j") == 2, 20, "the task to run again")
    markers.release("j")
    wait_for(lambda: markers.done("j") and markers.done("late"), 20, "both tasks to finish")
    assert markers.starts("j") == 2 and markers.starts("late") == 1


def test_abort_policy_fails_the_deploy_and_the_failure_path_resumes_consumption(
    queue_redis: str, workers: Workers, markers: Markers, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHIPIT_TEST_CELERY_URL", queue_redis)
    workers.celery("w1", ["work"], pool="prefork")
    send(queue_redis, "long", str(markers.root), "a", 60)
    wait_for(lambda: markers.starts("a") == 1, 15, "the task to start")
    ctx, _ = make_ctx(tmp_path, jobs=jobs_config("abort"))
    conn = redis.Redis.from_url(queue_redis)
    try:
        with pytest.raises(DeployFailed, match="adapter tasks: still running"):
            drain_adapters(ctx)
        assert conn.smembers(f"{PAUSED_PREFIX}tasks") == {b"w1@test"}
        assert recover_adapters(ctx) == []
    finally:
        forget(ctx)
    assert conn.smembers(f"{PAUSED_PREFIX}tasks") == set()
    # The only worker (concurrency 1) is busy with the untouched task; once that finishes, a
    # task sent after the failed deploy runs: consumption was resumed.
    send(queue_redis, "quick", str(markers.root), "after")
    markers.release("a")
    wait_for(lambda: markers.done("a"), 20, "the untouched task to finish")
    wait_for(lambda: markers.done("after"), 20, "a task sent after the failed deploy to run")
    assert markers.starts("a") == 1
