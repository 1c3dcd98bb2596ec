"""The interface every transport implements.

A Host runs shell command text (built elsewhere, by `shipit.commands`) and reports the result.
It never decides what to run. One Host object is opened per host per deploy and reused across
all phases, so `connections` stays at 1 and `commands` counts every remote command run.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from shipit.config.model import HostSpec

LineCallback = Callable[[str], None]


@dataclass(frozen=True)
class CommandResult:
    host: str
    command: str
    exit_code: int
    stdout: str
    stderr: str
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Host(ABC):
    def __init__(self, spec: HostSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.commands = 0  # remote commands run (for benchmarks and tests)
        self.connections = 0  # connections opened
        self.uploads = 0

    @abstractmethod
    def run(
        self,
        command: str,
        *,
        check: bool = True,
        timeout: float | None = None,
        stdin: str | None = None,
        on_line: LineCallback | None = None,
    ) -> CommandResult:
        """Run shell text on the host (through `sh -c` semantics).

        check=True raises shipit.errors.CommandFailed on a non-zero exit. `stdin` is written to the
        command's standard input (used to hand secrets over without putting them on a command
        line). `on_line` is called with every stdout line as it arrives (for live progress).
        Unreachable hosts / refused host keys raise shipit.errors.HostError.
        """

    @abstractmethod
    def put(self, local_path: str, remote_path: str) -> None:
        """Copy a local file to the host (SFTP for SSH hosts, a copy for local)."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Host:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
