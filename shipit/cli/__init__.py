"""The `shipit` click command group and `main()`, which turns every failure into one line.

Shell completion (bash; zsh and fish likewise):  eval "$(_SHIPIT_COMPLETE=bash_source shipit)"
"""

from __future__ import annotations

import importlib
import sys
from typing import NoReturn

import click

from shipit import __version__
from shipit.cli.common import SESSION, reset_session
from shipit.errors import ShipitError

EPILOG = """\b
Exit codes: 0 ok, 1 deploy failed, 2 usage/config error, 3 gate held,
4 host unreachable, 5 job store unreachable, 130 interrupted.
\b
Shell completion (add to ~/.bashrc; zsh/fish: zsh_source/fish_source):
  eval "$(_SHIPIT_COMPLETE=bash_source shipit)"
"""

# Every command's module is imported only when that command is looked up (it runs, or `--help`
# lists it): they import pydantic, rich, paramiko... and `shipit --version` or `shipit deploy`
# must not pay for all of them. Name -> (module, attribute); tests/unit/test_imports.py checks
# it against the modules' commands.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("shipit.cli.deploy", "init_cmd"),
    "check": ("shipit.cli.deploy", "check_cmd"),
    "deploy": ("shipit.cli.deploy", "deploy_cmd"),
    "rollback": ("shipit.cli.deploy", "rollback_cmd"),
    "releases": ("shipit.cli.deploy", "releases_cmd"),
    "history": ("shipit.cli.deploy", "history_cmd"),
    "config": ("shipit.cli.deploy", "config_cmd"),
    "cron": ("shipit.cli.cron", "cron"),
    "lock": ("shipit.cli.jobs", "lock"),
    "jobs": ("shipit.cli.jobs", "jobs"),
    "status": ("shipit.cli.jobs", "status"),
    "keys": ("shipit.cli.keys", "keys"),
    "hosts": ("shipit.cli.hosts", "hosts"),
}
# The job commands are optional: the deploy commands work without them.
_OPTIONAL = ("shipit.cli.jobs",)


class LazyGroup(click.Group):
    """A click group that imports a command's module on first lookup (see LAZY_COMMANDS)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in LAZY_COMMANDS:
            module, attribute = LAZY_COMMANDS[cmd_name]
            try:
                command = getattr(importlib.import_module(module), attribute)
            except ImportError as exc:
                if module not in _OPTIONAL or exc.name != module:
                    raise
                return None
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)


@click.group(
    cls=LazyGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]}
)
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
        module, func = target.rsplit(":", 1)
        try:
            code = getattr(importlib.import_module(module), func)(list(args))
        except SystemExit as exc:  # argparse exits for --help and usage errors
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        ctx.exit(int(code or 0))

    return command


cli.add_command(
    _passthrough("job", "shipit.jobs.cli:main", "Run a job under shipit's supervision (on a host).")
)
cli.add_command(
    _passthrough("agent", "shipit.agent:main", "Host agent operations used by deploys (internal).")
)


def _mask(text: str) -> str:
    from shipit.output.mask import mask_text  # only on errors: shipit.output imports a lot

    return mask_text(text, SESSION.secrets)


def _error(message: str) -> None:
    lines = _mask(str(message)).strip().splitlines() or ["unknown error"]
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
            import traceback

            traceback.print_exc()
        detail = _mask(f"{type(exc).__name__}: {exc}").splitlines()
        hint = "" if SESSION.verbose else " (run with -v for the traceback)"
        click.echo(f"shipit: internal error: {detail[0] if detail else ''}{hint}", err=True)
        return 1
    return rv if isinstance(rv, int) else 0


def main(argv: list[str] | None = None) -> NoReturn:
    """Console entry point: exits with the command's code (see shipit/errors.py)."""
    sys.exit(run(argv))
