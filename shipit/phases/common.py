"""Helpers the engine's phases share: per-deploy engine state, parallel runs with per-host
failure events, masked command events, and a critical-section count for Ctrl-C safety."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from shipit.hosts.base import CommandResult, Host
from shipit.hosts.fanout import FanOutError, run_parallel
from shipit.phases.context import DeployContext

T = TypeVar("T")


@dataclass
class EngineState:
    """What the engine's phases hand each other beyond DeployContext (kept out of the shared
    interface on purpose: only the engine reads it)."""

    mode: str = "deploy"  # "deploy" | "rollback"
    requested_revision: str | None = None
    rollback_to: str | None = None
    branch: str | None = None
    base_dir: str = "."
    tmpdir: str | None = None
    started: float = 0.0
    phase_started: dict[str, float] = field(default_factory=dict)  # phase -> time.monotonic()
    prepared: set[str] = field(default_factory=set)  # hosts where prepare may have created the release
    # host -> the release its switch replaced (None: it had none), read under the gate: the
    # rollback target, which the pre_deploy facts may no longer tell.
    switched_from: dict[str, str | None] = field(default_factory=dict)
    unreachable: set[str] = field(default_factory=set)
    secrets: list[str] = field(default_factory=list)
    inflight: int = 0
    idle: threading.Condition = field(default_factory=threading.Condition)


_states: dict[str, EngineState] = {}
_states_lock = threading.Lock()


def engine_state(ctx: DeployContext) -> EngineState:
    with _states_lock:
        return _states.setdefault(ctx.deploy_id, EngineState())


def drop_state(ctx: DeployContext) -> None:
    with _states_lock:
        _states.pop(ctx.deploy_id, None)


@contextlib.contextmanager
def critical(ctx: DeployContext) -> Iterator[None]:
    """Mark a host step that must finish before recovery touches the same paths (prepare,
    switch): a Ctrl-C leaves running threads behind, and recovery waits for these."""
    st = engine_state(ctx)
    with st.idle:
        st.inflight += 1
    try:
        yield
    finally:
        with st.idle:
            st.inflight -= 1
            st.idle.notify_all()


def wait_idle(ctx: DeployContext, timeout: float) -> bool:
    st = engine_state(ctx)
    with st.idle:
        return st.idle.wait_for(lambda: st.inflight == 0, timeout=timeout)


def mask(ctx: DeployContext, text: str) -> str:
    from shipit.config.secrets import mask as mask_text

    return mask_text(text, engine_state(ctx).secrets)


def emit_command(ctx: DeployContext, host: str, phase: str, command: str, **data: Any) -> None:
    ctx.bus.emit("host.command", host=host, phase=phase, command=mask(ctx, command), dry_run=ctx.dry_run, **data)


def run(ctx: DeployContext, host: Host, phase: str, command: str, *, check: bool = True) -> CommandResult | None:
    """Emit the command, then run it unless this is a dry run (then None)."""
    emit_command(ctx, host.name, phase, command)
    if ctx.dry_run:
        return None
    return host.run(command, check=check)


def parallel(
    ctx: DeployContext, phase: str, fn: Callable[[Host], T], hosts: Sequence[Host] | None = None
) -> dict[str, T]:
    """fn on every host (capped); every failing host gets a host.failed event, then the
    FanOutError (a ShipitError carrying the first failure's exit code) is raised."""
    try:
        return run_parallel(list(ctx.hosts if hosts is None else hosts), fn, limit=ctx.stage.parallelism)
    except FanOutError as exc:
        for name, err in exc.errors.items():
            ctx.bus.emit("host.failed", host=name, phase=phase, message=mask(ctx, str(err)))
        raise
