"""The deploy engine's entry points (the CLI calls exactly these).

Order: pre_deploy -> drain_jobs -> release -> restart_jobs, each wrapped in its before_/after_
hooks. Any failure after the gate may have closed runs the rollback phase (switch back or remove
partial releases, then recover_jobs). Ctrl-C (and SIGTERM, which the CLI turns into
KeyboardInterrupt) ends the same way, with outcome "interrupted". Nothing here prints.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import posixpath
import secrets
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shipit.commands.release import facts_command, history_read_command, parse_facts
from shipit.config.model import StageConfig
from shipit.errors import HostError, Interrupted, ShipitError
from shipit.events import EventBus
from shipit.history import merge
from shipit.hooks import run_hooks
from shipit.hosts.base import Host
from shipit.hosts.fanout import FanOutError, run_parallel
from shipit.hosts.open import open_host
from shipit.phases import adapters as adapters_mod
from shipit.phases.common import drop_state, engine_state, mask
from shipit.phases.context import DeployContext
from shipit.phases.pre_deploy import pre_deploy
from shipit.phases.release import release
from shipit.phases.rollback import rollback as rollback_phase


@dataclass
class DeployOptions:
    revision: str | None = None
    dry_run: bool = False
    lock_wait: float = 0.0
    actor: str | None = None


@dataclass
class DeployResult:
    deploy_id: str
    outcome: str  # "success" | "failed" | "rolled_back" | "interrupted" | "dry_run"
    release: str | None
    revision: str | None
    error: str | None
    durations: dict[str, float]
    exit_code: int
    hosts: list[str]


@dataclass
class HostCheck:
    host: str
    ok: bool
    problems: list[str]
    current: str | None
    releases: list[str] = field(default_factory=list)
    # Facts worth saying that are not problems (deploy_to does not exist yet, the first
    # deploy creates it).
    notes: list[str] = field(default_factory=list)


@dataclass
class ReleaseInfo:
    name: str
    revision: str | None
    current: bool
    bad: bool
    complete: bool = True


def new_deploy_id() -> str:
    """Sortable (UTC time first) and unique (random suffix) across machines."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


_CI_ACTORS = ("GITHUB_ACTOR", "GITLAB_USER_LOGIN", "BUILDKITE_BUILD_CREATOR", "CIRCLE_USERNAME")


def default_actor() -> str:
    if os.environ.get("SHIPIT_ACTOR"):
        return os.environ["SHIPIT_ACTOR"]
    for var in _CI_ACTORS:
        if os.environ.get(var):
            return f"{os.environ[var]} (ci)"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _secret_values(stage: StageConfig) -> list[str]:
    from shipit.config.secrets import secret_values

    return [s for s in secret_values(stage) if s]


def _open(stage: StageConfig) -> list[Host]:
    return [open_host(spec, stage.ssh) for spec in stage.hosts]


def _close(hosts: list[Host]) -> None:
    for host in hosts:
        with contextlib.suppress(Exception):
            host.close()


@contextlib.contextmanager
def _shielded() -> Iterator[None]:
    """Hold off Ctrl-C / SIGTERM while recovery runs: a second interrupt must not leave the
    stage half switched back. Only the main thread can own signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in saved:
        signal.signal(s, lambda *_: None)
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def _phase(ctx: DeployContext, name: str, fn: Callable[[DeployContext], None]) -> None:
    ctx.bus.emit("phase.started", phase=name)
    start = engine_state(ctx).phase_started[name] = time.monotonic()
    ok = False
    try:
        run_hooks(ctx, f"before_{name}")
        fn(ctx)
        run_hooks(ctx, f"after_{name}")
        ok = True
    finally:
        ctx.durations[name] = round(time.monotonic() - start, 4)
        ctx.bus.emit("phase.finished", phase=name, duration=ctx.durations[name], ok=ok)


def _recover(ctx: DeployContext, outcome: str, error: str | None) -> list[str]:
    with _shielded():
        ctx.bus.emit("phase.started", phase="rollback")
        start = time.monotonic()
        problems: list[str] = []
        for point in ("before_rollback", None, "after_rollback"):
            try:
                if point is None:
                    try:
                        problems += rollback_phase(ctx, outcome=outcome, error=error)
                    finally:
                        # Whatever rollback did: a failed deploy never leaves work paused.
                        problems += adapters_mod.recover_adapters(ctx)
                else:
                    run_hooks(ctx, point)
            except (ShipitError, OSError) as exc:
                problems.append(mask(ctx, str(exc)))
        ctx.durations["rollback"] = round(time.monotonic() - start, 4)
        for p in problems:
            ctx.bus.emit("log", phase="rollback", message=p, level="error")
        ctx.bus.emit("phase.finished", phase="rollback", duration=ctx.durations["rollback"], ok=not problems)
    return problems


def _execute(stage: StageConfig, opts: DeployOptions, bus: EventBus, mode: str, to: str | None) -> DeployResult:
    hosts = _open(stage)
    ctx = DeployContext(
        stage=stage, hosts=hosts, bus=bus, deploy_id=new_deploy_id(),
        actor=opts.actor or default_actor(), dry_run=opts.dry_run,
    )
    st = engine_state(ctx)
    st.mode, st.requested_revision, st.rollback_to = mode, opts.revision, to
    st.base_dir = str(Path(stage.config_path).resolve().parent)
    st.started = time.time()
    st.secrets = _secret_values(stage)
    notifier = _notifier(stage, ctx, opts, mode)
    bus.emit(
        "deploy.started", deploy_id=ctx.deploy_id, stage=stage.name, hosts=[h.name for h in hosts],
        dry_run=opts.dry_run, mode=mode, **_what(stage, opts.revision, mode, to),
    )
    outcome, error, exit_code = ("dry_run" if opts.dry_run else "success"), None, 0
    gate_touched = False
    try:
        _phase(ctx, "pre_deploy", pre_deploy)
        gate_touched = True
        _phase(ctx, "drain_jobs", lambda c: adapters_mod.drain_jobs(c, lock_wait=opts.lock_wait))
        _phase(ctx, "release", release)
        _phase(ctx, "restart_jobs", adapters_mod.restart_jobs)
    except KeyboardInterrupt:
        outcome, error, exit_code = "interrupted", "interrupted (Ctrl-C / SIGTERM)", Interrupted.exit_code
        bus.emit("log", message="interrupted: putting the stage back in a consistent state", level="warning")
    except ShipitError as exc:
        error, exit_code = mask(ctx, str(exc)), exc.exit_code
        if isinstance(exc, FanOutError) and any(isinstance(e, HostError) for e in exc.errors.values()):
            exit_code = HostError.exit_code
        outcome = "failed"
    except Exception as exc:  # a bug must still leave the stage consistent
        outcome, error, exit_code = "failed", mask(ctx, f"internal error: {exc!r}"), 1
    if outcome in ("failed", "interrupted") and not opts.dry_run:
        switched = ctx.switched
        problems = _recover(ctx, outcome, error) if (gate_touched or ctx.facts) else []
        if outcome == "failed" and switched and not problems:
            outcome = "rolled_back"
        if problems:
            error = f"{error}; recovery: {'; '.join(problems)}"
    _close(hosts)
    if st.tmpdir:
        shutil.rmtree(st.tmpdir, ignore_errors=True)
    result = DeployResult(
        deploy_id=ctx.deploy_id, outcome=outcome, release=ctx.release, revision=ctx.revision,
        error=error, durations=dict(ctx.durations), exit_code=exit_code, hosts=[h.name for h in hosts],
    )
    drop_state(ctx)
    bus.emit(
        "deploy.finished", deploy_id=ctx.deploy_id, outcome=outcome, durations=result.durations,
        release=ctx.release, error=error, exit_code=exit_code, revision=ctx.revision, mode=mode,
    )
    if notifier is not None:
        # Bounded: a dead endpoint delays shipit's exit by at most this, never fails the deploy.
        notifier.close(10.0)
    return result


def _what(stage: StageConfig, revision: str | None, mode: str, to: str | None) -> dict[str, Any]:
    """What deploy.started says is being deployed: `revision` (asked for, or source.revision),
    else `branch` for a repository, `source_dir` for a directory; `rollback_to` for a rollback
    (None: the previous release)."""
    if mode == "rollback":
        return {"revision": None, "rollback_to": to}
    source = stage.source
    if source.dir:
        base = Path(stage.config_path).resolve().parent
        path = Path(source.dir)
        with contextlib.suppress(ValueError):
            path = path.resolve().relative_to(base) if path.resolve() != base else path
        return {"revision": revision, "source_dir": str(path)}
    if revision or source.revision:
        return {"revision": revision or source.revision}
    return {"revision": None, "branch": source.branch}


def _notifier(stage: StageConfig, ctx: DeployContext, opts: DeployOptions, mode: str) -> Any:
    if not stage.notify:
        return None
    from shipit.notify.notifier import Notifier

    source = {
        "stage": stage.name, "application": stage.application, "deploy_id": ctx.deploy_id,
        "actor": ctx.actor, "dry_run": opts.dry_run, "mode": mode,
    }
    return Notifier(
        stage.notify, secrets=list(engine_state(ctx).secrets), source=source,
        origin=f"{stage.config_path}: notify",
    ).attach(ctx.bus)


def deploy(stage: StageConfig, opts: DeployOptions, bus: EventBus) -> DeployResult:
    return _execute(stage, opts, bus, "deploy", None)


def rollback(stage: StageConfig, opts: DeployOptions, bus: EventBus, to: str | None = None) -> DeployResult:
    return _execute(stage, opts, bus, "rollback", to)


def _read_only(stage: StageConfig, bus: EventBus, fn: Callable[[Host], Any]) -> dict[str, Any]:
    """Run fn on every host; a host's exception is returned in its slot, never raised."""
    hosts = _open(stage)
    try:
        try:
            return run_parallel(hosts, fn, limit=stage.parallelism)
        except FanOutError as exc:
            return {**exc.results, **exc.errors}
    finally:
        _close(hosts)


def _facts_of(stage: StageConfig, bus: EventBus, host: Host) -> dict[str, Any]:
    command = facts_command(stage.deploy_to, stage.linked_files, stage.linked_dirs, create=False)
    bus.emit("host.command", host=host.name, phase="check", command=command, dry_run=False)
    res = host.run(command, check=False)
    return parse_facts(res.stdout) | {"exit_code": res.exit_code}


def check(stage: StageConfig, bus: EventBus) -> list[HostCheck]:
    """Read-only health check of every host: reachable, writable, linked files present."""
    out = _read_only(stage, bus, lambda h: _facts_of(stage, bus, h))
    checks = []
    for spec in stage.hosts:
        facts = out.get(spec.name)
        if isinstance(facts, BaseException) or facts is None:
            checks.append(HostCheck(spec.name, False, [str(facts)], None))
            continue
        problems, notes = _deploy_to_state(stage, facts)
        for code, index in facts["problems"]:
            if code == "missing_file" and index is not None:
                problems.append(f"linked file {stage.linked_files[index]} is missing in {stage.deploy_to}/shared")
            elif code == "unwritable":
                problems.append(f"{stage.deploy_to} is not writable")
        if not facts["complete_output"]:
            problems.append(f"the check command failed (exit code {facts['exit_code']})")
        names = [r["name"] for r in facts["releases"]]
        checks.append(HostCheck(spec.name, not problems, problems, facts["current"], names, notes))
    _flag_mixed_stage(checks)
    return checks


def _deploy_to_state(stage: StageConfig, facts: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(problems, notes) about a deploy_to that does not exist: fine when the first deploy can
    create it (its nearest existing parent takes a new directory), a problem otherwise."""
    if not facts.get("absent") or facts.get("parent_up") is None:
        return [], []
    up, state = int(facts["parent_up"]), str(facts.get("parent_state"))
    parent = str(facts.get("path") or stage.deploy_to)
    for _ in range(up):
        parent = posixpath.dirname(parent)
    if state == "ok":
        return [], [f"{stage.deploy_to} does not exist yet; the first deploy creates it (in {parent})"]
    if state == "notdir" and up == 0:
        return [f"{stage.deploy_to} exists but is not a directory"], []
    why = f"{parent} is not a directory" if state == "notdir" else f"parent {parent} is not writable"
    return [f"{stage.deploy_to} does not exist and cannot be created ({why})"], []


def _flag_mixed_stage(checks: list[HostCheck]) -> None:
    """A stage whose hosts serve different releases is not ready, even if every host is healthy:
    a host lost after the switch (and so never switched back) leaves exactly this behind."""
    live = {c.host: c.current for c in checks if c.current is not None}
    if len(set(live.values())) < 2:
        return
    detail = ", ".join(f"{h}: {r}" for h, r in live.items())
    message = (f"hosts serve different releases ({detail}); the next deploy, or "
               f"`shipit rollback --to RELEASE`, makes them agree")
    for c in checks:
        if c.host in live:
            c.ok = False
            c.problems.append(message)


def list_releases(stage: StageConfig, bus: EventBus) -> dict[str, list[ReleaseInfo]]:
    out = _read_only(stage, bus, lambda h: _facts_of(stage, bus, h))
    listing: dict[str, list[ReleaseInfo]] = {}
    for spec in stage.hosts:
        facts = out.get(spec.name)
        if isinstance(facts, BaseException) or facts is None:
            bus.emit("host.failed", host=spec.name, phase="releases", message=str(facts))
            listing[spec.name] = []
            continue
        listing[spec.name] = [
            ReleaseInfo(r["name"], r["revision"], r["name"] == facts["current"], r["bad"], r["complete"])
            for r in facts["releases"]
        ]
    return listing


def read_history(stage: StageConfig, bus: EventBus, limit: int = 20, offset: int = 0) -> list[dict[str, Any]]:
    """Deploy records merged from every reachable host, newest first, skipping the newest
    `offset` (the next page)."""
    # A deploy writes a few lines per host (switch, final record, failure): read enough of them.
    command = history_read_command(stage.deploy_to, (limit + offset) * 4)

    def one(host: Host) -> str:
        bus.emit("host.command", host=host.name, phase="history", command=command, dry_run=False)
        return host.run(command, check=False).stdout

    out = _read_only(stage, bus, one)
    texts = []
    for name, value in out.items():
        if isinstance(value, BaseException):
            bus.emit("host.failed", host=name, phase="history", message=str(value))
        else:
            texts.append(value)
    return merge(texts, limit, offset)


__all__ = [
    "DeployOptions", "DeployResult", "HostCheck", "ReleaseInfo", "check", "deploy",
    "list_releases", "read_history", "rollback",
]
