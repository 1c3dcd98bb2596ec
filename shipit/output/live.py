"""The rich live view for terminals: one row per host with its phase progress, a jobs table
while jobs are being drained, and a final summary.

Events arrive from many threads while rich redraws from its own refresh thread. The state is
only touched under `self.lock`, the display is rebuilt from a snapshot on each refresh (so a
half-applied event is never drawn), and lines printed above the view are printed *after* the
lock is released: rich's own lock is taken by both printing and refreshing, and holding ours
across either would let the two threads deadlock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from shipit.events import Event
from shipit.output.base import Renderer
from shipit.output.format import PHASES, describe, job_name, seconds
from shipit.output.mask import mask_event
from shipit.output.plain import summary_lines

_MARKS = {
    "pending": Text("·", style="dim"),
    "done": Text("✓", style="green"),
    "failed": Text("✗", style="bold red"),
    "stopped": Text("–", style="yellow"),
}
_OUTCOME_STYLE = {"success": "green", "dry_run": "cyan", "rolled_back": "yellow"}
_FINAL_JOB_KINDS = {
    "job.stopped": "stopped",
    "job.finished": "finished",
    "job.interrupted": "interrupted",
    "job.restarted": "restarted",
    "job.given_up": "given up",
    "job.stop_requested": "stopping",
}


@dataclass
class HostRow:
    phases: dict[str, str] = field(default_factory=lambda: dict.fromkeys(PHASES, "pending"))
    status: str = "waiting"
    last: str = ""
    failed: bool = False
    spinner: Spinner = field(default_factory=lambda: Spinner("dots", style="cyan"))


@dataclass
class JobRow:
    job: str
    host: str
    pid: Any = None
    started_at: float | None = None
    done: float | None = None
    total: float | None = None
    state: str = "running"


class LiveRenderer(Renderer):
    def __init__(
        self,
        console: Console,
        secrets: list[str] | None = None,
        *,
        verbose: bool = False,
        refresh_per_second: float = 8,
    ) -> None:
        super().__init__(secrets)
        self.console = console
        self.verbose = verbose
        self.refresh_per_second = refresh_per_second
        self.hosts: dict[str, HostRow] = {}
        self.jobs: dict[str, JobRow] = {}
        self.title = "shipit"
        self.phase: str | None = None
        self.phase_order = list(PHASES)
        self.started_at = time.time()
        self.live: Live | None = None

    # -- events ---------------------------------------------------------------------------------
    def __call__(self, event: Event) -> None:
        event = mask_event(event, self.secrets)
        with self.lock:
            to_print = self.apply(event)
        for renderable in to_print:
            self.console.print(renderable)

    def handle(self, event: Event) -> None:
        for renderable in self.apply(event):
            self.console.print(renderable)

    def row(self, host: str) -> HostRow:
        if host not in self.hosts:
            self.hosts[host] = HostRow()
            for p in self.phase_order:
                self.hosts[host].phases.setdefault(p, "pending")
        return self.hosts[host]

    def apply(self, event: Event) -> list[RenderableType]:
        """Update the state; return what must be printed above the view (kept in scrollback)."""
        kind, d = event.kind, event.data
        out: list[RenderableType] = []
        if kind == "deploy.started":
            self.title = describe(event)
            self.started_at = event.ts
            for h in d.get("hosts") or []:
                self.row(str(h))
        elif kind == "phase.started" and event.phase:
            self.phase = event.phase
            if event.phase not in self.phase_order:
                self.phase_order.append(event.phase)
            for r in self.hosts.values():
                if r.phases.get(event.phase, "pending") == "pending" and not r.failed:
                    r.phases[event.phase] = "running"
                    r.status = event.phase.replace("_", " ")
        elif kind == "phase.finished" and event.phase:
            ok = d.get("ok", True)
            for r in self.hosts.values():
                if r.phases.get(event.phase) == "running":
                    r.phases[event.phase] = "done" if ok else "stopped"
            if self.phase == event.phase:
                self.phase = None
            if not ok:
                out.append(Text(f"{event.phase}: {describe(event)}", style="red"))
        elif kind == "host.failed":
            r = self.row(event.host or "?")
            r.failed = True
            r.status = "failed"
            r.last = event.message
            if event.phase:
                r.phases[event.phase] = "failed"
            out.append(
                Text(f"[{event.host}] {event.phase or ''}: {describe(event)}", style="bold red")
            )
        elif kind == "log":
            level = d.get("level", "info")
            if level in ("warning", "error"):
                out.append(Text(describe(event), style="yellow" if level == "warning" else "red"))
            elif (level != "debug" or self.verbose) and not event.host:
                out.append(Text(describe(event), style="dim"))
        elif kind == "job.running":
            run = d.get("run") if isinstance(d.get("run"), dict) else {}
            key = str(run.get("id") or f"{event.host}:{job_name(d)}")
            self.jobs[key] = JobRow(
                job=job_name(d),
                host=event.host or str(run.get("host") or "?"),
                pid=run.get("pid"),
                started_at=run.get("started_at") or run.get("created_at"),
                done=run.get("progress_done"),
                total=run.get("progress_total"),
            )
        elif kind in _FINAL_JOB_KINDS:
            run = d.get("run") if isinstance(d.get("run"), dict) else {}
            key = str(run.get("id") or d.get("run_id") or f"{event.host}:{job_name(d)}")
            if key in self.jobs:
                self.jobs[key].state = _FINAL_JOB_KINDS[kind]
                if run.get("progress_done") is not None:
                    self.jobs[key].done = run.get("progress_done")
            if kind in ("job.restarted", "job.given_up", "job.interrupted"):
                out.append(Text(f"[{event.host}] {describe(event)}", style="cyan"))
        elif kind == "deploy.finished":
            self.phase = None
        if event.host and kind not in ("host.failed",):
            r = self.row(event.host)
            if event.phase and r.phases.get(event.phase) == "pending" and not r.failed:
                r.phases[event.phase] = "running"
            if kind == "release.switched":
                r.status = "switched"
            if kind != "host.command" or self.verbose:
                r.last = describe(event)
        if self.verbose and kind == "host.command":
            out.append(Text(f"[{event.host}] $ {d.get('command', '')}", style="dim"))
        return out

    # -- display --------------------------------------------------------------------------------
    def render(self) -> RenderableType:
        with self.lock:
            return self._render(time.time())

    def _render(self, now: float) -> RenderableType:
        # Phases are one compact column of marks (named once in the header line) so that a
        # narrow terminal squeezes only the free-text column, never the progress.
        width = max([len(n) for n in self.hosts] + [4])
        hosts = Table(box=None, pad_edge=False, show_edge=False, show_header=False)
        hosts.add_column("host", style="bold", no_wrap=True, min_width=min(width, 40))
        hosts.add_column("phases", no_wrap=True, min_width=2 * len(self.phase_order))
        hosts.add_column("status", no_wrap=True, min_width=12)
        hosts.add_column("last", overflow="ellipsis", no_wrap=True)
        for name, r in self.hosts.items():
            marks = Text()
            for i, p in enumerate(self.phase_order):
                if i:
                    marks.append(" ")
                state = r.phases.get(p, "pending")
                marks.append_text(r.spinner.render(now) if state == "running" else _MARKS[state])
            status = Text(r.status, style="red" if r.failed else "")
            last = Text(r.last.splitlines()[0] if r.last else "", style="dim")
            # rich shrinks every column of an over-wide table, host names included; cutting the
            # free text to what is left keeps the other columns whole.
            room = self.console.width - min(width, 40) - 2 * len(self.phase_order) - 12 - 6
            last.truncate(max(room, 10), overflow="ellipsis")
            hosts.add_row(name, marks, status, last)
        legend = Text(" › ".join(self.phase_order), style="dim")
        parts: list[RenderableType] = [
            Text(f"{self.title}  {seconds(now - self.started_at)}", style="bold"),
            legend,
            hosts,
        ]
        active = [j for j in self.jobs.values() if j.state in ("running", "stopping")]
        if self.jobs and (self.phase == "drain_jobs" or active):
            parts.append(self._jobs_table(now))
        elif self.phase == "drain_jobs":
            parts.append(Text("jobs: none running", style="dim"))
        return Group(*parts)

    def _jobs_table(self, now: float) -> Table:
        t = Table(title="jobs", title_justify="left", box=None, show_edge=False)
        for col in ("job", "host", "pid", "elapsed", "progress", "state"):
            t.add_column(col, no_wrap=True)
        for j in self.jobs.values():
            elapsed = seconds(now - float(j.started_at)) if j.started_at else ""
            if j.done is not None and j.total:
                progress = f"{float(j.done) / float(j.total):.0%} ({j.done:g}/{j.total:g})"
            elif j.done is not None:
                progress = f"{j.done:g}"
            else:
                progress = ""
            t.add_row(j.job, j.host, str(j.pid or ""), elapsed, progress, j.state)
        return t

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self.live = Live(
            get_renderable=self.render,
            console=self.console,
            refresh_per_second=self.refresh_per_second,
            transient=False,
            # Stray prints from libraries go above the view instead of tearing it.
            redirect_stdout=True,
            redirect_stderr=True,
        )
        self.live.start()

    def finish(self, result: Any | None = None) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        if result is None:
            if self.log_path:
                self.console.print(f"log: {self.log_path}", style="dim")
            return
        summary = self.masked_summary(result)
        outcome = str(summary.get("outcome", "?"))
        style = _OUTCOME_STYLE.get(outcome, "red")
        body = Text("\n".join(summary_lines(summary)))
        self.console.print(
            Panel(body, title=outcome, title_align="left", border_style=style, expand=False)
        )
