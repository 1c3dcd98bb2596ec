"""command: user-given shell commands for job systems shipit does not know (sidekiqctl, Slurm's
scontrol, `kubectl patch cronjob ... suspend`).

Each command runs through `sh -c` with these environment variables set (values quoted):
  SHIPIT_ADAPTER, SHIPIT_STAGE, SHIPIT_APPLICATION, SHIPIT_DEPLOY_ID, SHIPIT_HOST
  SHIPIT_TTL    (pause) seconds a pause should last if the system can expire it: a deploy that is
                killed outright then cannot leave work paused for good
  SHIPIT_GRACE  (stop) seconds between a graceful and a forced stop
  SHIPIT_ITEMS  (stop, requeue) the item ids, space separated
  SHIPIT_ITEMS_JSON  (stop, requeue) the full items as a JSON list
`list` prints a JSON list of running items: strings (ids) or objects with `id` and optionally
`name`, `started_at` (seconds since the epoch) and `detail`.
"""

from __future__ import annotations

import json
import shlex
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from shipit.adapters.base import Adapter, WorkItem
from shipit.adapters.registry import common_options, register
from shipit.config.model import HostSpec, StageConfig
from shipit.errors import CommandFailed, DeployFailed
from shipit.hosts.base import Host

if TYPE_CHECKING:
    from shipit.phases.context import DeployContext

LOCAL = "local"


def build_command(command: str, env: Mapping[str, str]) -> str:
    """`K='v' ... sh -c '<command>'`: the user's text runs as written, our values are quoted."""
    prefix = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items())
    return f"{prefix} sh -c {shlex.quote(command)}" if prefix else f"sh -c {shlex.quote(command)}"


def parse_items(adapter: str, host: str, stdout: str) -> list[WorkItem]:
    """The `list` command's JSON; a malformed answer is an error naming adapter and host, never
    taken for "nothing runs" (that would switch code under running work)."""
    text = stdout.strip()
    if not text:
        return []
    try:
        data = json.loads(text)
    except ValueError:
        raise DeployFailed(
            f"adapter {adapter}: the list command printed no JSON list: {text[:80]!r}"
        ) from None
    if not isinstance(data, list):
        raise DeployFailed(f"adapter {adapter}: the list command must print a JSON list")
    items = []
    for entry in data:
        if isinstance(entry, (str, int)) and not isinstance(entry, bool):
            items.append(WorkItem(id=str(entry), adapter=adapter, name=str(entry), host=host))
        elif isinstance(entry, dict) and isinstance(entry.get("id"), (str, int)):
            started = entry.get("started_at")
            detail = entry.get("detail")
            items.append(WorkItem(
                id=str(entry["id"]), adapter=adapter, name=str(entry.get("name") or entry["id"]),
                host=host,
                started_at=float(started) if isinstance(started, (int, float)) and not isinstance(started, bool) else None,
                detail=detail if isinstance(detail, dict) else {},
            ))
        else:
            raise DeployFailed(
                f"adapter {adapter}: list entries must be ids or objects with an id, got {entry!r:.60}"
            )
    return items


class CommandAdapter(Adapter):
    type = "command"

    def __init__(self, name: str, *, commands: Mapping[str, str | None], run_on: str = "hosts",
                 timeout: float = 60.0, repeat_pause: bool = False, **options: Any) -> None:
        super().__init__(name, **options)
        self.commands = dict(commands)
        self.run_on = run_on
        self.timeout = timeout
        self.repeat_pause = repeat_pause
        self._stop_repeat = threading.Event()
        self._repeater: threading.Thread | None = None
        self._local: Host | None = None
        self._polling = False

    # -- where the commands run ----------------------------------------------------------------
    def targets(self, ctx: DeployContext) -> list[Host]:
        if self.run_on != LOCAL:
            return self.hosts(ctx)
        if self._local is None:
            from shipit.hosts.local import LocalHost

            self._local = LocalHost(HostSpec(name=LOCAL, hostname="localhost", local=True))
        return [self._local]

    def env(self, ctx: DeployContext, host: Host, **extra: Any) -> dict[str, str]:
        base = {
            "SHIPIT_ADAPTER": self.name, "SHIPIT_STAGE": ctx.stage.name,
            "SHIPIT_APPLICATION": ctx.stage.application, "SHIPIT_DEPLOY_ID": ctx.deploy_id,
            "SHIPIT_HOST": host.name,
        }
        return base | {k: str(v) for k, v in extra.items()}

    def _run(self, ctx: DeployContext, host: Host, op: str, env: Mapping[str, str], *,
             mutating: bool = True) -> str | None:
        text = self.commands.get(op)
        if not text:
            return None
        command = build_command(text, env)
        from shipit.phases.common import emit_command

        if not self._polling:  # a wait polls `list`: announce it once, not every poll
            emit_command(ctx, host.name, "adapters", command)
        if ctx.dry_run and mutating:
            return None
        res = host.run(command, check=False, timeout=self.timeout)
        if not res.ok:
            raise CommandFailed(host.name, f"{self.name} {op} command", res.exit_code, res.stderr or res.stdout)
        return res.stdout

    def _each(self, ctx: DeployContext, fn: Any) -> list[Any]:
        from shipit.hosts.fanout import run_parallel

        hosts = self.targets(ctx)
        out = run_parallel(hosts, fn, limit=ctx.stage.parallelism)
        return [out[h.name] for h in hosts]

    # -- the adapter operations ----------------------------------------------------------------
    def pause(self, ctx: DeployContext) -> None:
        ttl = int(max(ctx.stage.jobs.lease_ttl, 1))
        self._each(ctx, lambda h: self._run(ctx, h, "pause", self.env(ctx, h, SHIPIT_TTL=ttl)))
        if self.repeat_pause and not ctx.dry_run and self.commands.get("pause"):
            self._start_repeat(ctx, ttl)

    def _start_repeat(self, ctx: DeployContext, ttl: int) -> None:
        """Keep an expiring pause alive like the gate's lease: re-run it every ttl/3 while this
        deploy lives. A killed deploy stops repeating and the pause expires on its own."""
        self._halt_repeat()
        stop = self._stop_repeat = threading.Event()

        def again(host: Host) -> None:
            command = build_command(self.commands["pause"] or "", self.env(ctx, host, SHIPIT_TTL=ttl))
            res = host.run(command, check=False, timeout=self.timeout)
            if not res.ok:
                ctx.bus.emit("log", host=host.name, phase="adapters", level="warning",
                             message=f"adapter {self.name}: repeating pause failed (exit code {res.exit_code})")

        def loop() -> None:
            while not stop.wait(max(ttl / 3, 0.2)):
                for host in self.targets(ctx):
                    try:
                        again(host)
                    except Exception as exc:  # noqa: BLE001 - the TTL still bounds the pause
                        ctx.bus.emit("log", host=host.name, phase="adapters", level="warning",
                                     message=f"adapter {self.name}: repeating pause failed: {exc}")

        self._repeater = threading.Thread(target=loop, name=f"pause-{self.name}", daemon=True)
        self._repeater.start()

    def _halt_repeat(self) -> None:
        self._stop_repeat.set()
        if self._repeater is not None:
            self._repeater.join(timeout=self.timeout + 5)
            self._repeater = None

    def running(self, ctx: DeployContext) -> list[WorkItem]:
        def one(h: Host) -> list[WorkItem]:
            out = self._run(ctx, h, "list", self.env(ctx, h), mutating=False)
            return parse_items(self.name, h.name, out or "")

        return [item for items in self._each(ctx, one) for item in items]

    def _with_items(self, ctx: DeployContext, op: str, items: Sequence[WorkItem], **extra: Any) -> list[WorkItem]:
        if not self.commands.get(op):
            return []
        by_host = {h.name: h for h in self.targets(ctx)}
        done: list[WorkItem] = []
        for name, host in by_host.items():
            mine = [i for i in items if i.host == name]
            if not mine:
                continue
            env = self.env(ctx, host, SHIPIT_ITEMS=" ".join(i.id for i in mine),
                           SHIPIT_ITEMS_JSON=json.dumps([i.to_dict() for i in mine]), **extra)
            # In the environment, not on stdin: Invoke feeds stdin a byte per 10 ms.
            self._run(ctx, host, op, env)
            done.extend(mine)
        return done

    def wait(self, ctx: DeployContext, items: Sequence[WorkItem], timeout: float) -> list[WorkItem]:
        self._polling = True
        try:
            return super().wait(ctx, items, timeout)
        finally:
            self._polling = False

    def stop(self, ctx: DeployContext, items: Sequence[WorkItem], *, grace: float) -> list[WorkItem]:
        if not self.commands.get("stop"):
            raise DeployFailed(
                f"adapter {self.name}: work still running and no stop command is configured"
            )
        return self._with_items(ctx, "stop", items, SHIPIT_GRACE=f"{grace:g}")

    def resume(self, ctx: DeployContext) -> None:
        # Stop repeating first: a pause re-run after the resume would pause the system again.
        self._halt_repeat()
        self._each(ctx, lambda h: self._run(ctx, h, "resume", self.env(ctx, h)))

    def requeue(self, ctx: DeployContext, items: Sequence[WorkItem]) -> list[WorkItem]:
        return self._with_items(ctx, "requeue", items)


def _factory(cfg: Any, stage: StageConfig) -> Adapter:
    commands = {op: getattr(cfg, op) for op in ("pause", "list", "stop", "resume", "requeue")}
    return CommandAdapter(cfg.name or cfg.type, commands=commands, run_on=cfg.run_on,
                          timeout=cfg.timeout, repeat_pause=cfg.repeat_pause, **common_options(cfg))


register("command", _factory)
