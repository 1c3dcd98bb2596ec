"""Every event, timestamped, into `.shipit/logs/<stage>-<deploy_id>.log` next to shipit.yaml.

The deploy id is only known once the runner emits `deploy.started`, so the path is a template
(`{deploy_id}`) and the events before it are held in memory until the file can be opened.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO, Any

from shipit.events import Event
from shipit.output.base import Renderer
from shipit.output.format import line


def stamp(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def log_dir_for(config_path: str | os.PathLike[str]) -> Path:
    return Path(config_path).resolve().parent / ".shipit" / "logs"


def safe_name(part: str) -> str:
    # A stage or deploy id becomes part of a file name; keep it to one harmless path component.
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in part) or "_"


def open_private(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    for d in (path.parent, path.parent.parent):
        if d.name in ("logs", ".shipit"):
            os.chmod(d, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode otherwise
    return os.fdopen(fd, "a", encoding="utf-8")


class LogFileRenderer(Renderer):
    """`template` is a path that may contain `{deploy_id}` (and `{stage}`)."""

    def __init__(self, template: str | os.PathLike[str], secrets: list[str] | None = None) -> None:
        super().__init__(secrets)
        self.template = str(template)
        self.file: IO[str] | None = None
        self.pending: list[Event] = []
        self.closed = False

    def _open(self, deploy_id: str, stage: str) -> None:
        path = Path(self.template.format(deploy_id=safe_name(deploy_id), stage=safe_name(stage)))
        self.file = open_private(path)
        self.log_path = str(path)

    def handle(self, event: Event) -> None:
        if self.closed:
            return
        if self.file is None and "{deploy_id}" in self.template:
            if event.kind != "deploy.started":
                self.pending.append(event)
                return
            self._open(
                str(event.data.get("deploy_id") or "unknown"), str(event.data.get("stage") or "")
            )
        elif self.file is None:
            self._open("unknown", "")
        assert self.file is not None
        for e in [*self.pending, event]:
            self.file.write(self.format(e) + "\n")
        self.pending.clear()
        self.file.flush()

    @staticmethod
    def format(event: Event) -> str:
        text = f"{stamp(event.ts)} {event.kind:<18} {line(event)}"
        if event.data:
            text += "  " + json.dumps(event.data, default=str, sort_keys=True, ensure_ascii=False)
        return text

    def finish(self, result: Any | None = None) -> None:
        with self.lock:
            if self.file is None and self.pending:
                # A deploy that failed before it started (bad config...) still leaves a record.
                self._open("unknown", "")
                self.handle(self.pending.pop())
            if self.file is not None and result is not None:
                summary = json.dumps(self.masked_summary(result), default=str, sort_keys=True)
                self.file.write(f"{stamp(time.time())} summary            {summary}\n")
            if self.file is not None:
                self.file.close()
                self.file = None
            self.closed = True
