"""`shipit lock ...`, `shipit jobs ...` and `shipit status`: the gate and the jobs by hand.

Every command works on a whole stage: per-host stores (file, sqlite) through one `shipit agent`
op per host, the central store (postgres) directly. A manual lock / pause is the same lease a
deploy takes (holder = you, audited), so a deploy started meanwhile exits 3 naming you.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import click

from shipit.cli.common import echo_json, load_stage
from shipit.config.model import StageConfig
from shipit.errors import CorruptState, GateHeld, ShipitError, UsageError
from shipit.events import EventBus
from shipit.gate.base import ALL_STATES, Lease
from shipit.hosts.base import Host
from shipit.jobs.drain import describe_lease, iso
from shipit.output.format import show_value
from shipit.output.pager import NO_PAGER, page

STAGE = click.argument("stage", metavar="STAGE")
JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
MANUAL_TTL = 3600.0
# deploy_id prefixes of leases taken by hand: `release` / `resume` may reopen those of the same
# actor without --force, never a deploy's.
MANUAL_PREFIXES = ("lock-", "pause-")


def actor() -> str:
    from shipit.runner import default_actor

    return default_actor()


class Stage:
    """The stage's stores: one per host (file/sqlite, via the agent) or one central (postgres)."""

    def __init__(self, stage: StageConfig) -> None:
        from shipit.crypto import use_stage_keys
        from shipit.hosts.open import open_host
        from shipit.phases.context import DeployContext

        use_stage_keys(stage)  # jobs.key_file: the central store and the local agent read state
        self.stage = stage
        self.bus = EventBus()
        self.bus.subscribe(_echo_event)
        self.hosts: list[Host] = [open_host(spec, stage.ssh) for spec in stage.hosts]
        self.ctx = DeployContext(
            stage=stage,
            hosts=self.hosts,
            bus=self.bus,
            deploy_id=f"cli-{secrets.token_hex(4)}",
            actor=actor(),
        )
        self.central = stage.jobs.store == "postgres"

    def notify(self, mode: str) -> None:
        """Announce what this command does to the stage's notify targets, as a deploy would."""
        self.notifier = _manual_notifier(self, mode)

    def close(self) -> None:
        _close_notifier(self)
        for h in self.hosts:
            try:
                h.close()
            except Exception:  # noqa: BLE001, S112 - closing is best effort
                continue

    def targets(self) -> list[str]:
        return ["*"] if self.central else [h.name for h in self.hosts]

    def call(self, target: str, op: str, opts: dict[str, Any]) -> dict[str, Any]:
        """One agent op against one store: over the host's agent, or in-process for postgres."""
        from shipit.phases.drain_jobs import agent_opts, forward

        if target == "*":
            return self._central(op, opts)
        from shipit.jobs.remote import call_agent

        host = next(h for h in self.hosts if h.name == target)
        return call_agent(
            host,
            self.stage.shipit_command,
            op,
            agent_opts(self.ctx, host) | opts,
            on_event=forward(self.ctx, host.name, "cli"),
        )

    def _central(self, op: str, opts: dict[str, Any]) -> dict[str, Any]:
        import io

        from shipit.agent import _OPS, Out
        from shipit.phases.drain_jobs import open_central

        store = open_central(self.ctx)
        try:
            return _OPS[op](store, {"deploy_to": self.stage.deploy_to, **opts}, Out(io.StringIO()))
        finally:
            store.close()

    def each(self, op: str, opts: dict[str, Any]) -> dict[str, dict[str, Any] | ShipitError]:
        """op on every store in parallel; a store's error is returned in its slot."""
        from shipit.hosts.fanout import FanOutError, run_parallel

        if self.central:
            try:
                return {"*": self.call("*", op, opts)}
            except ShipitError as exc:
                return {"*": exc}
        try:
            return run_parallel(
                self.hosts, lambda h: self.call(h.name, op, opts), limit=self.stage.parallelism
            )
        except FanOutError as exc:
            out: dict[str, Any] = dict(exc.results)
            for name, err in exc.errors.items():
                out[name] = err if isinstance(err, ShipitError) else ShipitError(f"[{name}] {err}")
            return out


def _echo_event(event: Any) -> None:
    if event.data.get("by_hand"):
        return  # the command said it already
    if event.kind in ("job.restarted", "job.restart_respawned", "job.given_up",
                      "job.restart_failed", "gate.reopened"):
        where = f"[{event.host}] " if event.host else ""
        job = event.data.get("job") or (event.data.get("run") or {}).get("job") or ""
        why = f": {event.message}" if event.kind == "job.restart_failed" and event.message else ""
        click.echo(f"{where}{event.kind} {job}".rstrip() + why, err=True)


def _with_stage(name: str, fn: Callable[[Stage], Any], *, notify: str | None = None) -> Any:
    st = Stage(load_stage(name))
    try:
        if notify:
            st.notify(notify)
        return fn(st)
    finally:
        st.close()


def _first_error(results: dict[str, Any]) -> ShipitError | None:
    errors = [r for r in results.values() if isinstance(r, ShipitError)]
    held = [e for e in errors if isinstance(e, GateHeld)]
    return (held or errors or [None])[0]


# -- closing and opening by hand -------------------------------------------------------------------


def _close_all(st: Stage, *, prefix: str, reason: str, ttl: float, force: bool) -> dict[str, Any]:
    opts = {
        "holder": st.ctx.actor,
        "deploy_id": f"{prefix}{secrets.token_hex(6)}",
        "reason": reason,
        "ttl": ttl,
        "force": force,
    }
    # Without force first: --force then overrides only the stores someone else holds, so the
    # audit trail marks exactly those forced, and gate.forced names whom it overrode.
    results = st.each("close", {**opts, "force": False})
    taken = _force_close(st, results, opts) if force else {}
    _announce_closed(st, results, taken)
    err = _first_error(results)
    if err is not None:
        # All or nothing: reopen what we closed so a half-locked stage is not left behind.
        for target, res in results.items():
            if isinstance(res, dict):
                try:
                    back = st.call(target, "open", {"epoch": res["lease"]["epoch"],
                                                    "actor": st.ctx.actor})
                except ShipitError:
                    continue
                _emit_gate(st, "gate.reopened", target, back["lease"], holder=st.ctx.actor)
        raise err
    return results


def _open_all(st: Stage, *, force: bool, what: str) -> dict[str, Any]:
    now = time.time()
    plans: dict[str, dict[str, Any] | None] = {}
    seen: dict[str, Lease | None] = {}  # what each store held: whom a forced open overrides
    for target, res in st.each("status", {}).items():
        if isinstance(res, CorruptState) and force:
            # The repair the CorruptState message points to: a forced, audited reopen that
            # replaces the unreadable gate (the store keeps its runs; jobs then get in).
            plans[target] = {"actor": st.ctx.actor, "force": True}
            seen[target] = None
            continue
        if isinstance(res, ShipitError):
            raise res
        lease = _lease(res["gate"])
        if not lease.is_closed(now) and lease.state == "open":
            plans[target] = None  # already open
            continue
        mine = lease.holder == st.ctx.actor and lease.deploy_id.startswith(MANUAL_PREFIXES)
        if not (mine or force or not lease.is_closed(now)):
            raise GateHeld(
                f"[{target}] {describe_lease(lease)}; not yours to {what}: use --force (audited)",
                lease,
            )
        plans[target] = {"epoch": lease.epoch, "actor": st.ctx.actor, "force": force and not mine}
        seen[target] = lease
    out: dict[str, Any] = {}
    for target, opts in plans.items():
        out[target] = st.call(target, "open", opts) if opts else {"lease": None}
        if opts:
            _announce_opened(st, target, out[target], seen.get(target), forced=opts["force"])
    return out


def _lease(d: dict[str, Any]) -> Lease:
    fields = set(Lease.__dataclass_fields__)
    return Lease(**{k: v for k, v in d.items() if k in fields})


def _say_closed(results: dict[str, Any], verb: str) -> None:
    for target, res in results.items():
        lease = _lease(res["lease"])
        where = "store" if target == "*" else target
        click.echo(f"{where}: {verb} (epoch {lease.epoch}, expires {iso(lease.expires_at)})")


# -- telling people: gate events and the stage's notify targets -----------------------------------


def _force_close(st: Stage, results: dict[str, Any], opts: dict[str, Any]) -> dict[str, Lease | None]:
    """Close again, forced, the stores that refused (held by someone else, or an unreadable
    gate). Updates `results`; returns what each forced store held (None: unreadable)."""
    from shipit.hosts.fanout import FanOutError, run_parallel

    again = [t for t, r in results.items() if isinstance(r, (GateHeld, CorruptState))]
    taken = {t: getattr(results[t], "lease", None) for t in again}
    forced = {**opts, "force": True}
    if not again:
        return taken
    if st.central:
        try:
            results["*"] = st.call("*", "close", forced)
        except ShipitError as exc:
            results["*"] = exc
        return taken
    hosts = [h for h in st.hosts if h.name in taken]
    try:
        results.update(run_parallel(hosts, lambda h: st.call(h.name, "close", forced),
                                    limit=st.stage.parallelism))
    except FanOutError as exc:
        results.update(exc.results)
        for name, err in exc.errors.items():
            results[name] = err if isinstance(err, ShipitError) else ShipitError(f"[{name}] {err}")
    return taken


def _emit_gate(st: Stage, kind: str, target: str, lease: dict[str, Any], **data: Any) -> None:
    st.bus.emit(kind, host=None if target == "*" else target, phase="cli",
                epoch=lease.get("epoch"), **data)


def _previous(lease: Lease | None, now: float) -> dict[str, Any]:
    """gate.forced's account of whom it overrode (the audit trail records the forced action)."""
    if lease is None:
        return {"previous_holder": "?", "previous_reason": "unreadable gate", "unreadable": True}
    return {
        "previous_holder": lease.holder or "?", "previous_deploy_id": lease.deploy_id or None,
        "previous_reason": lease.reason or None, "previous_epoch": lease.epoch,
        "previous_expires_at": lease.expires_at, "previous_expired": not lease.is_closed(now),
    }


def _announce_closed(st: Stage, results: dict[str, Any], taken: dict[str, Lease | None]) -> None:
    now = time.time()
    for target, res in results.items():
        if not isinstance(res, dict):
            continue
        lease = res["lease"]
        facts = {"holder": lease.get("holder"), "deploy_id": lease.get("deploy_id"),
                 "reason": lease.get("reason"), "expires_at": lease.get("expires_at")}
        if target in taken:
            _emit_gate(st, "gate.forced", target, lease, action="force-close", **facts,
                       **_previous(taken[target], now))
        else:
            _emit_gate(st, "gate.closed", target, lease, **facts)


def _announce_opened(st: Stage, target: str, res: dict[str, Any], before: Lease | None, *,
                     forced: bool) -> None:
    lease = res.get("lease") or {}
    if forced:
        _emit_gate(st, "gate.forced", target, lease, action="force-open", holder=st.ctx.actor,
                   **_previous(before, time.time()))
    else:
        _emit_gate(st, "gate.reopened", target, lease, holder=st.ctx.actor,
                   deploy_id=before.deploy_id if before else None)


def _manual_notifier(st: Stage, mode: str) -> Any:
    """The stage's Notifier on this command's bus (same targets, filters and masking as a
    deploy). A target this machine cannot use (apprise not installed...) is a warning here: a
    lock or a resume must still work in an emergency."""
    stage = st.stage
    st.bus.subscribe(_echo_manual)
    if not stage.notify:
        return None
    from shipit.config.secrets import secret_values
    from shipit.notify.notifier import Notifier

    source = {"stage": stage.name, "application": stage.application, "actor": st.ctx.actor,
              "mode": mode, "dry_run": False}
    try:
        return Notifier(stage.notify, secrets=[v for v in secret_values(stage) if v],
                        source=source, origin=f"{stage.config_path}: notify").attach(st.bus)
    except ShipitError as exc:
        click.echo(f"warning: notifications are off for this command: {exc}", err=True)
        return None


def _close_notifier(st: Stage) -> None:
    notifier = getattr(st, "notifier", None)
    if notifier is None:
        return
    st.notifier = None
    try:
        notifier.close(10.0)  # bounded, like a deploy's; a dead endpoint never fails the command
    except Exception:  # noqa: BLE001 - telling people must not fail what was done
        click.echo("warning: notifications could not be flushed", err=True)


def _echo_manual(event: Any) -> None:
    if event.kind == "notify.failed":
        click.echo(f"warning: {event.message}", err=True)
    elif event.kind == "gate.forced":
        where = f"[{event.host}] " if event.host else ""
        d = event.data
        was = f"{d.get('previous_holder')}" + (
            f" ({d['previous_deploy_id']})" if d.get("previous_deploy_id") else ""
        )
        click.echo(f"{where}gate forced {'open' if d.get('action') == 'force-open' else 'closed'}"
                   f" (epoch {d.get('epoch')}, audited): it was held by {was}", err=True)


# -- shipit lock -------------------------------------------------------------------------------------


@click.group("lock")
def lock() -> None:
    """The deploy lock (the gate's lease): who holds it, take it, give it back."""


@lock.command("status")
@STAGE
@JSON
def lock_status(stage: str, as_json: bool) -> None:
    """Who holds the gate on each host (or the central store)."""
    _with_stage(stage, lambda st: _print_gates(st, as_json))


@lock.command("acquire")
@STAGE
@click.option("-m", "--message", default="", help="Why (shown to whoever meets the lock).")
@click.option(
    "--ttl", type=float, default=MANUAL_TTL, show_default=True, help="Seconds until it expires."
)
@click.option("--force", is_flag=True, help="Take it even from another holder (audited).")
def lock_acquire(stage: str, message: str, ttl: float, force: bool) -> None:
    """Take the deploy lock on every host: deploys and new jobs wait until it is released."""
    _check_ttl(ttl)

    def go(st: Stage) -> None:
        res = _close_all(
            st, prefix="lock-", reason=message or "locked by hand", ttl=ttl, force=force
        )
        _say_closed(res, "locked")

    _with_stage(stage, go, notify="lock")


@lock.command("release")
@STAGE
@click.option("--force", is_flag=True, help="Release someone else's lock (audited).")
def lock_release(stage: str, force: bool) -> None:
    """Give the deploy lock back (yours; someone else's with --force)."""
    _with_stage(stage, lambda st: _say_opened(_open_all(st, force=force, what="release")),
                notify="lock")


@lock.command("log")
@STAGE
@click.option("-n", "--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="Entries per store.")
@JSON
def lock_log(stage: str, limit: int, as_json: bool) -> None:
    """The audit trail: who closed, reopened or forced the gate, when and why (newest first;
    per host for per-host stores, once for a central one)."""

    def go(st: Stage) -> None:
        results = st.each("audit", {"limit": limit, "readonly": True})
        err = _first_error(results)
        if err is not None:
            raise err
        logs = {t: [{"time": iso(float(e["ts"])), **e} for e in res.get("entries") or []]
                for t, res in results.items()}
        if as_json:
            echo_json(logs)
            return
        for target, entries in logs.items():
            click.echo(f"{'store' if target == '*' else target}:")
            if not entries:
                click.echo("  (no entries)")
            rows = [(e["time"], str(e["action"]), str(e["actor"]), f"epoch {e['epoch']}",
                     "forced" if e.get("forced") else "-", str(e.get("reason") or ""))
                    for e in entries]
            widths = [max((len(r[i]) for r in rows), default=0) for i in range(5)]
            for r in rows:
                line = "  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True))
                click.echo(f"  {line}  {r[5]}".rstrip())

    _with_stage(stage, go)


def _say_opened(results: dict[str, Any]) -> None:
    for target, res in results.items():
        where = "store" if target == "*" else target
        click.echo(f"{where}: open" if res.get("lease") else f"{where}: already open")


def _check_ttl(ttl: float) -> None:
    if ttl < 3:
        raise UsageError(f"--ttl {ttl:g}: a lease needs at least 3 seconds")


# -- shipit jobs -------------------------------------------------------------------------------------


@click.group("jobs")
def jobs() -> None:
    """Jobs on a stage's hosts: pause/resume, list, show, forget, reconcile."""


@jobs.command("pause")
@STAGE
@click.option(
    "-m", "--message", required=True, help="Why jobs are paused (shown to them and to deploys)."
)
@click.option(
    "--ttl", type=float, default=MANUAL_TTL, show_default=True, help="Seconds until it expires."
)
@click.option("--force", is_flag=True, help="Close even if someone else holds the gate (audited).")
def jobs_pause(stage: str, message: str, ttl: float, force: bool) -> None:
    """Close the gate by hand: new jobs wait, running ones carry on."""
    _check_ttl(ttl)
    _with_stage(
        stage,
        lambda st: _say_closed(
            _close_all(st, prefix="pause-", reason=message, ttl=ttl, force=force), "paused"
        ),
        notify="pause",
    )


@jobs.command("resume")
@STAGE
@click.option("--force", is_flag=True, help="Reopen even if someone else holds the gate (audited).")
def jobs_resume(stage: str, force: bool) -> None:
    """Reopen the gate after `jobs pause`."""
    _with_stage(stage, lambda st: _say_opened(_open_all(st, force=force, what="resume")),
                notify="pause")


@jobs.command("list")
@STAGE
@click.option("--state", type=click.Choice(ALL_STATES), help="Only runs in this state.")
@click.option("--limit", "-n", type=click.IntRange(min=1), default=100, show_default=True,
              help="How many runs to show.")
@click.option("--offset", type=click.IntRange(min=0), default=0, metavar="N",
              help="Skip the newest N runs (the next page: --offset 100).")
@NO_PAGER
@JSON
def jobs_list(stage: str, state: str | None, limit: int, offset: int, no_pager: bool,
              as_json: bool) -> None:
    """Runs, newest first."""

    def go(st: Stage) -> None:
        # Each store's newest limit+offset hold the stage's newest limit+offset.
        results = st.each("list", {"state": state, "limit": limit + offset})
        err = _first_error(results)
        if err is not None:
            raise err
        runs = [r for res in results.values() for r in res["runs"]]
        runs.sort(key=lambda r: r.get("created_at") or 0, reverse=True)
        runs = runs[offset:offset + limit]
        if as_json:
            echo_json(runs)
            return
        page("".join(_run_line(r) + "\n" for r in runs), pager=not no_pager)

    _with_stage(stage, go)


@jobs.command("show")
@STAGE
@click.argument("run", metavar="RUN")
@click.option("--state", "with_state", is_flag=True,
              help="Include the saved checkpoint state (it may hold the job's data).")
@JSON
def jobs_show(stage: str, run: str, with_state: bool, as_json: bool) -> None:
    """One run in full (env values are never shown, the checkpoint only with --state)."""

    def go(st: Stage) -> None:
        for target in st.targets():
            try:
                # The state is decrypted (and needs the key) only when asked for.
                found = st.call(target, "show", {"run": run, "state": with_state})["run"]
            except UsageError:
                continue
            if not with_state and found.get("checkpoint") is not None:
                found["checkpoint"] = "<saved>"  # as `jobs list` shows it
            if as_json:
                echo_json(found)
            else:
                for key, value in found.items():
                    click.echo(f"{key:18} {show_value(key, value)}")
            return
        raise UsageError(f"no run {run!r} on stage {stage}")

    _with_stage(stage, go)


@jobs.command("forget")
@STAGE
@click.argument("run", metavar="RUN")
@click.option("-m", "--message", "reason", required=True,
              help="Why (recorded with the run and in the audit trail).")
def jobs_forget(stage: str, run: str, reason: str) -> None:
    """Give up a stopped run for good: no deploy or reconcile restarts it. Its saved state stays
    in the store, unread: the way out when that state cannot be decrypted (a lost key)."""

    def go(st: Stage) -> None:
        for target in st.targets():
            res = st.call(target, "forget", {"run": run, "reason": reason, "actor": st.ctx.actor,
                                             "readonly": True})
            found = res.get("run")
            if not found:
                continue
            where = "" if target == "*" else f"{target}: "
            if res.get("changed"):
                click.echo(f"{where}run {found['id']} ({found['job']}) given up: it will not be "
                           "restarted; its saved state stays in the store, unread")
                # Announced like a run a deploy gives up: someone may be waiting for that job.
                st.bus.emit("job.given_up", host=found.get("host") if target == "*" else target,
                            phase="cli", run={"run_id": found["id"], "job": found["job"]},
                            message=f"by {st.ctx.actor}: {reason}", by_hand=True)
            else:
                click.echo(f"{where}run {found['id']} ({found['job']}) was given up already")
            return
        raise UsageError(f"no run {run!r} on stage {stage}")

    _with_stage(stage, go, notify="forget")


@jobs.command("reconcile")
@STAGE
def jobs_reconcile(stage: str) -> None:
    """Restart, exactly once, the jobs a killed deploy stopped and never restarted."""

    def go(st: Stage) -> None:
        if st.central:
            _reconcile_central(st)
            return
        results = st.each("reconcile", {"actor": st.ctx.actor})
        err = _first_error(results)
        if err is not None:
            raise err
        n = sum(
            1 for res in results.values() for o in res["outcomes"] if o["outcome"] == "restarted"
        )
        click.echo(f"reconciled: {n} job(s) restarted")

    _with_stage(stage, go, notify="reconcile")


def _reconcile_central(st: Stage) -> None:
    from shipit.jobs.drain import describe_lease as describe
    from shipit.jobs.reconcile import leftovers
    from shipit.phases.drain_jobs import open_central
    from shipit.phases.restart_jobs import restart_central_runs

    store = open_central(st.ctx)
    try:
        lease = store.gate()
        if lease.is_closed(time.time()):
            raise GateHeld(describe(lease), lease)
        runs = leftovers(store, wait=True)
        restart_central_runs(
            st.ctx,
            store,
            [r.to_dict() for r in runs],
            phase="cli",
            reopen_epoch=lease.epoch if lease.state == "closed" else None,
        )
    finally:
        store.close()
    click.echo(f"reconciled: {len(runs)} job(s) considered")


# -- shipit status -------------------------------------------------------------------------------------


@click.command("status")
@STAGE
@JSON
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C (in place on a terminal).")
@click.option("--interval", type=click.FloatRange(min=0.05), default=2.0, show_default=True,
              metavar="S", help="Seconds between refreshes with --watch.")
@click.option("--count", type=click.IntRange(min=1), default=None, metavar="N",
              help="With --watch: stop after N refreshes.")
def status(stage: str, as_json: bool, watch: bool, interval: float, count: int | None) -> None:
    """The gate on each host, the jobs running / waiting / stopped, and the current release."""
    if not watch:
        _with_stage(stage, lambda st: _print_status(st, as_json))
        return
    from shipit.cli.common import stdout_is_tty
    from shipit.cli.watch import watch as run_watch

    _with_stage(stage, lambda st: run_watch(
        st, interval=interval, count=count, as_json=as_json, tty=stdout_is_tty(),
        gate_line=_gate_line, run_line=_run_line,
    ))


def _status_all(st: Stage) -> dict[str, Any]:
    results = st.each("status", {"readonly": True})
    err = _first_error(results)
    if err is not None:
        raise err
    return results


def _print_gates(st: Stage, as_json: bool) -> None:
    results = _status_all(st)
    if as_json:
        echo_json({t: r["gate"] for t, r in results.items()})
        return
    for target, res in results.items():
        click.echo(
            f"{'store' if target == '*' else target}: {_gate_line(res['gate'], res.get('now'))}"
        )


def _gate_line(gate: dict[str, Any], now: float | None) -> str:
    lease = _lease(gate)
    if lease.is_closed(now or time.time()):
        return "closed, " + describe_lease(lease).replace("gate held", "held", 1)
    if lease.state == "closed":
        return f"open (lease of {lease.holder} expired {iso(lease.expires_at)})"
    return "open"


def _print_status(st: Stage, as_json: bool) -> None:
    results = _status_all(st)
    if as_json:
        echo_json(results)
        return
    for target, res in results.items():
        where = "store" if target == "*" else target
        click.echo(f"{where}: gate {_gate_line(res['gate'], res.get('now'))}")
        if res.get("current"):
            click.echo(f"  current release {res['current']}")
        for r in res.get("runs") or []:
            click.echo("  " + _run_line(r))
    if st.central:
        # One central store: the release lives on each host, ask them.
        _print_current_per_host(st)


def _print_current_per_host(st: Stage) -> None:
    from shipit.hosts.fanout import FanOutError, run_parallel

    cmd = f"readlink {_q(st.stage.deploy_to + '/current')}"
    try:
        out = run_parallel(
            st.hosts, lambda h: h.run(cmd, check=False).stdout.strip(), limit=st.stage.parallelism
        )
    except FanOutError as exc:
        out = {**exc.results, **{k: f"unreachable ({v})" for k, v in exc.errors.items()}}
    for name, link in out.items():
        click.echo(f"{name}: current release {link.rsplit('/', 1)[-1] if link else '-'}")


def _q(s: str) -> str:
    import shlex

    return shlex.quote(s)


def _run_line(r: dict[str, Any]) -> str:
    parts = [str(r.get("run_id") or r.get("id")), str(r.get("job")), str(r.get("state"))]
    if r.get("host"):
        parts.append(f"host={r['host']}")
    if r.get("pid"):
        parts.append(f"pid={r['pid']}")
    if r.get("attempt"):
        parts.append(f"attempt={r['attempt']}")
    if r.get("elapsed") is not None:
        parts.append(f"elapsed={r['elapsed']:.0f}s")
    progress = r.get("progress")
    if progress is None and r.get("progress_total"):
        progress = [r.get("progress_done") or 0, r["progress_total"]]
    if progress:
        parts.append(f"progress={progress[0]:g}/{progress[1]:g}")
    if r.get("alive") is False:
        parts.append("(supervisor gone)")
    return "  ".join(parts)
