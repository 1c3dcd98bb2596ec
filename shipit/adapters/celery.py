"""Celery: stop the stage's workers taking tasks while a deploy switches the code under them.

pause    `cancel_consumer(queue, destination=workers)` for every configured queue, waiting for
         each worker's reply (after it, the worker fetches no more messages). The workers are
         remembered in Redis (`shipit:celery:paused:<adapter>`) so that a later resume, from
         this deploy or the next one, gives them their queues back even if this deploy dies.
running  `inspect().active()` plus `reserved()` (prefetched before the pause: they would still
         start, on the old code) for the configured queues.
stop     active tasks: `revoke(id, terminate=True, signal=TERM)` sent to the worker running
         it, SIGKILL after `grace`; reserved ones: `revoke(id)` (the worker drops it unrun).
requeue  once per (task, deploy), claimed with SET NX on the broker's Redis. If the broker
         still holds a message with the task's id (back in the queue or unacked, e.g. an
         acks_late task whose worker process died with task_reject_on_worker_lost), the broker
         redelivers it and shipit sends nothing. Otherwise shipit sends a copy (same task name,
         args, kwargs, queue) under a new id derived from (task id, deploy id): a new id because
         the worker that got the revoke drops any message carrying the revoked id.
resume   `add_consumer(queue, destination=the remembered workers)`; idempotent.

Celery 5's `revoke(terminate=True)` acknowledges the message itself, acks_late or not, so a
task shipit terminates is NOT redelivered by the broker and the copy above is the only rerun.
Celery has no TTL on a cancelled consumer: a deploy killed outright leaves those workers idle
on the queue until a later `resume` (any deploy of the stage) or a worker restart.

Redis brokers only (the claim and the message lookup read Redis). The URL comes from the
environment variable `broker_url_env` (default CELERY_BROKER_URL) or `broker_url` and is never
printed with its password.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shipit.adapters.base import Adapter, WorkItem
from shipit.adapters.registry import register
from shipit.adapters.rq import redact_url, refuse_switch
from shipit.errors import ConfigError, DeployFailed, StoreUnavailable

if TYPE_CHECKING:
    from celery import Celery
    from redis import Redis

    from shipit.phases.context import DeployContext

PAUSED_PREFIX = "shipit:celery:paused:"
CLAIM_PREFIX = "shipit:celery:requeued:"
CLAIM_TTL = 7 * 24 * 3600
REQUEUE_HEADER = "shipit_requeue_of"
# Fixed namespace: the copy's id is a pure function of (task id, deploy id).
ID_NAMESPACE = uuid.UUID("6f1c2a7e-8d4b-4c55-9a63-3c1de0b0a5f1")
POLL = 0.1


def copy_id(task_id: str, deploy_id: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, f"{task_id}:{deploy_id}"))


class CeleryAdapter(Adapter):
    type = "celery"

    def __init__(
        self,
        name: str = "celery",
        *,
        broker_url: str | None = None,
        broker_url_env: str = "CELERY_BROKER_URL",
        queues: Sequence[str] = ("celery",),
        workers: Sequence[str] = (),
        control_timeout: float = 2.0,
        roles: Sequence[str] = (),
        drain_policy: str | None = None,
        drain_timeout: float | None = None,
        grace: float | None = None,
    ) -> None:
        super().__init__(name, roles=roles, drain_policy=drain_policy,
                         drain_timeout=drain_timeout, grace=grace)
        self.broker_url = broker_url
        self.broker_url_env = broker_url_env
        self.queues = tuple(queues) or ("celery",)
        self.workers = tuple(workers)
        self.control_timeout = control_timeout
        self._app: Celery | None = None
        self._redis: Redis | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> CeleryAdapter:
        return cls(
            cfg.name or cfg.type, broker_url=cfg.broker_url, broker_url_env=cfg.broker_url_env,
            queues=cfg.queues, workers=cfg.workers, control_timeout=cfg.control_timeout,
            roles=cfg.roles, drain_policy=cfg.drain_policy, drain_timeout=cfg.drain_timeout,
            grace=cfg.grace,
        )

    # -- connections ---------------------------------------------------------------------------
    def _url(self) -> str:
        url = self.broker_url or os.environ.get(self.broker_url_env)
        if not url:
            raise ConfigError(
                f"celery adapter {self.name!r}: environment variable {self.broker_url_env} is "
                f"not set (jobs.adapters: give broker_url_env or broker_url)"
            )
        if not url.startswith(("redis://", "rediss://")):
            raise ConfigError(
                f"celery adapter {self.name!r}: only Redis brokers are supported "
                f"(got {redact_url(url).split(':', 1)[0]}://)"
            )
        return url

    def redis(self) -> Redis:
        if self._redis is None:
            from redis import Redis
            from redis.exceptions import RedisError

            url = self._url()
            try:
                conn = Redis.from_url(url, socket_connect_timeout=5)
                conn.ping()
            except (RedisError, ValueError) as exc:
                raise StoreUnavailable(
                    f"celery adapter {self.name!r}: cannot reach the broker at "
                    f"{redact_url(url)}: {type(exc).__name__}"
                ) from None
            self._redis = conn
        return self._redis

    def app(self) -> Celery:
        if self._app is None:
            from celery import Celery

            self.redis()  # a clear error before Celery's own retries
            app = Celery(f"shipit-{self.name}", broker=self._url(), set_as_current=False)
            app.conf.broker_connection_retry = False
            app.conf.broker_connection_max_retries = 0
            self._app = app
        return self._app

    def _log(self, ctx: DeployContext, message: str, level: str = "info", **data: Any) -> None:
        ctx.bus.emit("log", phase="adapters", message=f"celery {self.name}: {message}",
                     level=level, adapter=self.name, **data)

    # -- which workers -------------------------------------------------------------------------
    def _inspect(self, destination: Sequence[str] | None) -> Any:
        dest = list(destination) if destination else None
        return self.app().control.inspect(destination=dest, timeout=self.control_timeout,
                                          limit=len(dest) if dest else None)

    def _consuming_workers(self) -> tuple[list[str], set[str]]:
        """Workers consuming one of our queues (among the configured ones, if any), and every
        worker that answered."""
        replies = self._inspect(self.workers or None).active_queues() or {}
        wanted = set(self.queues)
        consuming = sorted(w for w, qs in replies.items()
                           if wanted & {q.get("name") for q in qs or []})
        return consuming, set(replies)

    def _paused_key(self) -> str:
        return f"{PAUSED_PREFIX}{self.name}"

    def _paused_workers(self) -> list[str]:
        return sorted(w.decode() if isinstance(w, bytes) else w
                      for w in self.redis().smembers(self._paused_key()))

    # -- pause / resume ------------------------------------------------------------------------
    def pause(self, ctx: DeployContext) -> None:
        if ctx.dry_run:
            self._log(ctx, f"would stop consumers of {', '.join(self.queues)}")
            return
        workers, answered = self._consuming_workers()
        silent = sorted(set(self.workers) - answered)
        if silent:
            # A configured worker that does not answer may be a solo-pool worker busy with a
            # task (it reads control messages only between tasks): its work cannot be listed,
            # so the drain would be incomplete.
            raise DeployFailed(
                f"adapter {self.name}: worker(s) {', '.join(silent)} did not answer within "
                f"{self.control_timeout:g}s (down, or a solo-pool worker busy with a task)"
            )
        if not workers:
            self._log(ctx, f"no worker consumes {', '.join(self.queues)}", level="warning")
            return
        # Remembered before the cancel: a deploy that dies half way still knows whom to resume.
        self.redis().sadd(self._paused_key(), *workers)
        control = self.app().control
        for queue in self.queues:
            replies = control.cancel_consumer(queue, destination=workers, reply=True,
                                              timeout=self.control_timeout, limit=len(workers))
            answered = {name for reply in replies or [] for name in reply}
            missing = sorted(set(workers) - answered)
            if missing:
                self._log(ctx, f"no reply to cancel_consumer({queue}) from " + ", ".join(missing),
                          level="warning", workers=missing)

    def resume(self, ctx: DeployContext) -> None:
        if ctx.dry_run:
            self._log(ctx, "would restore consumers")
            return
        workers = self._paused_workers()
        if not workers:
            return
        control = self.app().control
        for queue in self.queues:
            control.add_consumer(queue, destination=workers, reply=True,
                                 timeout=self.control_timeout, limit=len(workers))
        self.redis().delete(self._paused_key())

    # -- running / stop / requeue --------------------------------------------------------------
    def running(self, ctx: DeployContext) -> list[WorkItem]:
        destination = self._paused_workers() or self.workers or None
        inspect = self._inspect(destination)
        items: list[WorkItem] = []
        for state, replies in (("active", inspect.active()), ("reserved", inspect.reserved())):
            for worker, tasks in sorted((replies or {}).items()):
                for task in tasks or []:
                    queue = (task.get("delivery_info") or {}).get("routing_key")
                    if queue in self.queues:
                        items.append(self._item(task, worker, queue, state))
        return items

    def _item(self, task: dict[str, Any], worker: str, queue: str, state: str) -> WorkItem:
        started = task.get("time_start")
        return WorkItem(
            id=str(task["id"]), adapter=self.name, name=str(task.get("name") or task["id"]),
            host="*",
            # time_start is wall-clock in Celery 5; anything else is not a date.
            started_at=float(started) if isinstance(started, int | float) and started > 1e9 else None,
            detail={"worker": worker, "queue": queue, "state": state,
                    "args": task.get("args") or [], "kwargs": task.get("kwargs") or {},
                    "worker_pid": task.get("worker_pid")},
        )

    def stop(self, ctx: DeployContext, items: Sequence[WorkItem], *, grace: float) -> list[WorkItem]:
        if ctx.dry_run:
            for item in items:
                self._log(ctx, f"would revoke task {item.id} ({item.name})")
            return []
        control = self.app().control
        for item in items:
            worker = [item.detail["worker"]] if item.detail.get("worker") else None
            if item.detail.get("state") == "reserved":
                control.revoke(item.id, destination=worker)
            else:
                control.revoke(item.id, destination=worker, terminate=True, signal="SIGTERM")
        still = self._wait_gone(ctx, items, grace)
        for item in still:
            worker = [item.detail["worker"]] if item.detail.get("worker") else None
            control.revoke(item.id, destination=worker, terminate=True, signal="SIGKILL")
        still = self._wait_gone(ctx, still, max(self.control_timeout, 5.0))
        left = {i.id for i in still}
        confirmed = [i for i in items if i.id not in left]
        if still:
            # e.g. a solo-pool worker: it reads the revoke only once the task has ended.
            refuse_switch(self, ctx, confirmed, still, "celery worker")
        return confirmed

    def _wait_gone(self, ctx: DeployContext, items: Sequence[WorkItem], timeout: float) -> list[WorkItem]:
        ids = {i.id for i in items}
        deadline = time.monotonic() + timeout
        while True:
            live = {i.id for i in self.running(ctx)} & ids
            if not live or time.monotonic() >= deadline:
                return [i for i in items if i.id in live]
            time.sleep(POLL)

    def broker_holds(self, task_id: str) -> bool:
        """Is a message for this task id still in one of our queues or unacked? Then the
        broker delivers it again and a copy would run the task twice."""
        conn = self.redis()
        for queue in self.queues:
            for raw in conn.lrange(queue, 0, -1):
                if _message_id(raw) == task_id:
                    return True
        for raw in conn.hvals("unacked"):
            try:
                message = json.loads(raw)[0]
            except (ValueError, IndexError, KeyError, TypeError):
                continue
            if _message_id(json.dumps(message)) == task_id:
                return True
        return False

    def requeue(self, ctx: DeployContext, items: Sequence[WorkItem]) -> list[WorkItem]:
        if ctx.dry_run:
            for item in items:
                self._log(ctx, f"would send task {item.name} again ({item.id})")
            return []
        conn = self.redis()
        done: list[WorkItem] = []
        for item in items:
            if not conn.set(f"{CLAIM_PREFIX}{item.id}:{ctx.deploy_id}", ctx.deploy_id,
                            nx=True, ex=CLAIM_TTL):
                continue  # this deploy requeued it already
            if self.broker_holds(item.id):
                self._log(ctx, f"task {item.id} is still with the broker, which delivers it "
                          "again; not sent twice", task=item.id)
                continue
            queue = item.detail.get("queue") or self.queues[0]
            self.app().send_task(
                item.name, args=list(item.detail.get("args") or []),
                kwargs=dict(item.detail.get("kwargs") or {}), queue=queue,
                task_id=copy_id(item.id, ctx.deploy_id), headers={REQUEUE_HEADER: item.id},
            )
            done.append(item)
        return done


def _message_id(raw: bytes | str) -> str | None:
    try:
        message = json.loads(raw)
    except (ValueError, TypeError):
        return None
    headers = message.get("headers") if isinstance(message, dict) else None
    return headers.get("id") if isinstance(headers, dict) else None


def _factory(cfg: Any, stage: Any) -> CeleryAdapter:
    return CeleryAdapter.from_config(cfg)


register("celery", _factory)
