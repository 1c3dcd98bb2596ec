"""The deploy commands: init, check, deploy, rollback, releases, history, config.

Each command loads the stage, hands the work to shipit.runner with an EventBus, and renders
what comes back; none of them decides anything about a deploy itself.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from shipit.cli.common import (
    SESSION,
    as_dict,
    confirm,
    echo_json,
    interactive,
    load_stage,
    log_template,
    sigterm_as_interrupt,
    split_csv,
    stdout_is_tty,
)
from shipit.errors import ShipitError
from shipit.events import Event, EventBus
from shipit.output import attach
from shipit.output.format import line
from shipit.output.mask import mask_event, mask_value
from shipit.output.pager import NO_PAGER, page

if TYPE_CHECKING:  # pydantic models load lazily: `shipit --help` should not pay for them
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from shipit.config.model import StageConfig

STAGE = click.argument("stage", metavar="STAGE")
JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
YES = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")


def _console() -> Console:
    from rich.console import Console  # rich only to render a table: a deploy needs none

    # A pipe gets plain text at a width that never truncates a table.
    return Console(file=sys.stdout, highlight=False, width=None if stdout_is_tty() else 200)


def _quiet_bus(secrets: list[str]) -> EventBus:
    """For the read-only commands: only trouble (and everything with -v) goes to stderr."""
    bus = EventBus()

    def listener(event: Event) -> None:
        event = mask_event(event, secrets)
        trouble = event.kind == "host.failed" or (
            event.kind == "log" and event.data.get("level") in ("warning", "error")
        )
        if trouble or SESSION.verbose:
            click.echo(line(event), err=True)

    bus.subscribe(listener)
    return bus


def _run_deploy(stage: StageConfig, as_json: bool, action: Any) -> None:
    """Render the deploy-shaped run `action(bus)` and exit with its result's code."""
    bus = EventBus()
    renderer = attach(
        bus,
        json=as_json,
        stream=sys.stdout,
        secrets=SESSION.secrets,
        log_path=log_template(stage),
        verbose=SESSION.verbose,
    )
    result: Any = None
    try:
        with sigterm_as_interrupt():
            result = action(bus)
    except ShipitError as exc:
        # The runner reports its own failures in the result; this is one it could not (a
        # failure before it started). A --json reader still gets its closing summary.
        result = _failed_summary(stage, str(exc), exc.exit_code) if as_json else None
        raise
    except KeyboardInterrupt:
        result = _failed_summary(stage, "interrupted", 130, "interrupted") if as_json else None
        raise
    finally:
        # Even on an exception the live view must let go of the terminal and the log close.
        renderer.finish(result)
    click.get_current_context().exit(result.exit_code)


def _failed_summary(
    stage: StageConfig, error: str, exit_code: int, outcome: str = "failed"
) -> dict[str, Any]:
    return {
        "deploy_id": None,
        "outcome": outcome,
        "release": None,
        "revision": None,
        "error": error,
        "durations": {},
        "exit_code": exit_code,
        "hosts": [h.name for h in stage.hosts],
    }


@click.command("init")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init_cmd(force: bool) -> None:
    """Write a starter shipit.yaml (in the current directory, or --config PATH)."""
    from pathlib import Path

    from shipit.config.init import write_starter

    target = Path(SESSION.config or "shipit.yaml")
    written = write_starter(target, force=force)
    click.echo(f"wrote {written or target}; edit it, then run: shipit check STAGE")


@click.command("check")
@STAGE
@click.option("--hosts", metavar="H,..", help="Only these hosts (names as in shipit.yaml).")
@click.option("--roles", metavar="R,..", help="Only hosts with one of these roles.")
@JSON
def check_cmd(stage: str, hosts: str | None, roles: str | None, as_json: bool) -> None:
    """Check every host of STAGE is ready to deploy (exit 1 on any problem)."""
    from shipit import runner

    conf = load_stage(stage, hosts=split_csv(hosts), roles=split_csv(roles))
    results = runner.check(conf, _quiet_bus(SESSION.secrets))
    rows = mask_value(as_dict(results), SESSION.secrets)
    if as_json:
        echo_json(rows)
    else:
        from rich.table import Table

        table = Table(box=None, pad_edge=False)
        for col in ("host", "ok", "current", "releases", "problems"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                str(r.get("host")),
                "[green]ok[/]" if r.get("ok") else "[red]PROBLEM[/]",
                str(r.get("current") or "-"),
                str(
                    len(r["releases"])
                    if isinstance(r.get("releases"), list)
                    else r.get("releases", "")
                ),
                _problems_and_notes(r),
            )
        _console().print(table)
    bad = [r for r in rows if not r.get("ok")]
    click.get_current_context().exit(1 if bad else 0)


def _problems_and_notes(row: dict[str, Any]) -> Text:
    """The problems, then the notes (facts that are not problems: "deploy_to does not exist yet;
    the first deploy creates it") dimmed, so an ok host stays ok at a glance."""
    from rich.text import Text

    cell = Text("; ".join(map(str, row.get("problems") or [])))
    notes = "; ".join(map(str, row.get("notes") or []))
    if notes:
        cell.append(("; " if cell.plain else "") + notes, style="dim")
    return cell


@click.command("deploy")
@STAGE
@click.option("--revision", "-r", metavar="REF", help="Git ref to deploy (default: the branch).")
@click.option("--hosts", metavar="H,..", help="Only these hosts (names as in shipit.yaml).")
@click.option("--roles", metavar="R,..", help="Only hosts with one of these roles.")
@click.option("--dry-run", is_flag=True, help="Show the commands, change nothing.")
@YES
@JSON
@click.option(
    "--lock-wait",
    type=click.FloatRange(min=0),
    default=0.0,
    metavar="SECONDS",
    help="Wait this long for a gate held by another deploy (default: fail at once).",
)
def deploy_cmd(
    stage: str,
    revision: str | None,
    hosts: str | None,
    roles: str | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
    lock_wait: float,
) -> None:
    """Deploy STAGE: drain jobs, switch the release, restart the jobs on the new code."""
    from shipit import runner

    conf = load_stage(stage, hosts=split_csv(hosts), roles=split_csv(roles))
    if not (yes or dry_run) and interactive():
        names = ", ".join(h.name for h in conf.hosts)
        what = revision or (conf.source.branch if conf.source.repo else conf.source.dir)
        confirm(f"Deploy {what} to {conf.name} ({names})?")
    opts = runner.DeployOptions(revision=revision, dry_run=dry_run, lock_wait=lock_wait)
    _run_deploy(conf, as_json, lambda bus: runner.deploy(conf, opts, bus))


@click.command("rollback")
@STAGE
@click.option(
    "--to", "to", metavar="RELEASE", help="Release to go back to (default: the previous one)."
)
@YES
@JSON
def rollback_cmd(stage: str, to: str | None, yes: bool, as_json: bool) -> None:
    """Put the previous release (or --to RELEASE) of STAGE back in place."""
    from shipit import runner

    conf = load_stage(stage)
    if not yes and interactive():
        confirm(f"Roll {conf.name} back to {to or 'the previous release'}?")
    opts = runner.DeployOptions()
    _run_deploy(conf, as_json, lambda bus: runner.rollback(conf, opts, bus, to=to))


@click.command("releases")
@STAGE
@JSON
def releases_cmd(stage: str, as_json: bool) -> None:
    """List the releases on every host of STAGE."""
    from shipit import runner

    conf = load_stage(stage)
    found = mask_value(
        as_dict(runner.list_releases(conf, _quiet_bus(SESSION.secrets))), SESSION.secrets
    )
    if as_json:
        echo_json(found)
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("host", "release", "revision", ""):
        table.add_column(col)
    for host, releases in found.items():
        for rel in releases:
            flags = " ".join(
                f for f, on in (("current", rel.get("current")), ("bad", rel.get("bad"))) if on
            )
            table.add_row(host, str(rel.get("name")), str(rel.get("revision") or "-"), flags)
    _console().print(table)


# Short phase names for the durations column, in phase order.
_PHASE_ABBREV = {
    "pre_deploy": "pre", "drain_jobs": "drain", "release": "rel", "restart_jobs": "rst",
    "rollback": "rollback",
}
_OUTCOME_STYLE = {"success": "green", "rolled_back": "yellow", "failed": "red", "interrupted": "red"}
# From this width on (a pipe gets 200) the table adds the deploy id, the release, the host names
# and every phase's duration; below it, it fits 80 columns.
_WIDE = 150


def _when(value: Any, *, seconds: bool = True) -> str:
    import time

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return time.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M", time.localtime(value))
    return str(value) if value is not None else "-"


def _short_revision(rev: Any) -> str:
    """A git SHA as its first 8 hex digits (keeping `-dirty`), a directory's content hash as
    its first 8; anything else as written."""
    import re

    if not rev:
        return "-"
    text = str(rev)
    m = re.fullmatch(r"([0-9a-f]{40})(-dirty)?", text)
    if m:
        return m.group(1)[:8] + (m.group(2) or "")
    m = re.fullmatch(r"content-([0-9a-f]{16})", text)
    return f"content-{m.group(1)[:8]}" if m else text


def _durations(rec: dict[str, Any]) -> dict[str, float]:
    raw = rec.get("durations")
    if not isinstance(raw, dict):
        return {}
    out = {}
    for k, v in raw.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[str(k)] = float(v)
    return out


def _phase_order(durations: dict[str, float]) -> list[str]:
    return [p for p in _PHASE_ABBREV if p in durations] + [p for p in durations if p not in _PHASE_ABBREV]


def _took(rec: dict[str, Any]) -> str:
    """The total and the longest phase: `3.1s (drain 2.3s)`."""
    from shipit.output.format import seconds

    durations = _durations(rec)
    if not durations:
        return "-"
    total = sum(durations.values())
    longest = max(_phase_order(durations), key=lambda p: durations[p])
    return f"{seconds(total)} ({_PHASE_ABBREV.get(longest, longest)} {seconds(durations[longest])})"


def _phases(rec: dict[str, Any]) -> str:
    """Every phase's duration: `pre 0.1s drain 2.3s rel 0.4s rst 0.2s`."""
    from shipit.output.format import seconds

    durations = _durations(rec)
    return " ".join(
        f"{_PHASE_ABBREV.get(p, p)} {seconds(durations[p])}" for p in _phase_order(durations)
    ) or "-"


def _hosts(rec: dict[str, Any], *, names: bool) -> str:
    hosts = rec.get("hosts")
    if not isinstance(hosts, list):
        return "-"
    joined = ",".join(map(str, hosts))
    return joined if names and len(joined) <= 24 else str(len(hosts))


def _first(rec: dict[str, Any], *keys: str) -> Any:
    return next((rec[k] for k in keys if rec.get(k) is not None), None)


def _fit(titles: list[str], rows: list[list[str]], width: int) -> list[int]:
    """Column widths for `width`: the content's when it fits. Otherwise the time column (last)
    first drops the longest phase on the rows where it does not fit, keeping their total; when
    even the totals do not fit, the actor gives way, then the revision (each keeps a readable
    prefix and an ellipsis). `rows` are changed."""

    def natural(i: int) -> int:
        return max([len(titles[i])] + [len(r[i]) for r in rows])

    widths = [natural(i) for i in range(len(titles))]
    room = width - sum(widths[:-1]) - 2 * (len(widths) - 1)
    if widths[-1] <= room:
        return widths
    totals = max([len(titles[-1])] + [len(r[-1].split(" (")[0]) for r in rows])
    for row in rows:
        if len(row[-1]) > max(room, totals):
            row[-1] = row[-1].split(" (")[0]
    widths[-1] = natural(len(titles) - 1)
    excess = widths[-1] - room
    for name, floor in (("who", 8), ("revision", 8)):
        i = titles.index(name)
        cut = min(max(excess, 0), max(widths[i] - floor, 0))
        widths[i] -= cut
        excess -= cut
    return widths


def history_table(records: list[dict[str, Any]], width: int) -> Table:
    """who, when, what, on how many hosts, how it ended, how long it took; wider terminals (and
    pipes) also get the deploy id, the release, the host names and every phase."""
    from rich.text import Text

    wide = width >= _WIDE
    titles = ["when", *(["deploy"] if wide else []), "who", "revision",
              *(["release"] if wide else []), "hosts", "outcome", "durations" if wide else "took"]
    rows: list[list[str]] = []
    outcomes: list[str] = []
    for rec in records:
        outcome = str(rec.get("outcome") or "-")
        outcomes.append(outcome)
        row = [_when(_first(rec, "finished", "started", "ts"), seconds=wide)]
        if wide:
            row.append(str(_first(rec, "deploy_id", "id") or "-"))
        row += [str(_first(rec, "actor", "who") or "-"), _short_revision(rec.get("revision"))]
        if wide:
            row.append(str(rec.get("release") or "-"))
        row += [
            _hosts(rec, names=wide),
            f"{outcome} (rollback)" if rec.get("kind") == "rollback" else outcome,
            _phases(rec) if wide else _took(rec),
        ]
        rows.append(row)
    widths = _fit(titles, rows, width)
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False)
    for title, w in zip(titles, widths, strict=True):
        table.add_column(title, no_wrap=True, overflow="ellipsis", min_width=w, max_width=w)
    for row, outcome in zip(rows, outcomes, strict=True):
        cells: list[Any] = list(row)
        cells[titles.index("outcome")] = Text(cells[titles.index("outcome")],
                                              style=_OUTCOME_STYLE.get(outcome, ""))
        table.add_row(*cells)
    return table


@click.command("history")
@STAGE
@click.option("--limit", "-n", type=click.IntRange(min=1), default=20, show_default=True,
              help="How many deploys to show.")
@click.option("--offset", type=click.IntRange(min=0), default=0, metavar="N",
              help="Skip the newest N deploys (the next page: --offset 20).")
@NO_PAGER
@JSON
def history_cmd(stage: str, limit: int, offset: int, no_pager: bool, as_json: bool) -> None:
    """Show the last deploys of STAGE (who, when, what, how it ended, how long it took)."""
    from shipit import runner

    conf = load_stage(stage)
    records = mask_value(
        as_dict(runner.read_history(conf, _quiet_bus(SESSION.secrets), limit=limit, offset=offset)),
        SESSION.secrets,
    )
    if as_json:
        echo_json(records)
        return
    if not records:
        click.echo(f"no deploys recorded on {stage}" if not offset
                   else f"no deploys on {stage} older than the newest {offset}")
        return
    console = _console()
    with console.capture() as captured:
        console.print(history_table(records, console.width))
    page(captured.get(), pager=not no_pager)


@click.command("config")
@STAGE
def config_cmd(stage: str) -> None:
    """Print the resolved configuration of STAGE as YAML (secrets masked)."""
    import yaml

    conf = load_stage(stage)
    try:
        from shipit.config.secrets import masked_config
    except ImportError:
        data: Any = mask_value(conf.model_dump(mode="json"), SESSION.secrets)
    else:
        data = masked_config(conf)
    text = (
        data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    )
    click.echo(text.rstrip("\n"))


COMMANDS = (init_cmd, check_cmd, deploy_cmd, rollback_cmd, releases_cmd, history_cmd, config_cmd)
__all__ = ["COMMANDS"]
