"""Restart what a killed deploy left behind.

A deploy killed outright (SIGKILL, lost CI runner) leaves a closed lease that expires within its
TTL and runs it stopped or recorded but never restarted. Those are the runs that:
- are checkpointed/interrupted because a deploy asked them to stop (`stop_requested_at` set) or
  found their supervisor dead (drain.DEAD_MESSAGE), and
- have no continuation yet (no run `continues` them) and no restart claim.
`claim_restart` stays the final guard, so two reconcilers never restart a run twice.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from shipit.errors import FencingError, GateHeld
from shipit.gate.base import RESTARTABLE_STATES, Lease, Run, Store
from shipit.jobs.drain import DEAD_MESSAGE, Emit, describe_lease
from shipit.jobs.restart import Spawn, restart

# Bounds the history scanned: leftovers are recent by nature, a store can hold years of runs.
SCAN_LIMIT = 2000


def leftovers(store: Store, *, host: str | None = None) -> list[Run]:
    """Runs a deploy stopped or recorded that nothing restarted (oldest first)."""
    runs = store.list_runs(host=host, limit=SCAN_LIMIT)
    continued = {r.continues for r in runs if r.continues}
    found = [
        r for r in runs
        if r.state in RESTARTABLE_STATES
        and r.id not in continued
        and (r.stop_requested_at is not None or r.message == DEAD_MESSAGE)
    ]
    found.reverse()
    return found


def reconcile(
    store: Store,
    *,
    actor: str,
    spawn: Spawn,
    definitions: Mapping[str, Any] | None,
    max_restarts: int,
    emit: Emit,
    host: str | None = None,
) -> dict[str, Any]:
    """Restart each leftover once. Refuses (GateHeld) while a live deploy holds the gate: its
    recorded runs are its own to restart. An expired lease is reopened at its epoch first."""
    lease = store.gate()
    now = time.time()
    if lease.is_closed(now):
        raise GateHeld(describe_lease(lease), lease)
    if lease.state == "closed":
        lease = _reopen_expired(store, lease, actor=actor, emit=emit, host=host)
    runs = leftovers(store, host=host)
    outcomes = restart(
        store, epoch=lease.epoch, actor=actor, recorded=runs, spawn=spawn,
        definitions=definitions, max_restarts=max_restarts, emit=emit, host=host,
        reopen_gate=False,
    )
    return {"lease": store.gate().to_dict(), "outcomes": outcomes}


def _reopen_expired(store: Store, lease: Lease, *, actor: str, emit: Emit, host: str | None) -> Lease:
    try:
        lease = store.open_gate(lease.epoch, actor=actor)
    except FencingError:
        # Someone else moved the gate between our read and our reopen; read what it is now.
        lease = store.gate()
        if lease.is_closed(time.time()):
            raise GateHeld(describe_lease(lease), lease) from None
        return lease
    emit("gate.reopened", host=host, epoch=lease.epoch, holder=actor, expired=True)
    return lease
