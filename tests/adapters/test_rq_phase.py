"""RQ through the deploy's adapter phase (shipit/phases/adapters.py), configured as in
shipit.yaml: drain_jobs pauses, waits drain_timeout, stops; restart_jobs resumes and requeues."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from rq import Queue

from shipit.adapters.rq import SUSPEND_KEY
from shipit.config.model import JobsConfig
from shipit.errors import DeployFailed
from shipit.phases.adapters import drain_adapters, forget, recover_adapters, restart_adapters
from tests.adapters import queue_fixtures as qf
from tests.adapters.queue_fixtures import Markers, Workers, make_ctx, wait_for

job_dir, markers, queue_redis, workers = qf.job_dir, qf.markers, qf.queue_redis, qf.workers


def jobs_config(policy: str) -> JobsConfig:
    return JobsConfig.model_validate({
        "drain_timeout": 0.5, "drain_policy": policy, "grace": 1, "lease_ttl": 30,
        "adapters": [{"type": "rq", "name": "reports", "url_env": "SHIPIT_TEST_RQ_URL",
                      "queues": ["work"]}],
    })


def test_deploy_stops_the_long_job_and_restarts_it_once_after_the_switch(
    queue_redis: str, workers: Workers, markers: Markers, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHIPIT_TEST_RQ_URL", queue_redis)
    workers.rq("w1", ["work"])
    conn = redis.Redis.from_url(queue_redis)
    Queue("work", connection=conn).enqueue("shipit_queue_jobs.long_job", str(markers.root), "j", 60)
    wait_for(lambda: markers.starts("j") == 1, 15, "the job to start")
    ctx, recorder = make_ctx(tmp_path, jobs=jobs_config("terminate"))
    try:
        drain_adapters(ctx)
        assert [e.data["item"]["name"] for e in recorder.of("job.stopped")] == [
            "shipit_queue_jobs.long_job"]
        assert conn.exists(SUSPEND_KEY) == 1
        restart_adapters(ctx)
        assert len(recorder.of("job.restarted")) == 1
        assert recover_adapters(ctx) == []  # a failure after the restart: nothing twice
    finally:
        forget(ctx)
    assert conn.exists(SUSPEND_KEY) == 0
    wait_for(lambda: markers.starts("j") == 2, 15, "the job to run again")
    markers.release("j")
    wait_for(lambda: markers.done("j"), 15, "the job to finish")
    assert markers.starts("j") == 2


def test_abort_policy_fails_the_deploy_and_the_failure_path_resumes_the_workers(
    queue_redis: str, workers: Workers, markers: Markers, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHIPIT_TEST_RQ_URL", queue_redis)
    workers.rq("w1", ["work"])
    conn = redis.Redis.from_url(queue_redis)
    Queue("work", connection=conn).enqueue("shipit_queue_jobs.long_job", str(markers.root), "a", 60)
    wait_for(lambda: markers.starts("a") == 1, 15, "the job to start")
    ctx, _ = make_ctx(tmp_path, jobs=jobs_config("abort"))
    try:
        with pytest.raises(DeployFailed, match="adapter reports: still running"):
            drain_adapters(ctx)
        assert conn.exists(SUSPEND_KEY) == 1
        assert recover_adapters(ctx) == []
    finally:
        forget(ctx)
    assert conn.exists(SUSPEND_KEY) == 0
    markers.release("a")
    wait_for(lambda: markers.done("a"), 15, "the untouched job to finish")
    assert markers.starts("a") == 1
