"""drain_jobs: close the gate, wait for running jobs, stop them on the deadline, record them.

Per-host stores (file, sqlite): one `shipit agent drain` per host, in parallel; the agent also
restarts what a killed earlier deploy left (reconcile) before it closes, and renews the lease
while it waits. Central store (postgres): the same drain() runs here, once.

Afterwards a renewal thread keeps the lease alive (every ttl/3) until restart_jobs (or recovery)
stops it through ctx.jobs.stop_renewal.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from shipit.errors import ShipitError, UsageError
from shipit.gate.base import ACTIVE_STATES, Store
from shipit.hosts.base import Host
from shipit.hosts.fanout import FanOutError
from shipit.jobs.remote import AgentError, call_agent
from shipit.phases.context import DeployContext

PHASE = "drain_jobs"


def store_url(ctx: DeployContext) -> str:
    from shipit.gate.url import store_url_for

    return store_url_for(ctx.stage)


def is_central(ctx: DeployContext) -> bool:
    return ctx.stage.jobs.store == "postgres"


def central_dsn(ctx: DeployContext) -> str:
    """The DSN of the central store, from the env var jobs.dsn_env names. Never printed."""
    var = ctx.stage.jobs.dsn_env
    dsn = os.environ.get(var)
    if not dsn:
        raise UsageError(f"jobs.store is postgres but the environment variable {var} (jobs.dsn_env) is not set")
    return dsn


def open_central(ctx: DeployContext) -> Store:
    from shipit.errors import StoreUnavailable
    from shipit.gate.url import open_store

    try:
        return open_store(central_dsn(ctx))
    except ShipitError:
        raise
    except (OSError, ValueError) as exc:
        raise StoreUnavailable(f"cannot open the job store: {exc}") from None


def agent_opts(ctx: DeployContext, host: Host) -> dict[str, Any]:
    """What every agent op needs to find the store and restart jobs on this host."""
    jobs = ctx.stage.jobs
    opts: dict[str, Any] = {
        "store": store_url(ctx),
        "host": host.name,
        "actor": ctx.actor,
        "deploy_to": ctx.stage.deploy_to,
        "shipit_command": ctx.stage.shipit_command,
        "definitions": {k: v.model_dump() for k, v in jobs.definitions.items()},
        "max_restarts": jobs.max_restarts,
        "grace": jobs.grace,  # restarted supervisors get it as their default grace
    }
    if is_central(ctx):
        opts["dsn"] = central_dsn(ctx)
        opts["dsn_env"] = jobs.dsn_env
    return opts


def forward(ctx: DeployContext, host_name: str | None, phase: str = PHASE):
    """Agent events onto the bus, under the name the deploy knows the host by."""

    def on_event(kind: str, data: dict[str, Any]) -> None:
        data = dict(data)
        data.pop("host", None)
        message = str(data.pop("message", "") or "")
        ctx.bus.emit(kind, host=host_name, phase=phase, message=message, **data)

    return on_event


def _reason(ctx: DeployContext) -> str:
    return f"deploy {ctx.stage.name} ({ctx.deploy_id}) by {ctx.actor}"


def drain_jobs(ctx: DeployContext, *, lock_wait: float = 0.0) -> None:
    if ctx.dry_run:
        _dry_run(ctx)
        return
    if is_central(ctx):
        _drain_central(ctx, lock_wait)
    else:
        _drain_hosts(ctx, lock_wait)
    _start_renewal(ctx)


# -- per-host stores ------------------------------------------------------------------------------


def _drain_hosts(ctx: DeployContext, lock_wait: float) -> None:
    jobs = ctx.stage.jobs

    def one(host: Host) -> dict[str, Any]:
        opts = agent_opts(ctx, host) | {
            "holder": ctx.actor, "deploy_id": ctx.deploy_id, "reason": _reason(ctx),
            "ttl": jobs.lease_ttl, "timeout": jobs.drain_timeout, "policy": jobs.drain_policy,
            "grace": jobs.grace, "max_wait": jobs.max_wait, "lock_wait": lock_wait,
        }
        ctx.bus.emit("host.command", host=host.name, phase=PHASE,
                     command=f"{ctx.stage.shipit_command} agent drain", dry_run=False)
        return call_agent(host, ctx.stage.shipit_command, "drain", opts,
                          on_event=forward(ctx, host.name))

    try:
        results = ctx.fan_out(one)
    except FanOutError as exc:
        _undo_partial(ctx, exc)
        raise
    for name, res in results.items():
        _record(ctx, name, res["lease"], res.get("recorded") or [])


def _record(ctx: DeployContext, host: str, lease: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    ctx.jobs.leases[host] = lease
    for r in runs:
        # Which store the run lives in: per-host stores are reached through this host's agent.
        ctx.jobs.recorded.append({**r, "agent_host": host})


def _undo_partial(ctx: DeployContext, exc: FanOutError[dict[str, Any]]) -> None:
    """Some hosts closed, others did not: reopen the ones that closed and restart what they
    stopped, so the stage is as before; then the caller raises."""
    for name, res in exc.results.items():
        _record(ctx, name, res["lease"], res.get("recorded") or [])
    for name, err in exc.errors.items():
        ctx.bus.emit("host.failed", host=name, phase=PHASE, message=str(err))
        # A drain that gave up reopened its gate itself, but may have found dead jobs to restart.
        if isinstance(err, AgentError) and err.payload.get("recorded"):
            lease = err.payload.get("lease") or {}
            _record(ctx, name, lease, err.payload["recorded"])
    if ctx.jobs.leases:
        from shipit.phases.restart_jobs import recover_jobs

        recover_jobs(ctx)
        ctx.jobs.leases.clear()
        ctx.jobs.recorded.clear()


# -- central store --------------------------------------------------------------------------------


def _drain_central(ctx: DeployContext, lock_wait: float) -> None:
    from shipit.jobs.drain import DrainAborted, DrainInterrupted, drain

    jobs = ctx.stage.jobs
    store = open_central(ctx)
    try:
        emit = _central_emit(ctx)
        _reconcile_central(ctx, store, emit)
        try:
            result = drain(
                store, holder=ctx.actor, deploy_id=ctx.deploy_id, reason=_reason(ctx),
                ttl=jobs.lease_ttl, timeout=jobs.drain_timeout, policy=jobs.drain_policy,
                grace=jobs.grace, emit=emit, max_wait=jobs.max_wait, lock_wait=lock_wait,
            )
        except DrainAborted as exc:
            if exc.recorded:
                ctx.jobs.leases["*"] = exc.lease.to_dict()
                ctx.jobs.recorded.extend(r.to_dict() for r in exc.recorded)
            raise
        except DrainInterrupted as exc:
            # Ctrl-C / SIGTERM mid-drain: recovery reopens this lease and restarts what was
            # stopped so far, instead of both waiting for the TTL and the next deploy.
            ctx.jobs.leases["*"] = exc.lease.to_dict()
            ctx.jobs.recorded.extend(r.to_dict() for r in exc.recorded)
            raise
        ctx.jobs.leases["*"] = result.lease.to_dict()
        ctx.jobs.recorded.extend(r.to_dict() for r in result.recorded)
    finally:
        store.close()


def _central_emit(ctx: DeployContext):
    def emit(kind: str, *, host: str | None = None, message: str = "", **data: Any) -> None:
        ctx.bus.emit(kind, host=host, phase=PHASE, message=message, **data)

    return emit


def _reconcile_central(ctx: DeployContext, store: Store, emit: Any) -> None:
    """Leftovers of a killed deploy, restarted on their hosts through the agent before we close."""
    from shipit.errors import GateHeld
    from shipit.jobs.reconcile import leftovers

    lease = store.gate()
    if lease.is_closed(time.time()):
        return  # close_gate reports the holder
    runs = leftovers(store, wait=True)
    if not runs:
        return
    try:
        from shipit.phases.restart_jobs import restart_central_runs

        restart_central_runs(ctx, store, [r.to_dict() for r in runs], phase=PHASE,
                             reopen_epoch=lease.epoch if lease.state == "closed" else None)
    except GateHeld:
        return
    except ShipitError as exc:
        ctx.bus.emit("log", phase=PHASE, level="warning",
                     message=f"could not restart jobs left by an earlier deploy: {exc}")


# -- renewal, dry run -----------------------------------------------------------------------------


def _start_renewal(ctx: DeployContext) -> None:
    if not ctx.jobs.leases:
        return
    stop = threading.Event()
    every = ctx.stage.jobs.lease_ttl / 3
    thread = threading.Thread(target=_renew_loop, args=(ctx, stop, every), daemon=True,
                              name="shipit-renew")
    thread.start()

    def stop_renewal() -> None:
        stop.set()
        if thread is not threading.current_thread():
            thread.join(timeout=30)

    ctx.jobs.stop_renewal = stop_renewal


def _renew_loop(ctx: DeployContext, stop: threading.Event, every: float) -> None:
    lost: set[str] = set()
    ttl = ctx.stage.jobs.lease_ttl
    while not stop.wait(every):
        for name, lease in list(ctx.jobs.leases.items()):
            if name in lost or stop.is_set():
                continue
            try:
                renewed = _renew_one(ctx, name, int(lease["epoch"]), ttl)
                ctx.bus.emit("gate.renewed", host=None if name == "*" else name, phase=PHASE,
                             epoch=renewed["epoch"], holder=renewed.get("holder"),
                             expires_at=renewed.get("expires_at"))
            except ShipitError as exc:
                # Lost leases are not retried: another deploy may hold the gate now.
                lost.add(name)
                ctx.bus.emit("log", host=None if name == "*" else name, phase=PHASE,
                             message=f"could not renew the gate lease: {exc}", level="error")
            except Exception as exc:  # noqa: BLE001 - a transport hiccup; try again next round
                ctx.bus.emit("log", host=None if name == "*" else name, phase=PHASE,
                             message=f"lease renewal failed, retrying: {exc}", level="warning")


def _renew_one(ctx: DeployContext, name: str, epoch: int, ttl: float) -> dict[str, Any]:
    if name == "*":
        store = open_central(ctx)
        try:
            return store.renew(epoch, ttl).to_dict()
        finally:
            store.close()
    host = next(h for h in ctx.hosts if h.name == name)
    res = call_agent(host, ctx.stage.shipit_command, "renew",
                     agent_opts(ctx, host) | {"epoch": epoch, "ttl": ttl})
    return dict(res["lease"])


def _dry_run(ctx: DeployContext) -> None:
    """Say what would be drained; change nothing (the agent opens stores read-only)."""
    jobs = ctx.stage.jobs
    if is_central(ctx):
        store = open_central(ctx)
        try:
            from shipit.jobs.drain import run_info

            for run in store.list_runs(states=ACTIVE_STATES):
                ctx.bus.emit("job.running", host=run.host, phase=PHASE, run=run_info(run),
                             dry_run=True)
        finally:
            store.close()
        return

    def one(host: Host) -> None:
        ctx.bus.emit("host.command", host=host.name, phase=PHASE,
                     command=f"{ctx.stage.shipit_command} agent drain", dry_run=True,
                     policy=jobs.drain_policy, timeout=jobs.drain_timeout)
        try:
            res = call_agent(host, ctx.stage.shipit_command, "status",
                             agent_opts(ctx, host) | {"readonly": True})
        except ShipitError as exc:
            ctx.bus.emit("log", host=host.name, phase=PHASE, level="warning",
                         message=f"dry run: cannot list jobs: {exc}")
            return
        for run in res.get("runs") or []:
            if run.get("state") in ACTIVE_STATES:
                ctx.bus.emit("job.running", host=host.name, phase=PHASE, run=run, dry_run=True)

    ctx.fan_out(one)
