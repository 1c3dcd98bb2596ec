"""`shipit cron install|show|remove STAGE`: the project's crontab block on every host."""

from __future__ import annotations

import click

from shipit.cli.common import echo_json, load_stage, split_csv
from shipit.errors import ShipitError

_HOSTS = click.option("--hosts", metavar="H,..", help="Only these hosts (names as in shipit.yaml).")
_ROLES = click.option("--roles", metavar="R,..", help="Only hosts with one of these roles.")
_JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")


@click.group("cron")
def cron() -> None:
    """Crontab entries from shipit.yaml `cron:`, each run through `shipit job run` (so deploys
    hold them at the gate: the crontab is never edited during a deploy)."""


def _run(stage_name: str, action: str, hosts: str | None, roles: str | None, as_json: bool,
         dry_run: bool = False) -> None:
    from shipit.adapters.cron import CronChange, cron_on_stage

    stage = load_stage(stage_name, hosts=split_csv(hosts), roles=split_csv(roles))
    if action == "install" and not stage.cron:
        raise ShipitError(f"{stage.config_path}: no `cron:` entries to install (use `shipit cron remove` to clear)")
    results = cron_on_stage(stage, action, dry_run=dry_run)
    failed = {h: r for h, r in results.items() if isinstance(r, BaseException)}
    if as_json:
        echo_json({
            h: ({"error": str(r).splitlines()[0]} if isinstance(r, BaseException)
                else {"installed": r.before, "wanted": r.after, "changed": r.changed})
            for h, r in results.items()
        })
    else:
        for host, res in results.items():
            if isinstance(res, BaseException):
                click.echo(f"{host}: error: {str(res).splitlines()[0] if str(res) else type(res).__name__}", err=True)
                continue
            assert isinstance(res, CronChange)
            click.echo(_describe(host, action, res, dry_run))
            if action == "show":
                for line in res.before:
                    click.echo(f"  {line}")
    if failed:
        first = next(iter(failed.values()))
        err = ShipitError(f"cron {action}: {len(failed)} of {len(results)} hosts failed ({', '.join(failed)})")
        err.exit_code = getattr(first, "exit_code", 1)
        raise err


def _describe(host: str, action: str, res: object, dry_run: bool) -> str:
    from shipit.adapters.cron import CronChange

    assert isinstance(res, CronChange)
    entries = max(0, len(res.after) - 3)
    would = "would be " if dry_run else ""
    if action == "show":
        if not res.before:
            return f"{host}: no shipit block installed" + (" (shipit.yaml has entries for it)" if res.after else "")
        state = "up to date" if res.before == res.after else "differs from shipit.yaml (run `shipit cron install`)"
        return f"{host}: {max(0, len(res.before) - 3)} entries, {state}"
    if action == "remove":
        return f"{host}: block {would}removed" if res.changed else f"{host}: no block to remove"
    if not res.changed:
        return f"{host}: {entries} entries, unchanged"
    return f"{host}: {entries} entries {would}installed" if res.after else f"{host}: no entries for its roles; block {would}removed"


@cron.command("install")
@click.argument("stage")
@_HOSTS
@_ROLES
@click.option("--dry-run", is_flag=True, help="Say what would change, change nothing.")
@_JSON
def install_cmd(stage: str, hosts: str | None, roles: str | None, dry_run: bool, as_json: bool) -> None:
    """Write the `cron:` entries into the deploy user's crontab (replaces shipit's block only)."""
    _run(stage, "install", hosts, roles, as_json, dry_run)


@cron.command("show")
@click.argument("stage")
@_HOSTS
@_ROLES
@_JSON
def show_cmd(stage: str, hosts: str | None, roles: str | None, as_json: bool) -> None:
    """Show the installed block on every host and whether it matches shipit.yaml."""
    _run(stage, "show", hosts, roles, as_json)


@cron.command("remove")
@click.argument("stage")
@_HOSTS
@_ROLES
@_JSON
def remove_cmd(stage: str, hosts: str | None, roles: str | None, as_json: bool) -> None:
    """Remove shipit's block from every host's crontab (other lines stay)."""
    _run(stage, "remove", hosts, roles, as_json)
