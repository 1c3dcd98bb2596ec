"""The adapter phase: job systems shipit does not start itself (see shipit/adapters/base.py).

drain_adapters runs inside drain_jobs, after the gate closed: pause every adapter, list what is
running, wait (sharing one deadline per adapter, so waits do not add up), then per policy fail
(abort, or wait past max_wait) or stop what is left, and remember the stopped items.
restart_adapters runs inside restart_jobs: resume every adapter (reverse order), then requeue the
remembered items, each at most once per deploy. recover_adapters is the failure path: it always
resumes every adapter the drain touched (a failed deploy never leaves work paused) and requeues
what was stopped; it never raises, it reports.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from shipit.adapters.base import Adapter, WorkItem
from shipit.adapters.registry import build_adapters
from shipit.errors import DeployFailed
from shipit.phases.common import mask
from shipit.phases.context import DeployContext

DRAIN = "drain_jobs"
RESTART = "restart_jobs"
# How long past the grace a stopped item may take to disappear from `running()`.
STOP_MARGIN = 5.0


@dataclass
class AdapterState:
    adapters: list[Adapter] = field(default_factory=list)
    # Adapters whose pause was attempted (even if it failed half way): these get a resume.
    touched: list[Adapter] = field(default_factory=list)
    stopped: list[WorkItem] = field(default_factory=list)
    requeued: set[tuple[str, str, str]] = field(default_factory=set)
    resumed: bool = False


_states: dict[str, AdapterState] = {}
_lock = threading.Lock()


def adapter_state(ctx: DeployContext) -> AdapterState | None:
    with _lock:
        return _states.get(ctx.deploy_id)


def forget(ctx: DeployContext) -> None:
    with _lock:
        _states.pop(ctx.deploy_id, None)


def _key(item: WorkItem) -> tuple[str, str, str]:
    return (item.adapter, item.host, item.id)


def drain_adapters(ctx: DeployContext) -> None:
    if not ctx.stage.jobs.adapters:
        return
    st = AdapterState(adapters=build_adapters(ctx.stage))
    with _lock:
        _states[ctx.deploy_id] = st
    jobs = ctx.stage.jobs
    for adapter in st.adapters:
        st.touched.append(adapter)
        adapter.pause(ctx)
        ctx.bus.emit("adapter.paused", phase=DRAIN, adapter=adapter.name, type=adapter.type,
                     dry_run=ctx.dry_run, message=f"{adapter.name}: no new work starts")
    start = time.monotonic()
    found: dict[str, list[WorkItem]] = {}
    for adapter in st.adapters:
        items = adapter.running(ctx)
        found[adapter.name] = items
        for item in items:
            ctx.bus.emit("job.running", host=_host(item), phase=DRAIN, **_facts(adapter, item),
                         message=f"{adapter.name}: {item.name} is running")
    if ctx.dry_run:
        return
    for adapter in st.adapters:
        items = found[adapter.name]
        if not items:
            continue
        policy = adapter.drain_policy or jobs.drain_policy
        timeout = jobs.drain_timeout if adapter.drain_timeout is None else adapter.drain_timeout
        grace = jobs.grace if adapter.grace is None else adapter.grace
        limit = max(timeout, jobs.max_wait) if policy == "wait" else timeout
        still = adapter.wait(ctx, items, max(0.0, start + limit - time.monotonic()))
        _report_finished(ctx, adapter, items, still)
        if not still:
            continue
        names = ", ".join(sorted({i.name for i in still}))
        if policy in ("abort", "wait"):
            which = "max_wait" if policy == "wait" else "drain_timeout"
            raise DeployFailed(
                f"adapter {adapter.name}: still running after {which} {limit:g}s "
                f"(drain_policy {policy}): {names}"
            )
        stopped = adapter.stop(ctx, still, grace=grace)
        st.stopped.extend(stopped)
        for item in stopped:
            ctx.bus.emit("job.stopped", host=_host(item), phase=DRAIN, **_facts(adapter, item),
                         message=f"{adapter.name}: stopped {item.name}")
        # The release must not switch under work that ignored its stop.
        left = adapter.wait(ctx, stopped, grace + STOP_MARGIN) if stopped else []
        if left:
            raise DeployFailed(
                f"adapter {adapter.name}: still running {grace + STOP_MARGIN:g}s after the stop: "
                + ", ".join(sorted({i.name for i in left}))
            )


def _report_finished(ctx: DeployContext, adapter: Adapter, items: list[WorkItem], still: list[WorkItem]) -> None:
    left = {_key(i) for i in still}
    for item in items:
        if _key(item) not in left:
            ctx.bus.emit("job.finished", host=_host(item), phase=DRAIN, **_facts(adapter, item),
                         message=f"{adapter.name}: {item.name} finished")


def _facts(adapter: Adapter, item: WorkItem) -> dict[str, object]:
    """Event data for one item: `job` / `run_id` as the renderers and notifications read them
    for `shipit job run` runs, plus the adapter and the whole item."""
    return {"adapter": adapter.name, "job": item.name, "run_id": item.id, "item": item.to_dict()}


def _host(item: WorkItem) -> str | None:
    return None if item.host == "*" else item.host


def _resume_and_requeue(ctx: DeployContext, st: AdapterState, phase: str) -> list[str]:
    """Try every adapter, whatever the others do; return the problems (masked)."""
    problems: list[str] = []
    for adapter in reversed(st.touched):
        try:
            adapter.resume(ctx)
            ctx.bus.emit("adapter.resumed", phase=phase, adapter=adapter.name, type=adapter.type,
                         dry_run=ctx.dry_run, message=f"{adapter.name}: work may start again")
        except Exception as exc:  # noqa: BLE001 - one adapter's failure must not keep others paused
            problems.append(mask(ctx, f"adapter {adapter.name}: resume failed: {exc}"))
    st.resumed = True
    for adapter in st.touched:
        todo = [i for i in st.stopped if i.adapter == adapter.name and _key(i) not in st.requeued]
        if not todo:
            continue
        # Claimed before the call: a requeue that fails half way is reported, never repeated,
        # because a second attempt could run the same work twice.
        st.requeued.update(_key(i) for i in todo)
        try:
            done = adapter.requeue(ctx, todo)
        except Exception as exc:  # noqa: BLE001 - reported; other adapters still requeue
            problems.append(mask(ctx, f"adapter {adapter.name}: requeue failed: {exc}"))
            continue
        for item in done:
            ctx.bus.emit("job.restarted", host=_host(item), phase=phase, **_facts(adapter, item),
                         message=f"{adapter.name}: requeued {item.name}")
    return problems


def restart_adapters(ctx: DeployContext) -> None:
    st = adapter_state(ctx)
    if st is None:
        return
    problems = _resume_and_requeue(ctx, st, RESTART)
    if not problems:
        forget(ctx)
    else:
        # The state stays: the failure path resumes again (idempotent) and skips what was requeued.
        for p in problems:
            ctx.bus.emit("host.failed", phase=RESTART, message=p)
        raise DeployFailed("; ".join(problems))


def recover_adapters(ctx: DeployContext) -> list[str]:
    """The failure path: resume everything the drain touched, requeue what it stopped."""
    st = adapter_state(ctx)
    if st is None:
        return []
    try:
        return _resume_and_requeue(ctx, st, "rollback")
    except Exception as exc:  # noqa: BLE001 - the failure path reports, it never raises
        return [mask(ctx, f"adapters: {exc}")]
    finally:
        forget(ctx)


def drain_jobs(ctx: DeployContext, *, lock_wait: float = 0.0) -> None:
    """The drain_jobs phase with adapters: the gate first (so `shipit job run` work is held and
    listed), then the job systems shipit does not start itself."""
    from shipit.phases import drain_jobs as drain_mod

    drain_mod.drain_jobs(ctx, lock_wait=lock_wait)
    drain_adapters(ctx)


def restart_jobs(ctx: DeployContext) -> None:
    """The restart_jobs phase with adapters: reopen and restart runs, then resume and requeue."""
    from shipit.phases import restart_jobs as restart_mod

    restart_mod.restart_jobs(ctx)
    restart_adapters(ctx)
