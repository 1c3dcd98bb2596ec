"""The interface every job-system adapter implements (cron, systemd, command, RQ, Celery...).

The gate holds jobs started through `shipit job run`. Work that another system starts (a queue's
workers, systemd timers, a Kubernetes CronJob) needs that system told to hold still; an adapter
is that conversation. The adapter phase (shipit/phases/adapters.py) drives it:

    drain_jobs (after the gate closed):  pause -> wait until running() is empty or the
                                         drain_timeout passes -> stop per drain_policy -> remember
    restart_jobs (or the failure path):  resume -> requeue the remembered items, exactly once

Contract for implementers:
- `pause` stops NEW work starting. Where the system supports it, give the pause a TTL
  (`ctx.stage.jobs.lease_ttl` or longer) so a deploy killed outright cannot leave work paused.
- `resume` must be idempotent: the failure path calls it unconditionally, possibly after a
  partial pause, possibly twice.
- `requeue` restarts interrupted work. The phase calls it at most once per item per deploy;
  adapters whose system offers an idempotency key should use `WorkItem.id` as it.
- Commands are built by pure functions (no I/O; tests assert exact strings; every user string
  through shlex.quote) and run with `run_command()` below, which emits `host.command` and does
  nothing on a dry run.
- Adapters never print; they emit events on `ctx.bus`. The phase emits adapter.paused,
  adapter.resumed, job.stopped and job.restarted (data: adapter=<name>).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from shipit.hosts.base import CommandResult, Host

if TYPE_CHECKING:
    from shipit.phases.context import DeployContext


@dataclass(frozen=True)
class WorkItem:
    """One unit of work an adapter found running (a systemd service, a queue job...).

    id: stable within the job system (unit name, job id); also the requeue idempotency key.
    adapter: the adapter's configured name. host: the shipit host name it runs on ("*" for a
    central system such as a queue broker). detail: whatever the adapter needs to stop and
    requeue it (JSON-able: it is recorded in events and history).
    """

    id: str
    adapter: str
    name: str
    host: str
    started_at: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkItem:
        return cls(
            id=str(d["id"]), adapter=str(d["adapter"]), name=str(d.get("name") or d["id"]),
            host=str(d.get("host") or "*"), started_at=d.get("started_at"),
            detail=dict(d.get("detail") or {}),
        )


class Adapter(ABC):
    """One configured job system. `name` is unique per stage (defaults to the type)."""

    #: the `type:` value in shipit.yaml
    type: str = ""

    def __init__(self, name: str, *, roles: Sequence[str] = (), drain_policy: str | None = None,
                 drain_timeout: float | None = None, grace: float | None = None) -> None:
        self.name = name
        self.roles = tuple(roles)
        # None: take the stage's jobs.* value
        self.drain_policy = drain_policy
        self.drain_timeout = drain_timeout
        self.grace = grace

    # -- the five operations ------------------------------------------------------------------
    @abstractmethod
    def pause(self, ctx: DeployContext) -> None:
        """Stop new work starting (with a TTL where the system supports one)."""

    @abstractmethod
    def running(self, ctx: DeployContext) -> list[WorkItem]:
        """Work running right now (after pause: the work the deploy waits for)."""

    @abstractmethod
    def stop(self, ctx: DeployContext, items: Sequence[WorkItem], *, grace: float) -> list[WorkItem]:
        """Stop these items (graceful first, forced after `grace` seconds where the system
        allows). Returns the items that were stopped and so need a requeue."""

    @abstractmethod
    def resume(self, ctx: DeployContext) -> None:
        """Let new work start again. Idempotent; safe after a partial or no pause."""

    def requeue(self, ctx: DeployContext, items: Sequence[WorkItem]) -> list[WorkItem]:
        """Start interrupted work again on the new code. Returns the items requeued. The default
        does nothing: systems that restart their own work on resume (systemd timers, cron)
        need no more."""
        return []

    # -- helpers ------------------------------------------------------------------------------
    def wait(self, ctx: DeployContext, items: Sequence[WorkItem], timeout: float) -> list[WorkItem]:
        """Wait until none of `items` is running or `timeout` passes; return those still
        running. Polls `running()` with a growing interval (external systems offer no common
        wake-up); adapters with an event source should override."""
        ids = {(i.host, i.id) for i in items}
        deadline = time.monotonic() + timeout
        delay = 0.05
        still = [i for i in self.running(ctx) if (i.host, i.id) in ids]
        while still and time.monotonic() < deadline:
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 2.0)
            still = [i for i in self.running(ctx) if (i.host, i.id) in ids]
        return still

    def hosts(self, ctx: DeployContext) -> list[Host]:
        """The stage's hosts this adapter works on (all, or those with one of `roles`)."""
        if not self.roles:
            return list(ctx.hosts)
        wanted = set(self.roles)
        return [h for h in ctx.hosts if wanted & set(h.spec.roles)]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def run_command(
    ctx: DeployContext, host: Host, command: str, *, phase: str = "adapters", check: bool = True,
    timeout: float | None = None, mutating: bool = True,
) -> CommandResult | None:
    """Emit `host.command`, then run it. On a dry run a mutating command is only announced
    (returns None); read-only ones (`mutating=False`) still run so a dry run can list work."""
    from shipit.phases.common import emit_command

    emit_command(ctx, host.name, phase, command)
    if ctx.dry_run and mutating:
        return None
    return host.run(command, check=check, timeout=timeout)
