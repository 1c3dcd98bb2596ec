"""Restart what a killed deploy left behind, and restarts that were lost on the way.

A deploy killed outright (SIGKILL, lost CI runner) leaves a closed lease that expires within its
TTL and runs it stopped or recorded but never restarted. Those are the runs that:
- are checkpointed/interrupted because a deploy asked them to stop (`stop_requested_at` set) or
  found their supervisor dead (drain.DEAD_MESSAGE), and
- have no continuation yet (no run `continues` them), and
- have no restart claim, or one that was lost: nothing holds it (its spawned supervisor died
  before claiming its run: a host crash, SIGKILL, store unreachable, gave up at the gate) and
  it is older than the spawn grace. A claim still held is a restart on its way: left alone.
`claim_restart` / `retake_restart` stay the final guards, so two reconcilers never restart a run
twice, and a continuation is unique per run in the store besides.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from shipit.errors import FencingError, GateHeld
from shipit.gate._common import orphaned
from shipit.gate.base import RESTARTABLE_STATES, Lease, RestartClaim, Run, Store
from shipit.jobs.drain import DEAD_MESSAGE, Emit, describe_lease
from shipit.jobs.restart import SPAWN_GRACE, Spawn, restart

TYPE_CHECKING = False  # typing costs ~3 ms to import; annotations are strings (PEP 563)
if TYPE_CHECKING:
    from typing import Any

# Bounds the history scanned: leftovers are recent by nature, a store can hold years of runs.
SCAN_LIMIT = 2000
# Margin past the grace when waiting for young claims to settle (clocks tick unevenly).
_SETTLE_MARGIN = 0.1


def leftovers(
    store: Store, *, host: str | None = None, spawn_grace: float = SPAWN_GRACE,
    wait: bool = False,
) -> list[Run]:
    """Runs a deploy stopped or recorded that nothing restarted (oldest first).

    A claim nothing holds yet but younger than `spawn_grace` may be a supervisor still starting:
    not a leftover yet. With `wait`, wait for such claims to settle (held, continued, or old
    enough to count as lost) and look again, so one reconcile catches a restart lost moments ago.
    """
    found, settle_in = _scan(store, host, spawn_grace)
    if wait and settle_in > 0:
        time.sleep(settle_in + _SETTLE_MARGIN)
        found, _ = _scan(store, host, spawn_grace)
    return found


def _scan(store: Store, host: str | None, grace: float) -> tuple[list[Run], float]:
    """The leftovers, and how long until the youngest unheld claim is old enough to judge."""
    runs = store.list_runs(host=host, limit=SCAN_LIMIT)
    continued = {r.continues for r in runs if r.continues}
    stopped = [r for r in runs if stopped_by_deploy(r) and r.id not in continued]
    claims = store.restart_claims(r.id for r in stopped) if stopped else {}
    found = [r for r in stopped if _restartable(claims.get(r.id), grace)]
    found.reverse()
    young = [grace - cl.age for cl in claims.values() if not cl.held and cl.age < grace]
    return found, max(young, default=0.0)


def stopped_by_deploy(run: Run) -> bool:
    """Stopped (checkpointed/interrupted) by a deploy, or found dead by one: a run a deploy owes
    a restart until a run continues it. A run stopped otherwise (its key claimed again after its
    process vanished, a job's own SIGTERM) is nobody's to restart."""
    return run.state in RESTARTABLE_STATES and (
        run.stop_requested_at is not None or run.message == DEAD_MESSAGE
    )


def _restartable(claim: RestartClaim | None, grace: float) -> bool:
    return claim is None or orphaned(claim, grace)


def reconcile(
    store: Store,
    *,
    actor: str,
    spawn: Spawn,
    definitions: Mapping[str, Any] | None,
    max_restarts: int,
    emit: Emit,
    host: str | None = None,
    spawn_grace: float = SPAWN_GRACE,
) -> dict[str, Any]:
    """Restart each leftover once. Refuses (GateHeld) while a live deploy holds the gate: its
    recorded runs are its own to restart. An expired lease is reopened at its epoch first."""
    lease = _usable_lease(store, actor=actor, emit=emit, host=host)
    runs = leftovers(store, host=host, spawn_grace=spawn_grace, wait=True)
    if runs:
        lease = _usable_lease(store, actor=actor, emit=emit, host=host)  # we may have waited
    outcomes = restart(
        store, epoch=lease.epoch, actor=actor, recorded=runs, spawn=spawn,
        definitions=definitions, max_restarts=max_restarts, emit=emit, host=host,
        reopen_gate=False, spawn_grace=spawn_grace,
    )
    return {"lease": store.gate().to_dict(), "outcomes": outcomes}


def _usable_lease(store: Store, *, actor: str, emit: Emit, host: str | None) -> Lease:
    """The gate's lease, reopened if it expired; GateHeld while a live deploy holds it."""
    lease = store.gate()
    if lease.is_closed(time.time()):
        raise GateHeld(describe_lease(lease), lease)
    if lease.state == "closed":
        lease = _reopen_expired(store, lease, actor=actor, emit=emit, host=host)
    return lease


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
