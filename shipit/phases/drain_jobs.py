"""drain_jobs: close the gate, wait for running jobs, stop them on the deadline, record them.

STUB: replaced by the jobs work. Signature is the contract the runner uses.
"""

from __future__ import annotations

from shipit.phases.context import DeployContext


def drain_jobs(ctx: DeployContext, *, lock_wait: float = 0.0) -> None:
    ctx.bus.emit("log", phase="drain_jobs", message="job draining not implemented yet", level="warning")
