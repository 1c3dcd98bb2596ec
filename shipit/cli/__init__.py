"""The `shipit` click command group and `main()`, which turns every failure into one line.

Shell completion (bash; zsh and fish likewise):  eval "$(_SHIPIT_COMPLETE=bash_source shipit)"
"""

from __future__ import annotations

import sys
import traceback
from typing import NoReturn

import click

from shipit import __version__
from shipit.cli.common import SESSION, reset_session
from shipit.errors import ShipitError
from shipit.output.mask import mask_text

EPILOG = """\b
Exit codes: 0 ok, 1 deploy failed, 2 usage/config error, 3 gate held,
4 host unreachable, 5 job store unreachable, 130 interrupted.
\b
Shell completion (add to ~/.bashrc; zsh/fish: zsh_source/fish_source):
  eval "$(_SHIPIT_COMPLETE=bash_source shipit)"
"""


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config",
    metavar="PATH",
    envvar="SHIPIT_CONFIG",
    help="shipit.yaml to use (default: the nearest one upwards; env SHIPIT_CONFIG).",
)
@click.option("-v", "--verbose", is_flag=True, help="Show commands as they run, and tracebacks.")
@click.version_option(__version__, "--version", prog_name="shipit", message="%(prog)s %(version)s")
def cli(config: str | None, verbose: bool) -> None:
    """Deploy with care for the background jobs running on your hosts."""
    SESSION.config = config
    SESSION.verbose = verbose


def _passthrough(name: str, target: str, help_text: str) -> click.Command:
    """`shipit job` / `shipit agent` normally never get here (shipit.main takes a lean path);
    this keeps them listed in --help and working when called through click."""

    @click.command(
        name,
        help=help_text,
        add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    )
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    @click.pass_context
    def command(ctx: click.Context, args: tuple[str, ...]) -> None:
        import importlib

        module, func = target.rsplit(":", 1)
        try:
            code = getattr(importlib.import_module(module), func)(list(args))
        except SystemExit as exc:  # argparse exits for --help and usage errors
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        ctx.exit(int(code or 0))

    return command


def _register() -> None:
    from shipit.cli import cron, deploy

    for command in deploy.COMMANDS:
        cli.add_command(command)
    cli.add_command(cron.cron)
    cli.add_command(
        _passthrough(
            "job", "shipit.jobs.cli:main", "Run a job under shipit's supervision (on a host)."
        )
    )
    cli.add_command(
        _passthrough(
            "agent", "shipit.agent:main", "Host agent operations used by deploys (internal)."
        )
    )
    try:
        from shipit.cli.jobs import jobs, lock, status
    except ImportError:
        return  # the job commands are optional: the deploy commands work without them
    for command in (lock, jobs, status):
        cli.add_command(command)
    from shipit.cli.keys import keys; cli.add_command(keys)  # noqa: E702, I001
    from shipit.cli.hosts import hosts; cli.add_command(hosts)  # noqa: E702, I001


_register()


def _error(message: str) -> None:
    lines = mask_text(str(message), SESSION.secrets).strip().splitlines() or ["unknown error"]
    click.echo(f"shipit: error: {lines[0]}", err=True)
    if SESSION.verbose:
        for extra in lines[1:]:
            click.echo(f"  {extra}", err=True)


def run(argv: list[str] | None = None) -> int:
    """Run one shipit command and return its exit code; never raises for a user's mistake."""
    reset_session()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        rv = cli.main(args=args, prog_name="shipit", standalone_mode=False)
    except ShipitError as exc:
        _error(str(exc))
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):
            click.echo("shipit: interrupted", err=True)
            return 130
        click.echo("shipit: aborted", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("shipit: interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, no traceback
        if SESSION.verbose:
            traceback.print_exc()
        detail = mask_text(f"{type(exc).__name__}: {exc}", SESSION.secrets).splitlines()
        hint = "" if SESSION.verbose else " (run with -v for the traceback)"
        click.echo(f"shipit: internal error: {detail[0] if detail else ''}{hint}", err=True)
        return 1
    return rv if isinstance(rv, int) else 0


def main(argv: list[str] | None = None) -> NoReturn:
    """Console entry point: exits with the command's code (see shipit/errors.py)."""
    sys.exit(run(argv))
