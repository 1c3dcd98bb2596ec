"""Adapters for job systems shipit does not start itself (cron, systemd, custom commands, queues).

See shipit/adapters/base.py for the interface and docs/adapters/ for each adapter."""

from shipit.adapters.base import Adapter, WorkItem, run_command

__all__ = ["Adapter", "WorkItem", "run_command"]
