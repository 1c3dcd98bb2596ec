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
from shipit.errors import CommandFailed, HostError, ShipitError
from shipit.hosts.base import CommandResult, Host, LineCallback
from shipit.hosts.streams import LineWriter, WholeStdin, run_kwargs, timed_out_result


class _GroupLocal(WholeStdin, Local):
    """Invoke's local runner with the command in its own process group.

    Invoke kills only the shell on a timeout, so `sleep 60` (a child of the shell) keeps the
    output pipe open and the timeout does not end the wait; killing the group does. And its
    answer to Ctrl-C without a pty is writing ^C to the child's stdin and waiting on, where a
    deploy must stop instead: end the group and let the interrupt rise.

    Being its own group, the command no longer gets the terminal's Ctrl-C with shipit, so the
    owning LocalHost keeps the running groups in `running` and close() ends them.
    """

    running: set[int] = set()
    lock = threading.Lock()

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
        with self.lock:
            self.running.add(self.process.pid)

    def stop(self) -> None:
        with self.lock:
            self.running.discard(self.process.pid)
        super().stop()

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
        # This host's own runner class, so close() ends only this host's commands.
        self._runner = type("_HostLocal", (_GroupLocal,), {"running": set(), "lock": self._lock})
        self._closed = False

    def _ctx(self) -> Context:
        with self._lock:
            if self._context is None:
                config = Config(overrides={"runners": {"local": self._runner}})
                self._context = Context(config=config)
                self.connections = 1
                self._closed = False
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
        with self._lock:
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
            writer.finish()
        if self._closed and not result.ok:
            raise HostError(f"[{self.name}] closed while running: {command}")
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
        """Forget the context and end commands still running in other threads (an
        interrupted deploy closes its hosts to free the fan-out threads)."""
        with self._lock:
            self._context = None
            self._closed = True
            running = list(self._runner.running)
        for pid in running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
