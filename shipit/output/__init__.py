"""Renderers of the event stream: live (TTY), plain (CI / pipes), JSON lines, and the log file.

Use: `renderer = attach(bus, json=False, stream=sys.stdout, secrets=[...],
log_path=".../{deploy_id}.log")`, run the deploy on `bus`, then `renderer.finish(result)` to
show the summary (and where the log file is).
"""

from __future__ import annotations

import os
from typing import TextIO

from shipit.events import EventBus
from shipit.output.base import Composite, Renderer
from shipit.output.jsonl import JsonRenderer
from shipit.output.logfile import LogFileRenderer
from shipit.output.plain import PlainRenderer

__all__ = ["Renderer", "attach", "console_renderer", "is_ci", "wants_live"]


def is_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def wants_live(stream: TextIO) -> bool:
    """A live view only where a person watches a real terminal; CI logs get plain lines even
    when the runner allocates a pseudo-TTY."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not is_ci() and os.environ.get("TERM") != "dumb"


def console_renderer(
    *, json: bool, stream: TextIO, secrets: list[str], verbose: bool = False
) -> Renderer:
    if json:
        return JsonRenderer(stream, secrets)
    if wants_live(stream):
        # Only for a live view: rich costs ~0.1 s to import, a deploy to a pipe or CI needs none.
        from rich.console import Console

        from shipit.output.live import LiveRenderer

        return LiveRenderer(Console(file=stream), secrets, verbose=verbose)
    return PlainRenderer(stream, secrets, verbose=verbose)


def attach(
    bus: EventBus,
    *,
    json: bool,
    stream: TextIO,
    secrets: list[str] | tuple[str, ...] | None = None,
    log_path: str | os.PathLike[str] | None = None,
    verbose: bool = False,
) -> Renderer:
    """Subscribe the right console renderer (and the log file when `log_path` is given; it may
    contain `{deploy_id}`) to `bus`, start it, and return it. Call `.finish(result)` at the end."""
    secrets = [s for s in (secrets or []) if s]
    console = console_renderer(json=json, stream=stream, secrets=secrets, verbose=verbose)
    logfile = LogFileRenderer(log_path, secrets) if log_path else None
    renderer = Composite(console, logfile)
    bus.subscribe(renderer)
    renderer.start()
    return renderer
