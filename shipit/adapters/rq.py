"""RQ: hold a Redis Queue's workers still while a deploy switches the code under them.

pause    `rq suspend` with a TTL, renewed every TTL/3 by this process: a deploy killed outright
         stops renewing and the workers resume on their own when the TTL runs out. Then idle
         workers are woken (see below) and pause returns once every worker of the queues is
         suspended or busy, so that `running()` afterwards lists all the work that can run.
running  the StartedJobRegistry of each configured queue.
stop     `send_stop_job_command`: RQ kills the work horse (SIGKILL, RQ has no graceful stop)
         and files the job in the FailedJobRegistry as STOPPED. Only jobs confirmed STOPPED
         are returned for a requeue.
requeue  moves a stopped job from the FailedJobRegistry back to the FRONT of its queue, once
         per deploy: a Redis SET NX claim keyed by (job, deploy) and the registry's own ZREM
         make a second requeue (the same deploy retrying, or a racing one) a no-op. The job's
         meta records who requeued it.
resume   `rq resume` - unless the workers were suspended by hand before the deploy (a
         suspension without a TTL), which shipit leaves in place.

Why the wake-up: `rq suspend` only sets a key that a worker reads at the top of its loop. An
idle worker sits in a blocking pop for up to `worker_ttl - 15` seconds (405 by default) and
would start a job enqueued after the suspension on the old code. shipit pushes a no-op job
(`time.time`, result not kept) at the front of the queue for each idle worker; popping it
brings the worker back to the top of its loop, where it sees the suspension. Leftover wake-ups
are removed before pause returns.

The deploy machine talks to Redis directly (like the central PostgreSQL store): the URL comes
from the environment variable `url_env` (default REDIS_URL) or `url`, and is never printed
with its password.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from shipit.adapters.base import Adapter, WorkItem
from shipit.adapters.registry import register
from shipit.errors import ConfigError, DeployFailed, StoreUnavailable

if TYPE_CHECKING:
    from redis import Redis

    from shipit.phases.context import DeployContext

SUSPEND_KEY = "rq:suspended"  # rq.suspension.WORKERS_SUSPENDED
CLAIM_PREFIX = "shipit:rq:requeued:"
CLAIM_TTL = 7 * 24 * 3600  # long enough to outlive any deploy that could retry a requeue
WAKEUP_META = "shipit_wakeup"
REQUEUE_META = "shipit"
SAFE_STATES = frozenset({"suspended", "busy"})
POLL = 0.05


def redact_url(url: str) -> str:
    """The URL with its password replaced, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable redis url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class RQAdapter(Adapter):
    type = "rq"

    def __init__(
        self,
        name: str = "rq",
        *,
        url: str | None = None,
        url_env: str = "REDIS_URL",
        queues: Sequence[str] = ("default",),
        suspend_ttl: float | None = None,
        wake_timeout: float = 10.0,
        roles: Sequence[str] = (),
        drain_policy: str | None = None,
        drain_timeout: float | None = None,
        grace: float | None = None,
    ) -> None:
        super().__init__(name, roles=roles, drain_policy=drain_policy,
                         drain_timeout=drain_timeout, grace=grace)
        self.url = url
        self.url_env = url_env
        self.queues = tuple(queues) or ("default",)
        self.suspend_ttl = suspend_ttl
        self.wake_timeout = wake_timeout
        self._conn: Redis | None = None
        self._renewer: threading.Thread | None = None
        self._stop_renewing = threading.Event()
        self._manual_suspension = False
        self._paused = False

    @classmethod
    def from_config(cls, cfg: Any) -> RQAdapter:
        """Build from an RQAdapterConfig (shipit/config/model.py)."""
        return cls(
            cfg.name or cfg.type, url=cfg.url, url_env=cfg.url_env, queues=cfg.queues,
            suspend_ttl=cfg.suspend_ttl, wake_timeout=cfg.wake_timeout, roles=cfg.roles,
            drain_policy=cfg.drain_policy, drain_timeout=cfg.drain_timeout, grace=cfg.grace,
        )

    # -- connection ----------------------------------------------------------------------------
    def _url(self) -> str:
        if self.url:
            return self.url
        url = os.environ.get(self.url_env)
        if not url:
            raise ConfigError(
                f"rq adapter {self.name!r}: environment variable {self.url_env} is not set "
                f"(jobs.adapters: give url_env or url)"
            )
        return url

    def connection(self) -> Redis:
        if self._conn is None:
            from redis import Redis
            from redis.exceptions import RedisError

            url = self._url()
            try:
                conn = Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
                conn.ping()
            except (RedisError, ValueError) as exc:
                raise StoreUnavailable(
                    f"rq adapter {self.name!r}: cannot reach Redis at {redact_url(url)}: "
                    f"{type(exc).__name__}"
                ) from None
            self._conn = conn
        return self._conn

    def _log(self, ctx: DeployContext, message: str, level: str = "info", **data: Any) -> None:
        ctx.bus.emit("log", phase="adapters", message=f"rq {self.name}: {message}",
                     level=level, adapter=self.name, **data)

    def _ttl(self, ctx: DeployContext) -> int:
        ttl = self.suspend_ttl if self.suspend_ttl is not None else ctx.stage.jobs.lease_ttl
        return max(1, int(round(ttl)))

    # -- pause / resume ------------------------------------------------------------------------
    def pause(self, ctx: DeployContext) -> None:
        ttl = self._ttl(ctx)
        if ctx.dry_run:
            self._log(ctx, f"would suspend workers of {', '.join(self.queues)} for {ttl}s (renewed)")
            return
        conn = self.connection()
        # -1: the key exists without expiry, i.e. someone ran `rq suspend` by hand.
        if conn.ttl(SUSPEND_KEY) == -1:
            self._manual_suspension = True
            self._log(ctx, "workers were already suspended by hand; shipit leaves that in place",
                      level="warning")
        else:
            conn.set(SUSPEND_KEY, 1, ex=ttl)
            self._start_renewal(ttl)
        self._paused = True
        self._wake_idle_workers(ctx)

    def resume(self, ctx: DeployContext) -> None:
        self._halt_renewal()
        if ctx.dry_run:
            self._log(ctx, "would resume workers")
            return
        conn = self.connection()
        self._remove_wakeups(conn)
        if self._manual_suspension:
            self._log(ctx, "leaving the suspension made by hand in place", level="warning")
        elif conn.ttl(SUSPEND_KEY) != -1:
            conn.delete(SUSPEND_KEY)
        self._paused = False

    def _start_renewal(self, ttl: int) -> None:
        self._halt_renewal()
        self._stop_renewing = threading.Event()
        stop = self._stop_renewing
        conn = self.connection()

        def renew() -> None:
            from redis.exceptions import RedisError

            # Re-SET rather than EXPIRE: a `rq resume` typed during the deploy must not let
            # jobs start on the code being replaced.
            while not stop.wait(max(ttl / 3, 0.2)):
                try:
                    conn.set(SUSPEND_KEY, 1, ex=ttl)
                except RedisError:
                    continue  # Redis away for a moment: the TTL still bounds the pause

        self._renewer = threading.Thread(target=renew, name=f"rq-suspend-{self.name}", daemon=True)
        self._renewer.start()

    def _halt_renewal(self) -> None:
        self._stop_renewing.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
            self._renewer = None

    # -- the wake-up barrier -------------------------------------------------------------------
    def _workers(self, conn: Redis) -> list[Any]:
        from rq import Worker

        wanted = set(self.queues)
        return [w for w in Worker.all(connection=conn) if wanted & set(w.queue_names())]

    def _wake_idle_workers(self, ctx: DeployContext) -> None:
        from rq import Queue

        conn = self.connection()
        deadline = time.monotonic() + self.wake_timeout
        pending: dict[str, list[str]] = {q: [] for q in self.queues}
        unsafe: list[Any] = []
        try:
            while True:
                unsafe = [w for w in self._workers(conn) if w.get_state() not in SAFE_STATES]
                if not unsafe or time.monotonic() >= deadline:
                    break
                for qname in pending:
                    key = Queue(qname, connection=conn).key
                    pending[qname] = [j for j in pending[qname] if conn.lpos(key, j) is not None]
                need: dict[str, int] = {}
                for w in unsafe:
                    first = next(q for q in w.queue_names() if q in pending)
                    need[first] = need.get(first, 0) + 1
                for qname, count in need.items():
                    for _ in range(count - len(pending[qname])):
                        pending[qname].append(self._push_wakeup(conn, qname))
                time.sleep(POLL)
        finally:
            self._remove_wakeups(conn)
        if unsafe:
            self._log(
                ctx, "workers did not confirm the suspension in time (dead, or blocked in a "
                "long call): " + ", ".join(w.name for w in unsafe), level="warning",
                workers=[w.name for w in unsafe],
            )

    def _push_wakeup(self, conn: Redis, qname: str) -> str:
        from rq import Queue

        job = Queue(qname, connection=conn).enqueue(
            "time.time", job_id=f"shipit-wakeup-{uuid.uuid4().hex}", at_front=True,
            result_ttl=0, failure_ttl=60, ttl=max(60, int(self.wake_timeout) * 2),
            description="shipit: wake the worker so it sees the suspension",
            meta={WAKEUP_META: True},
        )
        return str(job.id)

    def _remove_wakeups(self, conn: Redis) -> None:
        from rq import Queue

        for qname in self.queues:
            queue = Queue(qname, connection=conn)
            for job_id in queue.get_job_ids():
                if job_id.startswith("shipit-wakeup-"):
                    queue.remove(job_id)
                    conn.delete(f"rq:job:{job_id}")

    # -- running / stop / requeue --------------------------------------------------------------
    def running(self, ctx: DeployContext) -> list[WorkItem]:
        from rq import Queue
        from rq.job import Job
        from rq.registry import StartedJobRegistry

        conn = self.connection()
        items: list[WorkItem] = []
        for qname in self.queues:
            registry = StartedJobRegistry(queue=Queue(qname, connection=conn))
            ids = [i for i in registry.get_job_ids() if not i.startswith("shipit-wakeup-")]
            for job in Job.fetch_many(ids, connection=conn):
                if job is None or job.meta.get(WAKEUP_META):
                    continue
                items.append(self._item(job, qname))
        return items

    def _item(self, job: Any, qname: str) -> WorkItem:
        started = job.started_at.timestamp() if job.started_at else None
        return WorkItem(
            id=str(job.id), adapter=self.name, name=job.func_name or str(job.id), host="*",
            started_at=started,
            detail={"queue": qname, "worker": job.worker_name, "func": job.func_name},
        )

    def stop(self, ctx: DeployContext, items: Sequence[WorkItem], *, grace: float) -> list[WorkItem]:
        from rq.command import send_stop_job_command
        from rq.exceptions import InvalidJobOperation, NoSuchJobError

        if ctx.dry_run:
            for item in items:
                self._log(ctx, f"would stop job {item.id} ({item.name})")
            return []
        conn = self.connection()
        asked: list[WorkItem] = []
        for item in items:
            try:
                send_stop_job_command(conn, item.id)
                asked.append(item)
            except (InvalidJobOperation, NoSuchJobError):
                continue  # finished (or vanished) between running() and now: nothing to stop
        # RQ kills at once; `grace` only bounds how long we wait for the worker to confirm.
        deadline = time.monotonic() + max(grace, 5.0)
        stopped: dict[str, WorkItem] = {}
        waiting = {i.id: i for i in asked}
        while waiting and time.monotonic() < deadline:
            for job_id, item in list(waiting.items()):
                status = self._status(conn, job_id)
                if status == "stopped":
                    stopped[job_id] = item
                if status != "started":
                    del waiting[job_id]
            if waiting:
                time.sleep(POLL)
        confirmed = [i for i in asked if i.id in stopped]
        if waiting:
            refuse_switch(self, ctx, confirmed, list(waiting.values()), "rq worker")
        return confirmed

    @staticmethod
    def _status(conn: Redis, job_id: str) -> str | None:
        raw = conn.hget(f"rq:job:{job_id}", "status")
        return raw.decode() if isinstance(raw, bytes) else raw

    def requeue(self, ctx: DeployContext, items: Sequence[WorkItem]) -> list[WorkItem]:
        from rq import Queue
        from rq.exceptions import InvalidJobOperation, NoSuchJobError
        from rq.job import Job
        from rq.registry import FailedJobRegistry

        if ctx.dry_run:
            for item in items:
                self._log(ctx, f"would requeue job {item.id} ({item.name})")
            return []
        conn = self.connection()
        done: list[WorkItem] = []
        for item in items:
            claim = f"{CLAIM_PREFIX}{item.id}:{ctx.deploy_id}"
            if not conn.set(claim, ctx.deploy_id, nx=True, ex=CLAIM_TTL):
                continue  # this deploy requeued it already
            try:
                job = Job.fetch(item.id, connection=conn)
            except NoSuchJobError:
                self._log(ctx, f"job {item.id} is gone; nothing to requeue", level="warning")
                continue
            qname = job.origin or item.detail.get("queue") or self.queues[0]
            registry = FailedJobRegistry(queue=Queue(qname, connection=conn))
            try:
                # ZREM inside requeue: only one caller can move the job out of the registry.
                registry.requeue(job, at_front=True)
            except InvalidJobOperation:
                continue  # not in the failed registry (requeued by hand, or it finished)
            marker = dict(job.meta.get(REQUEUE_META) or {})
            marker.update(requeued_by=ctx.deploy_id, requeues=int(marker.get("requeues", 0)) + 1)
            job.meta[REQUEUE_META] = marker
            job.save_meta()
            done.append(item)
        return done


def refuse_switch(adapter: Adapter, ctx: DeployContext, confirmed: Sequence[WorkItem],
                  stuck: Sequence[WorkItem], what: str) -> None:
    """Some work ignored its stop: the release must not switch under it. The phase only
    remembers what stop() returns, and stop() is about to raise, so requeue the work that did
    stop now (the claims keep it to once; it waits for the resume of the failure path)."""
    if confirmed:
        adapter.requeue(ctx, confirmed)
    ids = ", ".join(f"{i.name} ({i.id})" for i in stuck)
    raise DeployFailed(
        f"adapter {adapter.name}: the {what} did not confirm the stop of {ids}; "
        "not switching under running work"
    )


def _factory(cfg: Any, stage: Any) -> RQAdapter:
    return RQAdapter.from_config(cfg)


register("rq", _factory)
