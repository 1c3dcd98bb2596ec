"""`--json`: one JSON object per event per line, then one `{"summary": {...}}` line. Machines
read stdout, so nothing else may ever be written there in this mode."""

from __future__ import annotations

import json
from typing import Any, TextIO

from shipit.events import Event
from shipit.output.base import Renderer


def dumps(obj: Any) -> str:
    # default=str: events may carry paths, tuples of sets... a consumer should still get a line.
    return json.dumps(obj, default=str, separators=(",", ":"), ensure_ascii=False)


class JsonRenderer(Renderer):
    def __init__(self, stream: TextIO, secrets: list[str] | None = None) -> None:
        super().__init__(secrets)
        self.stream = stream

    def handle(self, event: Event) -> None:
        self.stream.write(dumps(event.to_dict()) + "\n")
        self.stream.flush()

    def finish(self, result: Any | None = None) -> None:
        if result is None:
            return
        with self.lock:
            self.stream.write(dumps({"summary": self.masked_summary(result)}) + "\n")
            self.stream.flush()
