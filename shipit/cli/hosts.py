"""`shipit hosts ...` (placeholder until trust lands)."""

from __future__ import annotations

import click


@click.group("hosts")
def hosts() -> None:
    """Host keys: scan and trust them (see docs/security.md)."""
