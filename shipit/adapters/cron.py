"""cron: the project's crontab entries, each run through `shipit job run`.

Every entry `shipit cron install` writes runs `shipit job run`, so the gate already holds cron
jobs during a deploy: a cron tick while the gate is closed waits (bounded) and then runs on the
new release. Pausing cron therefore never edits the crontab, and a failed or killed deploy can
never leave cron disabled. The adapter only says so in the event stream (and, with
`install: true`, rewrites the block after a deploy so the crontab follows shipit.yaml).

Crontab edits are a pure merge (`merge_block`) of the host's `crontab -l` output: the block
between `# BEGIN shipit <application>` and `# END shipit <application>` is replaced, every
other line is kept as it was.
"""

from __future__ import annotations

import contextlib
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shipit.adapters.base import Adapter, WorkItem
from shipit.adapters.registry import common_options, register
from shipit.commands.release import shell_path
from shipit.config.model import CronEntry, HostSpec, StageConfig
from shipit.errors import CommandFailed, ConfigError, ShipitError
from shipit.hosts.base import Host

if TYPE_CHECKING:
    from shipit.phases.context import DeployContext

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MACROS = frozenset({"@reboot", "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})
_FIELD = re.compile(r"^[A-Za-z0-9*/,\-]+$")

READ_COMMAND = "crontab -l"
WRITE_COMMAND = "crontab -"


def cron_entry_problem(entry: CronEntry) -> tuple[str, str] | None:
    """(key, message) for a malformed entry, else None. A newline would smuggle extra crontab
    lines in; a schedule cron cannot read would make `crontab -` refuse the whole file."""
    if not _NAME.match(entry.name):
        return "name", f"cron entry name {entry.name!r}: use letters, digits, '.', '_' and '-'"
    if "\n" in entry.command or "\r" in entry.command or not entry.command.strip():
        return "command", "a cron command must be one non-empty line"
    fields = entry.schedule.split()
    if len(fields) == 1 and fields[0] in _MACROS:
        return None
    if len(fields) != 5 or not all(_FIELD.match(f) for f in fields):
        return "schedule", (
            f"cron schedule {entry.schedule!r}: give five fields (minute hour day month weekday) "
            f"or one of {', '.join(sorted(_MACROS))}"
        )
    return None


def begin_marker(application: str) -> str:
    return f"# BEGIN shipit {application}"


def end_marker(application: str) -> str:
    return f"# END shipit {application}"


def _cron_escape(text: str) -> str:
    # cron turns an unescaped % into a newline (stdin for the command); `\%` is a literal %.
    return text.replace("%", "\\%")


def store_arg(url: str) -> str:
    """The store URL as shell text; a `~/` path keeps meaning the cron user's home."""
    scheme, sep, path = url.partition(":")
    if sep and path.startswith("~/"):
        return f"{shlex.quote(scheme + ':')}{shell_path(path)}"
    return shlex.quote(url)


def entry_line(stage: StageConfig, entry: CronEntry, host: HostSpec, store_url: str) -> str:
    """One crontab line. It points at `current` (never a release folder), both for the `cd` and
    for `--cwd`, which the supervisor resolves only after the gate opens. jobs.grace goes in as
    `$SHIPIT_GRACE`, the supervisor's default grace (a deploy's stop request carries its own);
    not as `--grace`, which would make it the job's own choice, pinned until the next install."""
    current = shell_path(f"{stage.deploy_to.rstrip('/')}/current")
    command = (
        f"cd {current} && SHIPIT_GRACE={stage.jobs.grace:g} {stage.shipit_command} job run"
        f" --name {shlex.quote(entry.name)}"
        f" --store {store_arg(store_url)} --host {shlex.quote(host.name)} --cwd {current}"
        f" -- sh -c {shlex.quote(entry.command)}"
    )
    return f"{entry.schedule} {_cron_escape(command)}"


def entries_for(stage: StageConfig, host: HostSpec) -> list[CronEntry]:
    return [e for e in stage.cron if not e.roles or set(e.roles) & set(host.roles)]


def block_lines(stage: StageConfig, host: HostSpec, store_url: str) -> list[str]:
    """The marked block for this host ([] when no entry applies to its roles)."""
    if "\n" in stage.application:
        raise ConfigError("application: must be one line to mark a crontab block")
    entries = entries_for(stage, host)
    if not entries:
        return []
    return [
        begin_marker(stage.application),
        "# managed by `shipit cron install`: edits inside this block are replaced",
        *(entry_line(stage, e, host, store_url) for e in entries),
        end_marker(stage.application),
    ]


class CrontabError(ShipitError):
    exit_code = 1


def merge_block(existing: str, application: str, block: Sequence[str]) -> str:
    """`existing` crontab text with our block replaced by `block` (removed when empty). The
    block keeps its place; a first install appends it. Other lines are kept byte for byte."""
    begin, end = begin_marker(application), end_marker(application)
    lines = existing.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == begin]
    ends = [i for i, line in enumerate(lines) if line.strip() == end]
    if len(starts) > 1 or len(ends) > 1 or len(starts) != len(ends) or (starts and ends[0] < starts[0]):
        raise CrontabError(
            f"the crontab has unmatched or repeated '{begin}' / '{end}' lines; fix it with `crontab -e`"
        )
    out = [*lines[: starts[0]], *block, *lines[ends[0] + 1 :]] if starts else [*lines, *block]
    # cron ignores (some versions reject) a last line without its newline.
    return "\n".join(out) + "\n" if out else ""


def write_command(text: str) -> str:
    """Install `text` as the whole crontab (an empty text installs an empty crontab)."""
    lines = text.splitlines()
    if not lines:
        return f"printf '' | {WRITE_COMMAND}"
    return "printf '%s\\n' " + " ".join(shlex.quote(line) for line in lines) + f" | {WRITE_COMMAND}"


def current_block(existing: str, application: str) -> list[str]:
    begin, end = begin_marker(application), end_marker(application)
    lines = existing.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == begin)
        stop = next(i for i, line in enumerate(lines) if i > start and line.strip() == end)
    except StopIteration:
        return []
    return lines[start : stop + 1]


@dataclass(frozen=True)
class CronChange:
    host: str
    before: list[str]  # our block as it was
    after: list[str]  # our block as it is now
    changed: bool


def read_crontab(host: Host) -> str:
    """The user's crontab text ('' when they have none yet)."""
    res = host.run(READ_COMMAND, check=False)
    if res.ok:
        return res.stdout
    # "no crontab for USER": an empty crontab. Anything else must not be taken for empty, or
    # the write that follows would wipe the user's lines.
    if "no crontab" in (res.stderr + res.stdout).lower():
        return ""
    raise CommandFailed(host.name, READ_COMMAND, res.exit_code, res.stderr or res.stdout)


def apply_block(host: Host, stage: StageConfig, store_url: str, *, remove: bool = False,
                dry_run: bool = False) -> CronChange:
    existing = read_crontab(host)
    before = current_block(existing, stage.application)
    block = [] if remove else block_lines(stage, host.spec, store_url)
    new = merge_block(existing, stage.application, block)
    changed = new != existing and before != block
    if changed and not dry_run:
        # Not through stdin: Invoke feeds a string stdin a byte per 10 ms (seconds per crontab).
        res = host.run(write_command(new), check=False)
        if not res.ok:
            # The command text holds the user's whole crontab: name the step, not the text.
            raise CommandFailed(host.name, WRITE_COMMAND, res.exit_code, res.stderr or res.stdout)
    return CronChange(host.name, before, block, changed)


class CronAdapter(Adapter):
    type = "cron"

    def __init__(self, name: str, *, install: bool = False, **options: Any) -> None:
        super().__init__(name, **options)
        self.install = install

    def pause(self, ctx: DeployContext) -> None:
        # Nothing to edit: the entries run `shipit job run`, which waits at the closed gate.
        return None

    def running(self, ctx: DeployContext) -> list[WorkItem]:
        # Running cron jobs are `shipit job run` runs: drain_jobs already lists and stops them.
        return []

    def stop(self, ctx: DeployContext, items: Sequence[WorkItem], *, grace: float) -> list[WorkItem]:
        return []

    def resume(self, ctx: DeployContext) -> None:
        if not self.install or not ctx.stage.cron:
            return
        from shipit.gate.url import store_url_for
        from shipit.phases.common import emit_command

        url = store_url_for(ctx.stage)
        for host in self.hosts(ctx):
            emit_command(ctx, host.name, "adapters", READ_COMMAND)
            emit_command(ctx, host.name, "adapters", WRITE_COMMAND)
            apply_block(host, ctx.stage, url, dry_run=ctx.dry_run)


def _factory(cfg: Any, stage: StageConfig) -> Adapter:
    return CronAdapter(cfg.name or cfg.type, install=getattr(cfg, "install", False), **common_options(cfg))


register("cron", _factory)


def cron_on_stage(stage: StageConfig, action: str, *, dry_run: bool = False) -> dict[str, CronChange | BaseException]:
    """install | remove | show on every host of the stage, in parallel. A host's failure is
    returned in its slot (the others still get their crontab); nothing here prints."""
    from shipit.gate.url import store_url_for
    from shipit.hosts.fanout import FanOutError, run_parallel
    from shipit.hosts.open import open_host

    url = store_url_for(stage)
    hosts = [open_host(spec, stage.ssh) for spec in stage.hosts]

    def one(host: Host) -> CronChange:
        if action == "show":
            existing = read_crontab(host)
            return CronChange(host.name, current_block(existing, stage.application),
                              block_lines(stage, host.spec, url), False)
        return apply_block(host, stage, url, remove=action == "remove", dry_run=dry_run)

    try:
        try:
            out: dict[str, Any] = run_parallel(hosts, one, limit=stage.parallelism)
        except FanOutError as exc:
            out = {**exc.results, **exc.errors}
    finally:
        for host in hosts:
            with contextlib.suppress(Exception):  # closing is best effort
                host.close()
    return {h.name: out[h.name] for h in hosts}
