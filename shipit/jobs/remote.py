"""The deploy side of the host agent protocol: run `shipit agent OP` on a host, hand it its options
(secrets included) on stdin, stream its events, return its result or raise its error.
"""

from __future__ import annotations

import json
import shlex
import threading
from collections.abc import Callable
from typing import Any

from shipit.errors import (
    CorruptState,
    DeployFailed,
    GateHeld,
    HostError,
    ShipitError,
    StoreUnavailable,
    UsageError,
)
from shipit.gate.base import Lease
from shipit.hosts.base import Host

OnEvent = Callable[[str, dict[str, Any]], None]


class AgentError(ShipitError):
    """The agent reported an error; carries what it knew (lease, recorded runs)."""

    def __init__(self, message: str, exit_code: int, payload: dict[str, Any]) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.payload = payload


# Options that must never appear on a command line (ps, logs): they go on stdin.
SECRET_KEYS = ("dsn",)


def agent_command(shipit_command: str, op: str, opts: dict[str, Any] | None = None,
                  *, with_stdin: bool = False) -> str:
    """shipit_command is shell text from shipit.yaml (e.g. "/srv/venv/bin/shipit"), used as
    written; the options (secrets removed) travel as one quoted JSON argument."""
    command = f"{shipit_command} agent {op}"
    if opts is not None:
        public = {k: v for k, v in opts.items() if k not in SECRET_KEYS}
        command += " --opts " + shlex.quote(json.dumps(public, separators=(",", ":")))
    if with_stdin:
        command += " --stdin"
    return command


def _error_for(host: str, payload: dict[str, Any]) -> ShipitError:
    msg = f"[{host}] {payload.get('error') or 'agent failed'}"
    code = int(payload.get("exit_code") or 1)
    if code == GateHeld.exit_code and "lease" in payload:
        return GateHeld(msg, Lease(**payload["lease"]))
    if payload.get("corrupt") and not payload.get("recorded"):
        return CorruptState(msg)
    by_code: dict[int, type[ShipitError]] = {
        2: UsageError, 4: HostError, 5: StoreUnavailable,
    }
    cls = by_code.get(code)
    if cls is not None and not payload.get("recorded"):
        return cls(msg)
    if code == CorruptState.exit_code and not payload.get("recorded"):
        return CorruptState(msg)
    return AgentError(msg, code, payload)


def call_agent(
    host: Host,
    shipit_command: str,
    op: str,
    opts: dict[str, Any],
    *,
    on_event: OnEvent | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run one agent op on `host`. Returns its result; raises GateHeld / StoreUnavailable / ...
    (message prefixed with the host) or AgentError carrying the agent's payload."""
    final: dict[str, Any] = {}
    lock = threading.Lock()

    def line(text: str, *, events: bool = True) -> None:
        text = text.strip()
        if not text.startswith("{"):
            return
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return
        if "event" in obj:
            kind = obj.pop("event")
            if events and kind != "tick" and on_event is not None:
                on_event(kind, obj)
            return
        with lock:
            final.update(obj)

    streamed: list[str] = []

    def on_line(text: str) -> None:
        streamed.append(text)
        line(text)

    # Secrets go on stdin. Only then: a transport may feed stdin slowly (Invoke reads a string
    # in_stream one byte per input_sleep), so options ride on the command line.
    secret = {k: opts[k] for k in SECRET_KEYS if opts.get(k)}
    command = agent_command(shipit_command, op, opts, with_stdin=bool(secret))
    res = host.run(command, check=False, timeout=timeout,
                   stdin=json.dumps(secret) + "\n" if secret else None, on_line=on_line)
    if "result" not in final and "error" not in final:
        # Invoke may return before its stdout thread has handed over the last lines (it joins
        # that thread with a 1 s timeout once stderr has closed), but the captured stdout is
        # complete: take the outcome from it, and the events only if none were streamed.
        for text in res.stdout.splitlines():
            line(text, events=not streamed)
    if "result" in final and res.exit_code == 0:
        return dict(final["result"] or {})
    if "error" in final:
        raise _error_for(host.name, final)
    tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or [""]
    raise DeployFailed(
        f"[{host.name}] `{agent_command(shipit_command, op)}` failed with exit code {res.exit_code}: {tail[0]}"
        " (is shipit installed there? see shipit_command)"
    )
