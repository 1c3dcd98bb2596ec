"""`[host] phase: message` lines for CI logs and pipes: no colour, no cursor movement, one
flushed line per event so a CI log streams as the deploy goes."""

from __future__ import annotations

from typing import Any, TextIO

from shipit.events import Event
from shipit.output.base import Renderer
from shipit.output.format import PHASES, describe, prefix, seconds


class PlainRenderer(Renderer):
    def __init__(
        self, stream: TextIO, secrets: list[str] | None = None, *, verbose: bool = False
    ) -> None:
        super().__init__(secrets)
        self.stream = stream
        self.verbose = verbose
        self.dry_run = False

    def write(self, text: str) -> None:
        for part in text.splitlines() or [""]:
            self.stream.write(part + "\n")
        self.stream.flush()

    def handle(self, event: Event) -> None:
        if event.kind == "deploy.started":
            self.dry_run = bool(event.data.get("dry_run"))
        # The exact commands are the point of a dry run; otherwise they are noise unless asked.
        if event.kind == "host.command" and not (self.dry_run or self.verbose):
            return
        if event.kind == "log" and event.data.get("level") == "debug" and not self.verbose:
            return
        head = prefix(event)
        # Multi-line text (a dry run's scripts, a traceback) keeps the prefix on every line so
        # that grepping a CI log for one host finds all of its lines.
        for i, part in enumerate(describe(event).splitlines() or [""]):
            text = part if i == 0 else f"  {part}"
            self.write(f"{head} {text}" if head else text)

    def finish(self, result: Any | None = None) -> None:
        with self.lock:
            if result is not None:
                self.write("\n".join(summary_lines(self.masked_summary(result))))
            elif self.log_path:
                self.write(f"log: {self.log_path}")


def summary_lines(summary: dict[str, Any]) -> list[str]:
    outcome = summary.get("outcome", "?")
    head = f"summary: {outcome}"
    if summary.get("release"):
        head += f", release {summary['release']}"
    if summary.get("revision"):
        head += f" (revision {summary['revision']})"
    out = [head]
    if summary.get("hosts"):
        out.append("hosts: " + ", ".join(map(str, summary["hosts"])))
    durations = summary.get("durations") or {}
    if durations:
        order = [p for p in PHASES if p in durations] + [p for p in durations if p not in PHASES]
        out.append("durations: " + ", ".join(f"{p} {seconds(durations[p])}" for p in order))
    if summary.get("error"):
        out.append(f"error: {summary['error']}")
    if summary.get("log"):
        out.append(f"log: {summary['log']}")
    return out
