"""This machine as a host: command text runs under /bin/sh through Invoke's local runner."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from subprocess import PIPE, Popen
from typing import Any

from invoke import Config, Context
from invoke.exceptions import CommandTimedOut
from invoke.runners import Local

from shipit.config.model import HostSpec
from shipit.errors import CommandFailed, ShipitError
from shipit.hosts.base import CommandResult, Host, LineCallback
from shipit.hosts.streams import LineWriter, run_kwargs, timed_out_result


class _GroupLocal(Local):
    """Invoke's local runner with the command in its own process group.

    Invoke kills only the shell on a timeout, so `sleep 60` (a child of the shell) keeps the
    output pipe open and the timeout does not end the wait; killing the group does. And its
    answer to Ctrl-C without a pty is writing ^C to the child's stdin and waiting on, where a
    deploy must stop instead: end the group and let the interrupt rise.
    """

    def start(self, command: str, shell: str, env: dict[str, Any]) -> None:
        self.process = Popen(
            command,
            shell=True,
            executable=shell,
            env=env,
            stdout=PIPE,
            stderr=PIPE,
            stdin=PIPE,
            start_new_session=True,
        )

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)

    def send_interrupt(self, interrupt: KeyboardInterrupt) -> None:
        self._signal_group(signal.SIGTERM)
        raise interrupt


class LocalHost(Host):
    def __init__(self, spec: HostSpec) -> None:
        super().__init__(spec)
        self._context: Context | None = None
        self._lock = threading.Lock()

    def _ctx(self) -> Context:
        with self._lock:
            if self._context is None:
                config = Config(overrides={"runners": {"local": _GroupLocal}})
                self._context = Context(config=config)
                self.connections = 1
            return self._context

    def run(
        self,
        command: str,
        *,
        check: bool = True,
        timeout: float | None = None,
        stdin: str | None = None,
        on_line: LineCallback | None = None,
    ) -> CommandResult:
        ctx = self._ctx()
        self.commands += 1
        writer = LineWriter(on_line) if on_line else None
        start = time.monotonic()
        try:
            raw = ctx.run(command, shell="/bin/sh", **run_kwargs(stdin, timeout, writer))
            result = CommandResult(
                self.name, command, raw.exited, raw.stdout, raw.stderr, time.monotonic() - start
            )
        except CommandTimedOut as exc:
            result = timed_out_result(self.name, command, exc, time.monotonic() - start)
        if writer:
            writer.flush()
        if check and not result.ok:
            raise CommandFailed(self.name, command, result.exit_code, result.stdout + result.stderr)
        return result

    def put(self, local_path: str, remote_path: str) -> None:
        self._ctx()
        try:
            shutil.copyfile(local_path, remote_path)
        except OSError as exc:
            raise ShipitError(
                f"[{self.name}] cannot copy {local_path} to {remote_path}: {exc.strerror or exc}"
            ) from None
        self.uploads += 1

    def close(self) -> None:
        self._context = None
