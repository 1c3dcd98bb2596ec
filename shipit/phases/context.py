"""What every phase receives: the resolved stage, the open hosts, the event bus and the state
the phases hand each other. Phases are functions `phase(ctx: DeployContext) -> None` that raise
on failure; the runner (shipit/runner.py) orders them, runs hooks, and handles failures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from shipit.config.model import StageConfig
from shipit.events import EventBus
from shipit.hosts.base import Host

T = TypeVar("T")


@dataclass
class JobsState:
    """Filled by drain_jobs, consumed by restart_jobs / recovery.

    leases: host name -> lease dict (per-host stores) or {"*": lease dict} for a central store.
    recorded: runs (as dicts, see shipit.gate.base.Run.to_dict) stopped by this deploy, to
    restart exactly once after the release (or on the live code after a failure).
    """

    leases: dict[str, dict[str, Any]] = field(default_factory=dict)
    recorded: list[dict[str, Any]] = field(default_factory=list)
    reopened: bool = False
    stop_renewal: Callable[[], None] | None = None


@dataclass
class DeployContext:
    stage: StageConfig
    hosts: list[Host]
    bus: EventBus
    deploy_id: str
    actor: str  # who deploys: user@machine or the CI job
    dry_run: bool = False
    revision: str | None = None
    release: str | None = None  # new release stamp (releases/<stamp>)
    previous_release: str | None = None  # what `current` pointed at before (rollback target)
    archive: str | None = None  # local path of the built source archive
    switched: bool = False  # has any host's `current` been switched to `release`?
    jobs: JobsState = field(default_factory=JobsState)
    # Per-host facts gathered by pre_deploy: {"releases": [...], "current": stamp | None}
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)

    @property
    def release_path(self) -> str:
        assert self.release
        return f"{self.stage.deploy_to}/releases/{self.release}"

    def fan_out(self, fn: Callable[[Host], T]) -> dict[str, T]:
        """Run fn on every host in parallel (capped by stage.parallelism). Raises the first
        failure only after every host has finished (see shipit.hosts.fanout)."""
        from shipit.hosts.fanout import run_parallel

        return run_parallel(self.hosts, fn, limit=self.stage.parallelism)
