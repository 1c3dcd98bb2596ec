"""What every renderer is: a bus listener that can also write the end-of-deploy summary."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from shipit.events import Event
from shipit.output.mask import mask_event, mask_value


def summary_of(result: Any, log_path: str | None = None) -> dict[str, Any]:
    """A DeployResult (or any dataclass / dict) as the JSON-able summary every channel shows."""
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        data = dataclasses.asdict(result)
    elif isinstance(result, dict):
        data = dict(result)
    else:
        data = {"outcome": str(result)}
    if log_path:
        data["log"] = str(log_path)
    return data


class Renderer:
    """Subscribe with `bus.subscribe(renderer)`. Events are masked before `handle` sees them."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        self.secrets = [s for s in (secrets or []) if s]
        # The bus already serialises delivery, but renderers are also driven by the CLI thread
        # (finish) and, for the live view, by rich's refresh thread.
        self.lock = threading.RLock()
        self.log_path: str | None = None

    def __call__(self, event: Event) -> None:
        event = mask_event(event, self.secrets)
        with self.lock:
            self.handle(event)

    def handle(self, event: Event) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def start(self) -> None:
        """Called before the first event (the live view starts its display here)."""

    def finish(self, result: Any | None = None) -> None:
        """Called once at the end with the DeployResult (or None for non-deploy commands)."""

    def masked_summary(self, result: Any) -> dict[str, Any]:
        return mask_value(summary_of(result, self.log_path), self.secrets)


class Composite(Renderer):
    """The console renderer plus, optionally, the per-deploy log file, behind one listener."""

    def __init__(self, console: Renderer, logfile: Renderer | None = None) -> None:
        super().__init__()
        self.console = console
        self.logfile = logfile

    def __call__(self, event: Event) -> None:
        if self.logfile is not None:
            self.logfile(event)
        self.console(event)

    def start(self) -> None:
        self.console.start()

    def finish(self, result: Any | None = None) -> None:
        # The log file closes first so the console's summary can show where it is.
        if self.logfile is not None:
            self.logfile.finish(result)
            self.console.log_path = self.logfile.log_path
        self.console.finish(result)
        self.log_path = self.console.log_path
