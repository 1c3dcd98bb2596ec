"""restart_jobs: reopen the gate and restart every recorded job exactly once on the live code.

STUB: replaced by the jobs work. Signatures are the contract the runner uses.
"""

from __future__ import annotations

from shipit.phases.context import DeployContext


def restart_jobs(ctx: DeployContext) -> None:
    """After a successful switch: reopen (epoch-checked) and restart recorded runs on the new current."""


def recover_jobs(ctx: DeployContext) -> None:
    """On any failure after the gate closed: reopen and restart recorded runs on whatever code is
    live (after a switch back, the old release). Must be safe to call when nothing was closed, and
    must never raise past the runner without reporting (it is on the failure path)."""
