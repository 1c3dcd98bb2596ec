"""A job whose clock runs ahead of the store's (PostgreSQL stamps leases with the server's
time) waits at a closed gate without hammering the store, and still gets in when it reopens."""

from __future__ import annotations

import threading
import time

import pytest

from shipit.errors import GateWaitTimeout
from shipit.gate.base import ClaimSpec, Lease, Run
from shipit.jobs.gatewait import claim_when_open


class ServerClockStore:
    """The part of a store claim_when_open uses, judging the lease by a clock 5 s behind ours
    the way a PostgreSQL server behind the job's host would."""

    SKEW = 5.0

    def __init__(self) -> None:
        self.claims = 0
        self.reopened = threading.Event()
        self.lease = self._closed()

    def _closed(self) -> Lease:
        server_now = time.time() - self.SKEW
        # Renewed by a live deploy: 3 s left by the server's clock, long past by ours.
        return Lease(state="closed", epoch=7, holder="ci", created_at=server_now - 1,
                     expires_at=server_now + 3)

    def claim(self, spec: ClaimSpec) -> Run | Lease:
        self.claims += 1
        if self.reopened.is_set():
            return Run(id="r1", job=spec.job, host=spec.host, command=tuple(spec.command),
                       state="running", attempt=1, epoch=7)
        self.lease = self._closed()
        return self.lease

    def gate(self) -> Lease:
        return Lease(state="open", epoch=7) if self.reopened.is_set() else self.lease

    def wait_gate_change(self, timeout: float) -> None:
        self.reopened.wait(timeout)

    def enter_waiting(self, spec: ClaimSpec, lease: Lease) -> None:
        return None


SPEC = ClaimSpec(job="report", host="web1", command=("true",))


def test_a_clock_ahead_of_the_store_does_not_spin_at_a_closed_gate() -> None:
    store = ServerClockStore()
    with pytest.raises(GateWaitTimeout):
        claim_when_open(store, SPEC, max_wait=1.5)  # type: ignore[arg-type]
    # Before the fix this looped on claim() without waiting: thousands of transactions a second.
    assert store.claims <= 6, store.claims


def test_a_reopen_still_lets_the_waiting_job_in() -> None:
    store = ServerClockStore()
    threading.Timer(0.3, store.reopened.set).start()
    run = claim_when_open(store, SPEC, max_wait=10)  # type: ignore[arg-type]
    assert run.id == "r1" and store.claims <= 4
