"""Prints how many generated inputs the fuzz area ran (per area and in total)."""

from __future__ import annotations

from typing import Any

from tests.fuzz.profiles import INPUTS, PROFILE


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not INPUTS:
        return
    parts = ", ".join(f"{area} {n}" for area, n in sorted(INPUTS.items()))
    terminalreporter.write_line(
        f"shipit fuzz ({PROFILE} profile): {sum(INPUTS.values())} inputs ran: {parts}"
    )
