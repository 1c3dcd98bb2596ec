"""Errors a user can meet, each with the exit code the CLI returns for it.

Exit codes (documented in README "Exit codes"):
  0  success
  1  deploy failed (the stage was put back in a consistent state)
  2  usage or configuration error
  3  the gate is held by another deploy (or paused by hand)
  4  a host could not be reached, or its host key was refused
  5  the job store could not be reached
  75 a job gave up waiting at a closed gate (EX_TEMPFAIL)
  130 interrupted (Ctrl-C / SIGTERM), after cleanup
"""

from __future__ import annotations


class ShipitError(Exception):
    """Base class: a message meant for a user, one line, no traceback."""

    exit_code = 1


class ConfigError(ShipitError):
    """A mistake in shipit.yaml; the message names file, line and key."""

    exit_code = 2


class UsageError(ShipitError):
    exit_code = 2


class DeployFailed(ShipitError):
    exit_code = 1


class GateHeld(ShipitError):
    """Someone else holds the gate (another deploy, or a manual pause)."""

    exit_code = 3

    def __init__(self, message: str, lease: object | None = None) -> None:
        super().__init__(message)
        self.lease = lease


class FencingError(ShipitError):
    """An action carried a stale epoch: the lease was lost to someone else."""

    exit_code = 3


class HostError(ShipitError):
    """A host is unreachable or its host key is unknown / changed."""

    exit_code = 4


class StoreUnavailable(ShipitError):
    exit_code = 5


class CorruptState(ShipitError):
    """Stored state cannot be read safely (truncated file, newer schema...)."""

    exit_code = 5


class GateWaitTimeout(ShipitError):
    exit_code = 75


class Interrupted(ShipitError):
    exit_code = 130


class CommandFailed(ShipitError):
    """A command on a host exited non-zero."""

    exit_code = 1

    def __init__(self, host: str, command: str, exit_code: int, output: str) -> None:
        tail = "\n".join(output.strip().splitlines()[-10:])
        super().__init__(f"[{host}] command failed with exit code {exit_code}: {command}\n{tail}")
        self.host = host
        self.command = command
        self.returncode = exit_code
        self.output = output


class RequesterGone(Exception):  # noqa: N818 - names the situation, like KeyboardInterrupt
    """Whoever asked a host agent for an op (the deploy) has disappeared: its stdout is gone, or
    the agent got SIGTERM. Not a ShipitError: there is nobody left to tell."""
