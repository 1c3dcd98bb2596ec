"""Pieces both transports share: the Invoke run options and line-by-line output streaming."""

from __future__ import annotations

import io
import threading
from typing import Any

from invoke.exceptions import CommandTimedOut

from shipit.hosts.base import CommandResult, LineCallback

# What timeout(1) returns, so a timed-out command reads like one in any shell.
TIMEOUT_EXIT = 124


class LineWriter(io.TextIOBase):
    """An out_stream for Invoke that hands every complete stdout line to a callback.

    Invoke writes whatever chunk it just read, so a line may arrive in pieces; the tail is
    kept until its newline arrives, or until finish() at the end of the command. flush() does
    nothing: Invoke calls it after every chunk, which would cut lines in two.
    """

    def __init__(self, on_line: LineCallback) -> None:
        self._on_line = on_line
        self._buffer = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            self._buffer += text
            *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            self._on_line(line.rstrip("\r"))
        return len(text)

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        with self._lock:
            rest, self._buffer = self._buffer, ""
        if rest:
            self._on_line(rest.rstrip("\r"))


class WholeStdin:
    """Runner mixin: hand the command its whole stdin at once.

    Invoke reads its in_stream 1000 bytes per 10 ms poll (it is built for typing), i.e.
    100 kB/s; our stdin is a string already in memory.
    """

    def read_our_stdin(self, input_: Any) -> str | None:
        return str(input_.read())


def run_kwargs(
    stdin: str | None, timeout: float | None, writer: LineWriter | None
) -> dict[str, Any]:
    """Options for Invoke/Fabric `run` that never touch our own terminal.

    Invoke's default in_stream is sys.stdin: under CI (no stdin) that hangs or fails, and on
    a TTY it would steal keystrokes. Output is captured, never echoed; with a line callback
    stdout goes to it and stderr is still only captured.
    """
    kwargs: dict[str, Any] = {
        "warn": True,
        "pty": False,
        "in_stream": io.StringIO(stdin) if stdin is not None else False,
        "timeout": timeout,
    }
    if writer is None:
        kwargs["hide"] = True
    else:
        kwargs["hide"] = "err"
        kwargs["out_stream"] = writer
    return kwargs


def timed_out_result(
    host: str, command: str, exc: CommandTimedOut, duration: float
) -> CommandResult:
    raw = exc.result
    note = f"timed out after {exc.timeout:g}s"
    stderr = f"{raw.stderr}{note}\n" if raw.stderr else f"{note}\n"
    return CommandResult(host, command, TIMEOUT_EXIT, raw.stdout, stderr, duration)
