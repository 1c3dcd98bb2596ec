"""Hooks around every phase: `before_<phase>` / `after_<phase>`.

Order at one hook point: the config hooks as written (`run:` on the hosts with the hook's roles,
`local:` on this machine, `task:` an Invoke task from tasks.py next to shipit.yaml), then the
executable file `hooks/<point>` next to shipit.yaml (Kamal style). All get the SHIPIT_* env.
`roles:` on a `local:` or `task:` hook does not multiply it: it still runs once, here, but only
when the deploy includes a host with one of those roles (a `--roles web` deploy skips a db-only
migrate). A failing hook raises CommandFailed (host, command, exit code, last lines of output).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from shipit.commands.hooks import hook_command
from shipit.config.model import HookSpec, HostSpec
from shipit.errors import CommandFailed
from shipit.hosts.base import Host
from shipit.hosts.local import LocalHost
from shipit.phases.common import emit_command, engine_state, mask, parallel
from shipit.phases.context import DeployContext

_LOCAL = HostSpec(name="local", hostname="localhost", local=True)
_SKIP = "skipped"


def hook_env(ctx: DeployContext) -> dict[str, str]:
    stage = ctx.stage
    return {
        "SHIPIT_STAGE": stage.name,
        "SHIPIT_APPLICATION": stage.application,
        "SHIPIT_DEPLOY_ID": ctx.deploy_id,
        "SHIPIT_RELEASE": ctx.release or "",
        "SHIPIT_RELEASE_PATH": ctx.release_path if ctx.release else "",
        "SHIPIT_REVISION": ctx.revision or "",
        "SHIPIT_PREVIOUS_RELEASE": ctx.previous_release or "",
        "SHIPIT_DEPLOY_TO": stage.deploy_to,
        "SHIPIT_HOSTS": ",".join(h.name for h in ctx.hosts),
        "SHIPIT_ACTOR": ctx.actor,
    }


def _hosts_for(ctx: DeployContext, spec: HookSpec) -> list[Host]:
    if not spec.roles:
        return list(ctx.hosts)
    wanted = set(spec.roles)
    return [h for h in ctx.hosts if wanted & set(h.spec.roles)]


def _on_line(ctx: DeployContext, host: str, point: str):  # type: ignore[no-untyped-def]
    def emit(line: str) -> None:
        ctx.bus.emit("host.output", host=host, phase=point, message=mask(ctx, line.rstrip("\n")))

    return emit


def _run_remote(ctx: DeployContext, point: str, spec: HookSpec) -> None:
    assert spec.run
    env = hook_env(ctx)
    release_path = ctx.release_path if ctx.release else None
    command = hook_command(spec.run, env, ctx.stage.deploy_to, release_path)

    def one(host: Host) -> None:
        emit_command(ctx, host.name, point, command)
        if ctx.dry_run:
            return
        res = host.run(command, check=False, on_line=_on_line(ctx, host.name, point))
        if not res.ok:
            raise CommandFailed(host.name, mask(ctx, spec.run or ""), res.exit_code, mask(ctx, res.stdout + res.stderr))

    parallel(ctx, point, one, _hosts_for(ctx, spec))


def _run_local(ctx: DeployContext, point: str, shown: str, command: str) -> None:
    """Run on this machine, in the directory of shipit.yaml, through Invoke (LocalHost)."""
    emit_command(ctx, "local", point, shown)
    if ctx.dry_run:
        return
    env = hook_env(ctx)
    base = engine_state(ctx).base_dir
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    full = f"cd {shlex.quote(base)} && env {exports} sh -c {shlex.quote(command)}"
    host = LocalHost(_LOCAL)
    try:
        res = host.run(full, check=False, on_line=_on_line(ctx, "local", point))
    finally:
        host.close()
    if not res.ok:
        raise CommandFailed("local", mask(ctx, shown), res.exit_code, mask(ctx, res.stdout + res.stderr))


def _wanted_here(ctx: DeployContext, spec: HookSpec) -> bool:
    """A local/task hook with roles runs only when the deploy includes a host with one of them."""
    return not spec.roles or any(set(spec.roles) & set(h.spec.roles) for h in ctx.hosts)


def _skipped(ctx: DeployContext, point: str, shown: str, spec: HookSpec) -> None:
    roles = ", ".join(spec.roles)
    ctx.bus.emit(
        "log", phase=point, level="info",
        message=mask(ctx, f"hook skipped: {shown} (roles: {roles}; no host of this deploy has one)"),
    )


def _steps(ctx: DeployContext, point: str) -> list[tuple[str, str, Callable[[], None]]]:
    steps: list[tuple[str, str, Callable[[], None]]] = []
    for spec in ctx.stage.hooks.get(point, ()):
        if not spec.run and not _wanted_here(ctx, spec):
            shown = spec.local or f"invoke {spec.task}"
            steps.append((_SKIP, shown, lambda s=spec, w=shown: _skipped(ctx, point, w, s)))
            continue
        if spec.run:
            steps.append(("hosts", spec.run, lambda s=spec: _run_remote(ctx, point, s)))
        elif spec.local:
            steps.append(("local", spec.local, lambda c=spec.local: _run_local(ctx, point, c, c)))
        elif spec.task:
            argv = shlex.join([sys.executable, "-m", "invoke", *shlex.split(spec.task)])
            shown = f"invoke {spec.task}"
            steps.append(("task", shown, lambda a=argv, s=shown: _run_local(ctx, point, s, a)))
    hook_file = Path(engine_state(ctx).base_dir) / "hooks" / point
    if hook_file.is_file():
        steps.append(("file", f"hooks/{point}", lambda: _run_file(ctx, point, hook_file)))
    return steps


def _run_file(ctx: DeployContext, point: str, path: Path) -> None:
    if not os.access(path, os.X_OK):
        raise CommandFailed("local", f"hooks/{point}", 126, f"hooks/{point} is not executable (chmod +x it)")
    _run_local(ctx, point, f"hooks/{point}", shlex.quote(str(path.resolve())))


def run_hooks(ctx: DeployContext, point: str) -> None:
    """Run every hook of one hook point, in order; the first failure stops the rest."""
    for where, what, step in _steps(ctx, point):
        if where == _SKIP:
            step()  # says so in the output; no hook.started/finished for a hook that never ran
            continue
        ctx.bus.emit("hook.started", phase=point, hook=point, where=where, command=mask(ctx, what))
        ok = False
        try:
            step()
            ok = True
        finally:
            ctx.bus.emit("hook.finished", phase=point, hook=point, where=where, ok=ok)
