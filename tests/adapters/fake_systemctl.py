"""A stand-in for `systemctl` on machines without systemd (containers, CI): it manages real
background processes and unit states, so the systemd adapter runs end to end.

Units live in $FAKE_SYSTEMD/units: `<name>.service` holds the shell command the service runs,
`<name>.timer` exists for a timer. States live in $FAKE_SYSTEMD/state: `<unit>.pid` for a
started service, `<unit>.active` for a started timer, `<unit>.stopping` once a stop was asked.
Every call is appended to $FAKE_SYSTEMD/calls (argv after the program name, one line).
Supported: [--user] start|stop [--no-block]|kill --signal=SIG|is-active UNIT...
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(os.environ["FAKE_SYSTEMD"])
UNITS, STATE = ROOT / "units", ROOT / "state"


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie nobody reaped (PID 1 in a container may not) has exited.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def pid_of(unit: str) -> int | None:
    try:
        pid = int((STATE / f"{unit}.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def state(unit: str) -> str:
    if unit.endswith(".timer"):
        return "active" if (STATE / f"{unit}.active").exists() else "inactive"
    if pid_of(unit) is None:
        return "inactive"
    return "deactivating" if (STATE / f"{unit}.stopping").exists() else "active"


def start(unit: str) -> None:
    if not (UNITS / unit).exists():
        sys.exit(f"Failed to start {unit}: Unit {unit} not found.")
    if unit.endswith(".timer"):
        (STATE / f"{unit}.active").touch()
        return
    if pid_of(unit) is not None:
        return
    (STATE / f"{unit}.stopping").unlink(missing_ok=True)
    with open(ROOT / f"{unit}.log", "ab") as log:
        proc = subprocess.Popen(
            ["sh", "-c", (UNITS / unit).read_text()], stdin=subprocess.DEVNULL, stdout=log,
            stderr=log, start_new_session=True, cwd=ROOT,
        )
    (STATE / f"{unit}.pid").write_text(str(proc.pid))


def signal_unit(unit: str, signum: int) -> None:
    pid = pid_of(unit)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signum)


def stop(unit: str, block: bool) -> None:
    if unit.endswith(".timer"):
        (STATE / f"{unit}.active").unlink(missing_ok=True)
        return
    if pid_of(unit) is None:
        return
    (STATE / f"{unit}.stopping").touch()
    signal_unit(unit, signal.SIGTERM)
    if block:
        deadline = time.monotonic() + 90  # systemd's default TimeoutStopSec
        while pid_of(unit) is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        signal_unit(unit, signal.SIGKILL)


def main(argv: list[str]) -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    with open(ROOT / "calls", "a") as calls:
        calls.write(shlex.join(argv) + "\n")
    args = [a for a in argv if a != "--user"]
    verb, rest = args[0], args[1:]
    flags = [a for a in rest if a.startswith("--")]
    units = [a for a in rest if not a.startswith("--")]
    if verb == "start":
        for unit in units:
            start(unit)
    elif verb == "stop":
        for unit in units:
            stop(unit, "--no-block" not in flags)
    elif verb == "kill":
        sig = next((f.split("=", 1)[1] for f in flags if f.startswith("--signal=")), "SIGTERM")
        for unit in units:
            signal_unit(unit, getattr(signal, sig))
    elif verb == "is-active":
        states = [state(u) for u in units]
        print("\n".join(states))
        return 0 if all(s == "active" for s in states) else 3
    else:
        print(f"fake systemctl: unknown verb {verb}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
