"""restart_jobs: reopen the gate and restart every recorded job exactly once on the live code.

Per-host stores: one `shipit agent restart` per host that was drained (it reopens that host's
gate at our epoch and restarts that host's recorded runs). Central store: reopen here, then one
`agent restart` per host that has runs to restart (jobs run on hosts, the store does not).
Every restart is claimed in the store first, so running this twice (restart, then recovery after
a later failure) never starts a job twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shipit.errors import DeployFailed, FencingError, ShipitError
from shipit.gate.base import Store
from shipit.history import agent_option, forget_final, write_uncalled
from shipit.hosts.base import Host
from shipit.jobs.remote import call_agent
from shipit.phases.context import DeployContext
from shipit.phases.drain_jobs import agent_opts, forward, is_central, open_central

PHASE = "restart_jobs"
Report = Callable[[str, BaseException], None]


def restart_jobs(ctx: DeployContext) -> None:
    """After a successful switch: reopen (epoch-checked) and restart recorded runs on the new current."""
    if ctx.dry_run:
        for host in ctx.hosts:
            ctx.bus.emit("host.command", host=host.name, phase=PHASE, dry_run=True,
                         command=f"{ctx.stage.shipit_command} agent restart")
        return
    _stop_renewal(ctx)
    problems: list[str] = []

    def report(where: str, exc: BaseException) -> None:
        problems.append(f"[{where}] {exc}" if not str(exc).startswith("[") else str(exc))
        ctx.bus.emit("host.failed", host=None if where == "*" else where, phase=PHASE,
                     message=str(exc))

    try:
        _restart_all(ctx, PHASE, report)
        if not problems:
            # The agent restarts carried the final deploy record; the other hosts get it here.
            write_uncalled(ctx)
    finally:
        forget_final(ctx)
    if problems:
        raise DeployFailed("restarting jobs failed: " + "; ".join(problems))


def recover_jobs(ctx: DeployContext) -> None:
    """On any failure after the gate closed: reopen and restart recorded runs on whatever code is
    live (after a switch back, the old release). Must be safe to call when nothing was closed, and
    must never raise past the runner without reporting (it is on the failure path)."""
    try:
        _stop_renewal(ctx)
        if not ctx.jobs.leases or ctx.dry_run:
            return

        def report(where: str, exc: BaseException) -> None:
            ctx.bus.emit("log", host=None if where == "*" else where, phase="rollback",
                         level="error", message=f"could not restart jobs: {exc}")

        _restart_all(ctx, "rollback", report)
    except Exception as exc:  # noqa: BLE001 - the failure path reports, it never raises
        ctx.bus.emit("log", phase="rollback", level="error",
                     message=f"could not reopen the gate / restart jobs: {exc}")


def _stop_renewal(ctx: DeployContext) -> None:
    stop = ctx.jobs.stop_renewal
    ctx.jobs.stop_renewal = None
    if stop is not None:
        stop()


def _restart_all(ctx: DeployContext, phase: str, report: Report) -> None:
    if not ctx.jobs.leases:
        return
    if is_central(ctx):
        lease = ctx.jobs.leases.get("*") or {}
        try:
            store = open_central(ctx)
        except ShipitError as exc:
            report("*", exc)
            return
        try:
            restart_central_runs(ctx, store, ctx.jobs.recorded, phase=phase,
                                 reopen_epoch=lease.get("epoch"), report=report)
        finally:
            store.close()
    else:
        _restart_per_host(ctx, phase, report)
    ctx.jobs.reopened = True


def _restart_per_host(ctx: DeployContext, phase: str, report: Report) -> None:
    by_name = {h.name: h for h in ctx.hosts}
    targets = [by_name[n] for n in ctx.jobs.leases if n in by_name]

    def one(host: Host) -> None:
        lease = ctx.jobs.leases[host.name]
        runs = [r for r in ctx.jobs.recorded if r.get("agent_host") == host.name]
        opts = agent_opts(ctx, host) | {"epoch": lease.get("epoch"), "reopen": True,
                                        "run_ids": [r["id"] for r in runs]}
        opts |= agent_option(ctx, host, phase)
        _say_command(ctx, host, phase)
        try:
            call_agent(host, ctx.stage.shipit_command, "restart", opts,
                       on_event=forward(ctx, host.name, phase))
        except Exception as exc:  # noqa: BLE001 - reported per host; the others go on
            report(host.name, exc)

    _each(ctx, targets, one)


def restart_central_runs(
    ctx: DeployContext,
    store: Store,
    runs: list[dict[str, Any]],
    *,
    phase: str,
    reopen_epoch: int | None,
    report: Report | None = None,
) -> None:
    """Central store: reopen here (when we hold it at `reopen_epoch`), then ask each host that
    has runs to restart them (claims are made in the store by the agent, at the gate's epoch)."""

    def fail(where: str, exc: BaseException) -> None:
        if report is None:
            raise exc
        report(where, exc)

    if reopen_epoch is not None:
        try:
            lease = store.open_gate(int(reopen_epoch), actor=ctx.actor)
            ctx.bus.emit("gate.reopened", phase=phase, epoch=lease.epoch, holder=ctx.actor)
        except FencingError as exc:
            fail("*", exc)
    epoch = store.gate().epoch
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        host = _host_for(ctx, str(run.get("host") or ""))
        if host is None:
            ctx.bus.emit("log", phase=phase, level="warning",
                         message=f"run {run.get('id')} ({run.get('job')}) was on host "
                         f"{run.get('host')!r}, which is not in this stage: not restarted")
            continue
        groups.setdefault(host.name, []).append(run)
    targets = [h for h in ctx.hosts if h.name in groups]

    def one(host: Host) -> None:
        opts = agent_opts(ctx, host) | {"epoch": epoch, "reopen": False,
                                        "run_ids": [r["id"] for r in groups[host.name]]}
        opts |= agent_option(ctx, host, phase)
        _say_command(ctx, host, phase)
        try:
            call_agent(host, ctx.stage.shipit_command, "restart", opts,
                       on_event=forward(ctx, host.name, phase))
        except Exception as exc:  # noqa: BLE001 - reported per host
            fail(host.name, exc)

    _each(ctx, targets, one)


def _say_command(ctx: DeployContext, host: Host, phase: str) -> None:
    ctx.bus.emit("host.command", host=host.name, phase=phase, dry_run=False,
                 command=f"{ctx.stage.shipit_command} agent restart")


def _host_for(ctx: DeployContext, name: str) -> Host | None:
    """Match a run's recorded host to a host of the stage: by name, then by hostname."""
    for host in ctx.hosts:
        if name in (host.name, host.spec.hostname):
            return host
    return None


def _each(ctx: DeployContext, hosts: list[Host], fn: Callable[[Host], None]) -> None:
    from shipit.hosts.fanout import FanOutError, run_parallel

    try:
        run_parallel(hosts, fn, limit=ctx.stage.parallelism)
    except FanOutError as exc:
        # fn reports its own failures; anything here escaped it and must still be seen.
        for name, err in exc.errors.items():
            ctx.bus.emit("log", host=name, phase=PHASE, level="error", message=str(err))
