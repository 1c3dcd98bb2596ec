"""The deploy side of draining: close the gate, wait for running jobs, stop them on the deadline.

Runs wherever the store is reachable: inside the host agent for per-host stores (file, sqlite), in
the deploy process for the central store (postgres). It never prints; progress goes to `emit`.
Only imports what the lean agent path can afford (no click, rich, pydantic, fabric).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shipit.errors import DeployFailed, FencingError, GateHeld, RequesterGone
from shipit.gate.base import (
    ACTIVE_STATES,
    FINISHED,
    RESTARTABLE_STATES,
    Lease,
    Run,
    Store,
)

TYPE_CHECKING = False  # typing costs ~3 ms to import; annotations are strings (PEP 563)
if TYPE_CHECKING:
    from typing import Any

Emit = Callable[..., "Any"]  # quoted: typing is not imported at run time

# Written on runs whose supervisor vanished without recording an outcome. Reconcile looks for it to
# tell "a deploy recorded this run" apart from "someone stopped this job on purpose".
DEAD_MESSAGE = "supervisor gone without recording an outcome; recorded by a deploy"
POLICIES = ("wait", "abort", "terminate")
# How long past the grace we wait for a supervisor to record its outcome: it has to notice the stop
# (SIGUSR1 locally, next heartbeat remotely), TERM -> grace -> KILL its child and write the result.
STOP_MARGIN = 5.0
# Upper bound of one wait: only a safety net, wakes are event-driven (wait_runs_change).
MAX_SLICE = 1.0
# How often a waiting drain checks that its requester is still there (`keepalive`): a cancelled
# deploy's gate is handed back within about this long, not at the lease's TTL.
PROBE_EVERY = 1.0


@dataclass
class DrainResult:
    lease: Lease
    recorded: list[Run] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"lease": self.lease.to_dict(), "recorded": [r.to_dict() for r in self.recorded]}


class DrainInterrupted(KeyboardInterrupt):
    """Ctrl-C / SIGTERM reached a drain running in the deploy process (central store): the lease
    and the runs stopped so far ride along, so the deploy's recovery reopens the gate and restarts
    them instead of leaving both to the lease's TTL and the next deploy."""

    def __init__(self, lease: Lease, recorded: list[Run]) -> None:
        super().__init__()
        self.lease = lease
        self.recorded = recorded


def _quiet(*_args: object, **_kw: object) -> None:
    return None


class DrainAborted(DeployFailed):
    """The drain gave up (abort policy, or the wait policy's max_wait). The gate was reopened; the
    runs found dead on the way are in `recorded` so the caller can still restart them."""

    def __init__(self, message: str, lease: Lease, recorded: list[Run]) -> None:
        super().__init__(message)
        self.lease = lease
        self.recorded = recorded


def iso(ts: float) -> str:
    from datetime import datetime, timezone  # only for messages: not on every agent call

    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe_lease(lease: Lease | None) -> str:
    """The one line a user sees when the gate is held: who, since when, until when, why."""
    if lease is None:
        return "gate held by another deploy"
    line = f"gate held by {lease.holder or '?'} since {iso(lease.created_at)}, expires {iso(lease.expires_at)}"
    if lease.deploy_id:
        line += f" (deploy {lease.deploy_id})"
    if lease.reason:
        line += f": {lease.reason}"
    return line


def close_gate(
    store: Store,
    *,
    holder: str,
    deploy_id: str,
    reason: str,
    ttl: float,
    lock_wait: float = 0.0,
    force: bool = False,
    alive: Callable[[], None] | None = None,
) -> Lease:
    """close_gate, retrying GateHeld until `lock_wait` seconds have passed (woken by gate changes).

    `alive` is called right before each attempt and raises when whoever asked for the close is
    gone: a host agent may get here seconds after its deploy died (a slow start, a wait for
    restarts to settle, `lock_wait`), and a gate closed then would stay closed for a whole TTL
    on behalf of nobody."""
    deadline = time.monotonic() + max(0.0, lock_wait)
    while True:
        if alive is not None:
            alive()
        try:
            return store.close_gate(
                holder=holder, deploy_id=deploy_id, reason=reason, ttl=ttl, force=force
            )
        except GateHeld:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            store.wait_gate_change(min(left, MAX_SLICE))


def run_info(run: Run, now: float | None = None) -> dict[str, Any]:
    """What events say about a run: enough for a live view, never its env or checkpoint."""
    now = time.time() if now is None else now
    progress = None
    if run.progress_total:
        progress = [run.progress_done or 0.0, run.progress_total]
    started = run.started_at or run.created_at
    # A run that ended ran from its start to its end: its elapsed time stops growing then.
    if run.finished_at is not None and run.state not in ACTIVE_STATES:
        now = run.finished_at
    return {
        "run_id": run.id,
        "job": run.job,
        "pid": run.pid,
        "state": run.state,
        "attempt": run.attempt,
        "elapsed": round(max(0.0, now - started), 3) if started else None,
        "progress": progress,
    }


def _signal_supervisor(run: Run) -> None:
    """Nudge a local supervisor to look for its stop request now instead of at its next heartbeat."""
    if not run.pid or run.pid <= 1:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(run.pid, signal.SIGUSR1)


class _Drainer:
    def __init__(
        self,
        store: Store,
        lease: Lease,
        *,
        ttl: float,
        renew_every: float,
        host: str | None,
        emit: Emit,
        signal_local: bool,
        keepalive: Callable[[], None] | None,
    ) -> None:
        self.store = store
        self.lease = lease
        self.ttl = ttl
        self.renew_every = renew_every
        self.host = host
        self.emit = emit
        self.signal_local = signal_local
        self.keepalive = keepalive
        self.active: dict[str, Run] = {}
        self.recorded: list[Run] = []
        self.stop_requested: set[str] = set()
        self.next_renew = time.monotonic() + renew_every
        self.next_probe = time.monotonic() + PROBE_EVERY

    def _host(self, run: Run) -> str:
        return self.host or run.host

    def track(self, runs: Iterable[Run]) -> None:
        for run in runs:
            if not self.store.is_alive(run):
                self._settle_dead(run)
                continue
            self.active[run.id] = run
            self.emit("job.running", host=self._host(run), run=run_info(run))

    def _settle_dead(self, run: Run) -> None:
        # Re-read after seeing it dead: a supervisor records its outcome before it lets go of its
        # lock, so a state read now is final and must not be overwritten.
        fresh = self.store.get_run(run.id)
        if fresh.state in ACTIVE_STATES:
            fresh = self.store.mark_interrupted(run.id, DEAD_MESSAGE)
            self.emit("job.interrupted", host=self._host(fresh), run=run_info(fresh))
        self._ended(fresh)

    def _ended(self, run: Run) -> None:
        self.active.pop(run.id, None)
        if run.state in RESTARTABLE_STATES:
            self.recorded.append(run)
            if run.id in self.stop_requested:
                self.emit("job.stopped", host=self._host(run), run=run_info(run))
            elif run.message != DEAD_MESSAGE:
                self.emit("job.interrupted", host=self._host(run), run=run_info(run))
        else:
            kind = "job.finished" if run.state == FINISHED else f"job.{run.state}"
            self.emit(kind, host=self._host(run), run=run_info(run))

    def refresh(self) -> None:
        for run_id in list(self.active):
            run = self.store.get_run(run_id)
            if run.state not in ACTIVE_STATES:
                self._ended(run)
            elif not self.store.is_alive(run):
                self._settle_dead(run)
            else:
                self.active[run_id] = run

    def maybe_renew(self) -> None:
        if time.monotonic() < self.next_renew:
            return
        if self.keepalive is not None:
            # Raises when whoever asked for this drain is gone: we must stop renewing then.
            self.keepalive()
        self.lease = self.store.renew(self.lease.epoch, self.ttl)
        self.next_renew = time.monotonic() + self.renew_every
        self.emit("gate.renewed", host=self.host, epoch=self.lease.epoch, holder=self.lease.holder,
                  expires_at=self.lease.expires_at)
        now = time.time()
        for run in self.active.values():
            self.emit("job.running", host=self._host(run), run=run_info(run, now))

    def probe(self) -> None:
        """Raise RequesterGone (through `keepalive`) soon after the requester went away."""
        if self.keepalive is not None and time.monotonic() >= self.next_probe:
            self.keepalive()
            self.next_probe = time.monotonic() + PROBE_EVERY

    def wait_until(self, deadline: float) -> None:
        """Wait for every active run to end, or until `deadline` (monotonic)."""
        while self.active:
            now = time.monotonic()
            if now >= deadline:
                return
            self.probe()
            self.maybe_renew()
            left = min(deadline, self.next_renew) - time.monotonic()
            if left > 0:
                self.store.wait_runs_change(list(self.active), min(left, MAX_SLICE))
            self.refresh()

    def request_stops(self, grace: float) -> None:
        for run in list(self.active.values()):
            try:
                # The request carries the grace: the supervisor applies it, whatever it was
                # started with (unless the run has its own, see stop_wait).
                self.store.request_stop(run.id, self.lease.epoch, grace)
            except KeyError:
                continue
            self.stop_requested.add(run.id)
            self.emit("job.stop_requested", host=self._host(run), run=run_info(run))
            if self.signal_local:
                _signal_supervisor(run)

    def reopen(self) -> None:
        try:
            self.lease = self.store.open_gate(self.lease.epoch, actor=self.lease.holder)
            self.emit("gate.reopened", host=self.host, epoch=self.lease.epoch, holder=self.lease.holder)
        except FencingError:
            # The lease was already lost to someone else; it is theirs to reopen.
            pass

    def settle_stops(self, grace: float, margin: float) -> None:
        """Wait for the runs already asked to stop (their jobs are saving checkpoints), not for
        the others, which just go on: an interrupted drain hands back stopped runs only."""
        deadline = time.monotonic() + self.stop_wait(grace) + margin
        while time.monotonic() < deadline:
            stopping = [i for i in self.active if i in self.stop_requested]
            if not stopping:
                return
            self.maybe_renew()
            self.store.wait_runs_change(stopping, MAX_SLICE)
            self.refresh()

    def stop_margin(self, margin: float) -> float:
        # A central store judges death by heartbeat age: a supervisor that died silently only
        # looks dead once its heartbeat is stale, so give the wait that long too.
        stale = float(getattr(self.store, "heartbeat_stale", 0.0)) if self.store.central else 0.0
        return max(margin, stale)

    def stop_wait(self, grace: float) -> float:
        """The grace to wait out: the deploy's, or longer for a run with its own `--grace`."""
        own = [r.grace for r in self.active.values() if r.grace is not None]
        return max([grace, *own])

    def still_running(self) -> str:
        return ", ".join(f"{r.job} ({r.id}, pid {r.pid})" for r in self.active.values())


def drain(
    store: Store,
    *,
    holder: str,
    deploy_id: str,
    reason: str,
    ttl: float,
    timeout: float,
    policy: str,
    grace: float,
    host: str | None = None,
    emit: Emit,
    renew_every: float | None = None,
    max_wait: float = 3600.0,
    lock_wait: float = 0.0,
    force: bool = False,
    signal_local: bool | None = None,
    keepalive: Callable[[], None] | None = None,
    stop_margin: float = STOP_MARGIN,
) -> DrainResult:
    """Close the gate and bring every running job on this store to rest.

    Returns the lease (still closed, renewed) and the runs this drain stopped or found dead, which
    the caller restarts exactly once after the release. Raises GateHeld when another deploy holds
    the gate (nothing changed), DrainAborted when the policy gives up (gate reopened, nothing
    stopped). `host` filters the runs (None: all runs in the store) and names events.
    `signal_local` (default: the store is per-host, so its supervisors run on this machine) sends
    SIGUSR1 to supervisors after a stop request. `keepalive` is called before each renewal and
    every PROBE_EVERY while waiting, and raises RequesterGone when the requester is gone: then
    the stops already asked for are waited out, the gate is reopened and RequesterGone goes on
    up (the caller restarts what was stopped). Ctrl-C / SIGTERM becomes DrainInterrupted, which
    carries the lease and the runs stopped so far.
    """
    if policy not in POLICIES:
        raise DeployFailed(f"unknown drain_policy {policy!r} (use one of {', '.join(POLICIES)})")
    lease = close_gate(
        store, holder=holder, deploy_id=deploy_id, reason=reason, ttl=ttl,
        lock_wait=lock_wait, force=force, alive=keepalive,
    )
    try:
        emit("gate.closed", host=host, epoch=lease.epoch, holder=lease.holder, expires_at=lease.expires_at)
    except BaseException:
        # The requester vanished between `alive` and the close (or we were interrupted): nothing
        # is stopped yet and nobody will reopen this lease, so hand the gate back now.
        with contextlib.suppress(Exception):
            store.open_gate(lease.epoch, actor=holder)
        raise
    d = _Drainer(
        store, lease, ttl=ttl, renew_every=renew_every or ttl / 3, host=host, emit=emit,
        signal_local=(not store.central) if signal_local is None else signal_local,
        keepalive=keepalive,
    )
    try:
        return _drain(d, timeout=timeout, policy=policy, grace=grace, max_wait=max_wait,
                      stop_margin=stop_margin)
    except RequesterGone:
        # Nothing will switch under this lease now: hand the gate back at once, not at its TTL.
        # Quietly (nobody reads the events); the caller restarts what was stopped.
        d.keepalive, d.emit = None, _quiet
        with contextlib.suppress(Exception):
            d.settle_stops(grace, d.stop_margin(stop_margin))
        with contextlib.suppress(Exception):
            d.reopen()
        raise
    except KeyboardInterrupt as exc:
        with contextlib.suppress(Exception):
            d.settle_stops(grace, d.stop_margin(stop_margin))
        raise DrainInterrupted(d.lease, d.recorded) from exc


def _drain(d: _Drainer, *, timeout: float, policy: str, grace: float, max_wait: float,
           stop_margin: float) -> DrainResult:
    start = time.monotonic()
    d.track(d.store.list_runs(states=ACTIVE_STATES, host=d.host))
    d.wait_until(start + timeout)
    if not d.active:
        return DrainResult(d.lease, d.recorded)
    if policy == "wait":
        d.wait_until(start + max(timeout, max_wait))
        if not d.active:
            return DrainResult(d.lease, d.recorded)
        names = d.still_running()
        d.reopen()
        raise DrainAborted(f"jobs still running after max_wait {max_wait:g}s: {names}", d.lease, d.recorded)
    if policy == "abort":
        names = d.still_running()
        d.reopen()
        raise DrainAborted(
            f"jobs still running after drain_timeout {timeout:g}s (drain_policy abort): {names}",
            d.lease, d.recorded,
        )
    d.request_stops(grace)
    wait = d.stop_wait(grace)
    d.wait_until(time.monotonic() + wait + d.stop_margin(stop_margin))
    if d.active:
        # Their death is not confirmed, so they are not recorded; the deploy must not switch under
        # them. They keep their stop request: a later drain finds them again.
        names = d.still_running()
        d.reopen()
        raise DrainAborted(f"jobs did not stop within grace {wait:g}s: {names}", d.lease, d.recorded)
    return DrainResult(d.lease, d.recorded)
