"""Claiming a run through the gate, waiting (event-driven, bounded) while a deploy holds it.

Shared by the `shipit job run` supervisor and the standalone Python API.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import replace

from shipit.errors import GateWaitTimeout, StoreUnavailable
from shipit.gate.base import ClaimSpec, Lease, Run, Store

# Never sleep longer than this between claims even if the backend promises to wake us. The
# backends' wait_gate_change() waits for a change from what THEY read on entry, so a reopen that
# lands between our claim and that read is missed; the re-check below narrows that window to
# microseconds and this cap bounds what is left of it.
_MAX_SLICE = 2.0
# Re-claim slightly after the lease's expiry (an expired lease counts as open), never busy-loop
# when the store's clock is behind ours.
_EXPIRY_MARGIN = 0.05
_MIN_SLICE = 0.05
_SKEWED_SLICE = 0.5
# Between tries while the store is unreachable (riding out an outage, see claim_when_open).
_OUTAGE_SLICE = 1.0


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts)) if ts else "?"


def describe_lease(lease: Lease) -> str:
    """One line a user can act on: who closed the gate, since when, until when and why."""
    who = lease.holder or "unknown holder"
    deploy = f" (deploy {lease.deploy_id})" if lease.deploy_id else ""
    why = f": {lease.reason}" if lease.reason else ""
    return (
        f"gate closed by {who}{deploy} since {_utc(lease.created_at)}"
        f" until {_utc(lease.expires_at)}{why}"
    )


def claim_when_open(
    store: Store,
    spec: ClaimSpec,
    *,
    max_wait: float,
    on_closed: Callable[[Lease], None] | None = None,
    keepalive: Callable[[], None] | None = None,
    ride_out: float = 0.0,
    on_outage: Callable[[StoreUnavailable], None] | None = None,
) -> Run:
    """Claim a run, waiting at most `max_wait` seconds for a closed gate to reopen or expire.

    `ride_out`: for how long an unreachable store (a PostgreSQL restart, a failover) is tried
    again instead of raising StoreUnavailable; 0 fails at once (a new job fails closed: exit 5).
    Nothing is admitted meanwhile. `on_outage` is told once per outage.

    `on_closed` is called once per closing (per epoch), not on every wake-up, so a waiting job
    says why it waits exactly once. `keepalive` is called before every wait (at least every
    couple of seconds), for a heartbeat that must stay fresh meanwhile. Raises GateWaitTimeout
    (exit 75) when the wait runs out; no run is recorded in the store in that case.

    While it waits, the job is visible through a waiting entry (`store.enter_waiting`), which
    is not a run: the claim that lets the job in takes over the entry's id and removes it in the
    same step; giving up (or any error) removes it; a process that dies leaves an entry that
    reads as dead (its lock is free, its heartbeat goes stale). Best effort: the entry is only
    there to be seen, so a store that cannot write it never keeps the job from its claim.
    """
    deadline = time.monotonic() + max_wait
    announced: int | None = None
    waiting: Run | None = None
    claimed = False
    outage_since: float | None = None

    def outage(exc: StoreUnavailable) -> None:
        """Raise it, or wait a moment before trying again (within `ride_out`)."""
        nonlocal outage_since
        now = time.monotonic()
        if outage_since is None:
            outage_since = now
            if on_outage is not None and ride_out > 0:
                on_outage(exc)
        if now - outage_since >= ride_out or now >= deadline:
            raise exc
        time.sleep(min(_OUTAGE_SLICE, max(0.0, deadline - now)))

    try:
        while True:
            try:
                result = store.claim(replace(spec, run_id=waiting.id) if waiting else spec)
            except StoreUnavailable as exc:
                outage(exc)
                continue
            outage_since = None
            if isinstance(result, Run):
                claimed = True
                return result
            lease = result
            if on_closed is not None and lease.epoch != announced:
                announced = lease.epoch
                on_closed(lease)
            if waiting is None:
                with contextlib.suppress(Exception):
                    waiting = store.enter_waiting(spec, lease)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GateWaitTimeout(
                    f"job {spec.job} gave up after waiting {max_wait:g}s at the closed gate"
                    f" ({describe_lease(lease)})"
                )
            try:
                again = store.gate()
            except StoreUnavailable as exc:
                outage(exc)
                continue
            if again.state != "closed" or again.epoch != lease.epoch:
                # Reopened (or taken over) while we were announcing: claim again at once. Only a
                # change the store made counts: judging expiry by our clock would spin when it is
                # ahead of the store's (PostgreSQL stamps leases with the server's time).
                continue
            if keepalive is not None:
                keepalive()
            if waiting is not None:
                with contextlib.suppress(Exception):
                    store.refresh_waiting(waiting.id)
            until_expiry = lease.expires_at - time.time() + _EXPIRY_MARGIN
            if until_expiry < _MIN_SLICE:
                # Expired by our clock, live by the store's: the clocks disagree. Don't re-claim
                # every few milliseconds; a reopen still wakes us through wait_gate_change.
                until_expiry = _SKEWED_SLICE
            try:
                store.wait_gate_change(max(_MIN_SLICE, min(remaining, until_expiry, _MAX_SLICE)))
            except StoreUnavailable as exc:
                outage(exc)
    finally:
        if waiting is not None and not claimed:
            with contextlib.suppress(Exception):
                store.leave_waiting(waiting.id)
