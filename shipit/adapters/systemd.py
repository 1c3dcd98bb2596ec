"""systemd: timers and long-running services named in shipit.yaml.

pause    `systemctl stop T.timer...` (no new timer runs) and `systemctl stop --no-block U...`
         (services get SIGTERM now: a worker finishes its current job and exits; that is the
         drain)
running  `systemctl is-active` of the services: each timer's `T.service` and every unit
stop     at the drain deadline: `systemctl stop --no-block` (for timer services still running),
         then after `grace` seconds `systemctl kill --signal=SIGKILL` on what is left
resume   `systemctl start T.timer... U...` (idempotent: starting an active unit does nothing)
requeue  `systemctl start T.service` for each timer run the deploy interrupted (once)

systemd cannot expire a stopped timer, so a deploy killed outright (SIGKILL, lost CI runner)
leaves the timers stopped until the next deploy or `systemctl start`; a failed or interrupted
deploy always starts them again. Services that run `shipit job run` are held by the gate
instead and need no adapter.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shipit.adapters.base import Adapter, WorkItem, run_command
from shipit.adapters.registry import common_options, register
from shipit.config.model import StageConfig
from shipit.errors import ConfigError
from shipit.hosts.base import Host

if TYPE_CHECKING:
    from shipit.phases.context import DeployContext

# `is-active` states in which a unit's processes may still run (a oneshot timer service stays
# "activating" for its whole run; a stopping worker is "deactivating").
BUSY_STATES = frozenset({"active", "activating", "deactivating", "reloading", "refreshing"})
# After SIGKILL, how long a unit may take to be reported inactive.
KILL_WAIT = 5.0


def unit_name(name: str, suffix: str) -> str:
    """`worker` -> `worker.service`; a name with a unit suffix is kept."""
    if "\n" in name or not name.strip():
        raise ConfigError(f"systemd unit name {name!r} is empty or spans lines")
    return name if "." in name.rsplit("/", 1)[-1] else f"{name}.{suffix}"


def timer_service(timer: str) -> str:
    """The service a timer starts by default (`Unit=` unset): same name, `.service`."""
    return timer.rsplit(".", 1)[0] + ".service"


def systemctl(binary: str, user: bool, verb: str, units: Sequence[str], *flags: str) -> str:
    """One systemctl command line; unit names are quoted, `binary` is the configured command."""
    parts = [binary, *(["--user"] if user else []), verb, *flags, *(shlex.quote(u) for u in units)]
    return " ".join(parts)


def pause_commands(binary: str, user: bool, timers: Sequence[str], units: Sequence[str]) -> list[str]:
    out = []
    if timers:
        out.append(systemctl(binary, user, "stop", timers))
    if units:
        out.append(systemctl(binary, user, "stop", units, "--no-block"))
    return out


def resume_commands(binary: str, user: bool, timers: Sequence[str], units: Sequence[str]) -> list[str]:
    return [systemctl(binary, user, "start", [*timers, *units])] if (timers or units) else []


def is_active_command(binary: str, user: bool, services: Sequence[str]) -> str:
    # is-active exits non-zero when any unit is inactive; its per-unit lines are what count.
    return systemctl(binary, user, "is-active", services) + " || true"


def parse_is_active(services: Sequence[str], stdout: str) -> dict[str, str]:
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if len(lines) != len(services):
        raise ValueError(f"systemctl is-active printed {len(lines)} states for {len(services)} units")
    return dict(zip(services, lines, strict=True))


class SystemdAdapter(Adapter):
    type = "systemd"

    def __init__(self, name: str, *, timers: Sequence[str] = (), units: Sequence[str] = (),
                 user: bool = False, binary: str = "systemctl", **options: Any) -> None:
        super().__init__(name, **options)
        self.timers = [unit_name(t, "timer") for t in timers]
        self.units = [unit_name(u, "service") for u in units]
        self.user = user
        self.binary = binary
        # service -> "timer" (a run a timer started) | "unit" (a long-running service)
        self.kinds = {timer_service(t): "timer" for t in self.timers} | {u: "unit" for u in self.units}

    def _cmd(self, verb: str, units: Sequence[str], *flags: str) -> str:
        return systemctl(self.binary, self.user, verb, units, *flags)

    def _each(self, ctx: DeployContext, commands: Sequence[str]) -> None:
        from shipit.hosts.fanout import run_parallel

        def one(host: Host) -> None:
            for command in commands:
                run_command(ctx, host, command)

        run_parallel(self.hosts(ctx), one, limit=ctx.stage.parallelism)

    def pause(self, ctx: DeployContext) -> None:
        self._each(ctx, pause_commands(self.binary, self.user, self.timers, self.units))

    def states(self, ctx: DeployContext, host: Host, *, announce: bool = True) -> dict[str, str]:
        services = list(self.kinds)
        command = is_active_command(self.binary, self.user, services)
        if announce:
            from shipit.phases.common import emit_command

            emit_command(ctx, host.name, "adapters", command)
        res = host.run(command)
        try:
            return parse_is_active(services, res.stdout)
        except ValueError as exc:
            from shipit.errors import DeployFailed

            raise DeployFailed(f"adapter {self.name}: {exc}") from None

    def _running(self, ctx: DeployContext, *, announce: bool) -> list[WorkItem]:
        from shipit.hosts.fanout import run_parallel

        hosts = self.hosts(ctx)
        found = run_parallel(hosts, lambda h: self.states(ctx, h, announce=announce), limit=ctx.stage.parallelism)
        return [
            WorkItem(id=svc, adapter=self.name, name=svc, host=h.name,
                     detail={"kind": self.kinds[svc], "state": state})
            for h in hosts for svc, state in found[h.name].items() if state in BUSY_STATES
        ]

    def running(self, ctx: DeployContext) -> list[WorkItem]:
        return self._running(ctx, announce=True)

    def wait(self, ctx: DeployContext, items: Sequence[WorkItem], timeout: float) -> list[WorkItem]:
        ids = {(i.host, i.id) for i in items}
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            still = [i for i in self._running(ctx, announce=False) if (i.host, i.id) in ids]
            if not still or time.monotonic() >= deadline:
                return still
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)

    def stop(self, ctx: DeployContext, items: Sequence[WorkItem], *, grace: float) -> list[WorkItem]:
        hosts = {h.name: h for h in self.hosts(ctx)}
        for name, host in hosts.items():
            mine = [i.id for i in items if i.host == name]
            if mine:
                run_command(ctx, host, self._cmd("stop", mine, "--no-block"))
        left = self.wait(ctx, items, grace) if not ctx.dry_run else []
        for name, host in hosts.items():
            mine = [i.id for i in left if i.host == name]
            if mine:
                run_command(ctx, host, self._cmd("kill", mine, "--signal=SIGKILL"))
        return list(items)

    def resume(self, ctx: DeployContext) -> None:
        self._each(ctx, resume_commands(self.binary, self.user, self.timers, self.units))

    def requeue(self, ctx: DeployContext, items: Sequence[WorkItem]) -> list[WorkItem]:
        # Long-running units came back with resume; a timer's interrupted run starts once more.
        again = [i for i in items if i.detail.get("kind") == "timer"]
        hosts = {h.name: h for h in self.hosts(ctx)}
        done = []
        for name, host in hosts.items():
            mine = [i for i in again if i.host == name]
            if mine:
                run_command(ctx, host, self._cmd("start", [i.id for i in mine], "--no-block"))
                done.extend(mine)
        return done


def _factory(cfg: Any, stage: StageConfig) -> Adapter:
    return SystemdAdapter(cfg.name or cfg.type, timers=cfg.timers, units=cfg.units, user=cfg.user,
                          binary=cfg.systemctl, **common_options(cfg))


register("systemd", _factory)
