"""One structured event stream.

The engine never prints. It emits Events on an EventBus; renderers (rich live view, plain CI
lines, JSON lines, the per-deploy log file, history, notifications) subscribe to the bus.
Emitting is thread-safe because hosts are worked on in parallel threads.

Event kinds in use (dotted, past tense for facts, `.started`/`.finished` for spans):
  deploy.started      data: deploy_id, stage, revision, hosts, dry_run, mode ("deploy"|"rollback"),
                            and what is deployed: branch | source_dir, or rollback_to (None:
                            the previous release)
  deploy.finished     data: deploy_id, outcome ("success"|"failed"|"rolled_back"|"interrupted"),
                            durations {phase: seconds}, release, error, mode
  phase.started       phase
  phase.finished      phase, data: duration, ok
  host.command        host, phase, data: command (the exact shell text; dry-run prints these)
  host.output         host, phase, message: one line of output
  host.failed         host, phase, message
  hook.started / hook.finished   data: hook, where (finished: ok)
  gate.closed / gate.reopened / gate.renewed / gate.forced   data: epoch, holder, host
                      (gate.forced, from `shipit lock` / `jobs pause|resume --force`: holder
                      is who forced; action force-close|force-open as audited; previous_holder,
                      previous_deploy_id, previous_reason: whom it overrode)
  job.running         host, data: run (dict) — listed while draining
  job.stop_requested / job.stopped / job.finished / job.interrupted / job.restarted / job.given_up
  job.restart_respawned  host, data: run, respawns; message: why (its restart was lost: the
                      spawned supervisor died before claiming); a job.restarted follows
  release.prepared / release.switched / release.rolled_back / release.removed
  log                 message, data: level
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

Listener = Callable[["Event"], None]


@dataclass(frozen=True)
class Event:
    kind: str
    ts: float = field(default_factory=time.time)
    host: str | None = None
    phase: str | None = None
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def emit(
        self,
        kind: str,
        *,
        host: str | None = None,
        phase: str | None = None,
        message: str = "",
        **data: Any,
    ) -> Event:
        event = Event(kind=kind, host=host, phase=phase, message=message, data=data)
        with self._lock:
            listeners = list(self._listeners)
            # Serialise delivery so renderers never interleave half lines.
            for listener in listeners:
                listener(event)
        return event


class Recorder:
    """A listener that keeps every event; used by tests and by history."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def of(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]
