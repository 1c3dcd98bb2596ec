"""Long listings (`shipit history`, `shipit jobs list`) through a pager, the way git does it.

Only where a person reads a terminal: stdout and stdin are terminals, `CI` is unset, `TERM` is
not `dumb`, and the text is taller than the screen. The pager is `$PAGER` (click's rules: `less`
when unset, colours kept with `less -R`); `--no-pager` turns it off. A pipe, a file or --json
never pages.
"""

from __future__ import annotations

import os
import shutil
import sys

import click

NO_PAGER = click.option(
    "--no-pager", is_flag=True, help="Print everything at once, even when it is taller than the screen."
)


def wants_pager(text: str) -> bool:
    from shipit.output import is_ci

    if is_ci() or os.environ.get("TERM") == "dumb":
        return False
    if not (sys.stdout.isatty() and sys.stdin.isatty()):
        return False
    # One row stays free for the prompt the output ends above.
    return text.count("\n") + (not text.endswith("\n")) > shutil.get_terminal_size().lines - 1


def page(text: str, *, pager: bool = True) -> None:
    """Print `text` (one trailing newline added when missing), paged when it does not fit."""
    if not text:
        return
    if not text.endswith("\n"):
        text += "\n"
    if pager and wants_pager(text):
        click.echo_via_pager(text[:-1])  # click adds the last newline itself
    else:
        click.echo(text, nl=False)
