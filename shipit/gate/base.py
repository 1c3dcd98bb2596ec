"""The job store interface shared by the file, SQLite and PostgreSQL backends.

The store holds the gate (a lease), runs, restart claims and an audit trail. Both sides use it:
the job side (`shipit job run`, the Python API) claims runs, heartbeats, checkpoints and
finishes; the deploy side closes the gate, lists and stops runs, and claims restarts.

Protocol (see docs/ARCHITECTURE.md and ../shared/DESIGN.md "The gate"):
- `claim()` checks the gate and inserts the run in ONE atomic step.
- `close_gate()` flips the gate (epoch+1) and then passes a barrier, so that every claim that
  saw the gate open has committed its run row before `close_gate()` returns. A `list_runs()`
  after `close_gate()` is therefore complete.
- A lease whose `expires_at` has passed counts as open. Only the holder's epoch may renew,
  reopen, request stops or claim restarts (FencingError otherwise); `force=True` overrides and
  is written to the audit trail.
- A restart claim is taken once per run (`claim_restart`); the supervisor it spawns holds it
  (`hold_restart`) until its own claim commits, so a claim whose holder died before that can be
  told apart from a pending one and re-taken, once (`retake_restart`). `claim()` with
  `continues` set is unique per continued run, so a re-spawn can never run a job twice.
- Times are seconds since the epoch (float). PostgreSQL uses the server's clock.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

TYPE_CHECKING = False  # typing costs ~3 ms to import; annotations are strings (PEP 563)
if TYPE_CHECKING:
    from typing import Any

# 2: unique continuations (claim() with `continues`), restart claims held by their supervisor
# and re-taken when it died (respawns). 3: a run's own grace and the grace its stop request
# carries; waiting entries. Older stores are upgraded when first opened.
SCHEMA_VERSION = 3

# Run states. A run moves waiting -> running -> finished | failed | stop_requested, and a stopped
# run ends checkpointed | interrupted. A deploy restarts checkpointed/interrupted runs as NEW runs
# (attempt+1, `continues` = old id). given_up: max_restarts reached (or forgotten by hand), not
# restarted again. `waiting` is never a state of a recorded run: it is what a waiting entry
# (`list_waiting()`, a job at the closed gate, kept apart from the runs) reads as.
WAITING = "waiting"
RUNNING = "running"
FINISHED = "finished"
FAILED = "failed"
STOP_REQUESTED = "stop_requested"
CHECKPOINTED = "checkpointed"
INTERRUPTED = "interrupted"
GIVEN_UP = "given_up"
ACTIVE_STATES = frozenset({RUNNING, STOP_REQUESTED})
RESTARTABLE_STATES = frozenset({CHECKPOINTED, INTERRUPTED})
FINAL_STATES = frozenset({FINISHED, FAILED, CHECKPOINTED, INTERRUPTED, GIVEN_UP})
ALL_STATES = (WAITING, RUNNING, FINISHED, FAILED, STOP_REQUESTED, CHECKPOINTED, INTERRUPTED, GIVEN_UP)


@dataclass(frozen=True)
class Lease:
    state: str  # "open" | "closed"
    epoch: int
    holder: str = ""
    reason: str = ""
    deploy_id: str = ""
    created_at: float = 0.0
    expires_at: float = 0.0

    def is_closed(self, now: float) -> bool:
        """Closed and not yet expired. An expired lease counts as open."""
        return self.state == "closed" and self.expires_at > now

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Sealed:
    """A stored env or checkpoint still encrypted: read back as is, decrypted only when a run
    is actually restarted or shown with its state (`Run.opened()`). Listing, status, draining
    and finishing runs therefore never need the state key, and a run whose key is lost cannot
    block them. Written back unchanged (the token) by stores that rewrite whole runs."""

    __slots__ = ("token", "where")

    def __init__(self, token: str, where: str = "job store") -> None:
        self.token = token
        self.where = where  # names the store and the run in errors

    def open(self) -> Any:
        """The value, decrypted: StateKeyError (exit 5) without the right key, the token kept."""
        import json

        from shipit import crypto
        from shipit.errors import CorruptState

        text = crypto.unseal(self.token, self.where)
        try:
            return json.loads(text)
        except ValueError:
            raise CorruptState(f"{self.where}: the saved state is not JSON once decrypted") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sealed) and other.token == self.token

    def __hash__(self) -> int:
        return hash(self.token)

    def __repr__(self) -> str:
        return "Sealed(<encrypted>)"

    def __deepcopy__(self, memo: dict[int, Any]) -> Sealed:
        return self  # immutable


@dataclass(frozen=True)
class ClaimSpec:
    """What a job asks for when it claims a run."""

    job: str
    host: str
    command: tuple[str, ...]
    cwd: str | None = None  # as given (unresolved, e.g. /app/current), resolved after the gate opens
    env: dict[str, str] = field(default_factory=dict)  # the allow-listed environment
    key: str | None = None  # a job key: at most one active run per key
    pid: int | None = None
    continues: str | None = None  # the run this one continues (restart)
    attempt: int = 1
    restarts: int = 0  # restarts caused by deploys (do not count as failures)
    # The supervisor's own grace (an explicit `--grace`): it wins over the grace a deploy's
    # stop request carries, so it is recorded and the drain waits for it. None: the deploy's.
    grace: float | None = None
    # The id to give the run: the id of this job's waiting entry, so the entry turns into it.
    run_id: str | None = None


@dataclass(frozen=True)
class Run:
    id: str
    job: str
    host: str
    command: tuple[str, ...]
    state: str
    attempt: int = 1
    key: str | None = None
    pid: int | None = None
    cwd: str | None = None
    env: dict[str, str] | Sealed = field(default_factory=dict)  # Sealed: encrypted, see opened()
    epoch: int = 0  # gate epoch seen open when the run was claimed
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    progress_done: float | None = None
    progress_total: float | None = None
    checkpoint: Any = None  # JSON-able saved state (None = never checkpointed), maybe Sealed
    checkpoint_at: float | None = None
    continues: str | None = None
    restarts: int = 0
    exit_code: int | None = None
    message: str | None = None
    stop_requested_at: float | None = None
    grace: float | None = None  # the supervisor's own (explicit) grace; None: the deploy's
    stop_grace: float | None = None  # the grace the deploy's stop request carries

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; an encrypted env or checkpoint stays the stored token (never plaintext)."""
        d = asdict(self)
        d["command"] = list(self.command)
        for k in ("env", "checkpoint"):
            if isinstance(d[k], Sealed):
                d[k] = d[k].token
        return d

    @property
    def sealed(self) -> bool:
        """Its env or checkpoint is still encrypted (not decrypted by this process)."""
        return isinstance(self.env, Sealed) or isinstance(self.checkpoint, Sealed)

    def opened(self) -> Run:
        """This run with its env and checkpoint decrypted: what a restart or `jobs show --state`
        needs. StateKeyError (exit 5, naming the run) when the key is missing or wrong; nothing
        stored changes."""
        if not self.sealed:
            return self
        from dataclasses import replace

        env = self.env.open() if isinstance(self.env, Sealed) else self.env
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            from shipit.errors import CorruptState

            raise CorruptState(f"run {self.id!r}: its recorded env is not a mapping of text")
        ckpt = self.checkpoint.open() if isinstance(self.checkpoint, Sealed) else self.checkpoint
        return replace(self, env=env, checkpoint=ckpt)


@dataclass(frozen=True)
class RestartClaim:
    """A restart claim as the store sees it now."""

    run_id: str
    epoch: int  # gate epoch it was taken (or last re-taken) at
    claimed_at: float  # when it was taken or last re-taken (the store's clock)
    age: float  # seconds since claimed_at, by the store's clock
    held: bool  # a live supervisor holds it (lock held / hold heartbeat fresh)
    respawns: int = 0  # times it was re-taken because nothing had continued the run


@dataclass(frozen=True)
class AuditEntry:
    ts: float
    action: str  # close | reopen | renew-lost | force-close | force-open | restart | give-up ...
    actor: str
    epoch: int
    reason: str = ""
    forced: bool = False


class Store(ABC):
    """One job store. Implementations must be safe across processes (and hosts for postgres)."""

    kind: str = ""
    # True when one store serves every host of a stage (postgres); False for per-host stores.
    central: bool = False

    # -- gate ---------------------------------------------------------------------------------
    @abstractmethod
    def gate(self) -> Lease:
        """The current lease (state 'open', epoch 0 if the gate was never closed)."""

    @abstractmethod
    def close_gate(
        self, *, holder: str, deploy_id: str, reason: str, ttl: float, force: bool = False
    ) -> Lease:
        """Close atomically (epoch+1) and pass the barrier. Raises GateHeld when an unexpired
        lease is held by another deploy_id (unless force, which is audited)."""

    @abstractmethod
    def renew(self, epoch: int, ttl: float) -> Lease:
        """Extend the lease. FencingError if the gate is not closed at this epoch."""

    @abstractmethod
    def open_gate(self, epoch: int | None, *, actor: str, force: bool = False) -> Lease:
        """Reopen. FencingError unless closed at `epoch` (or force, audited). Reopening an
        already-open gate at the same epoch is a no-op (idempotent)."""

    @abstractmethod
    def wait_gate_change(self, timeout: float) -> None:
        """Block until the gate row may have changed or `timeout` passes (event-driven where the
        backend allows; callers re-read `gate()` after)."""

    # -- job side -----------------------------------------------------------------------------
    @abstractmethod
    def claim(self, spec: ClaimSpec) -> Run | Lease:
        """Atomically: if the gate is open insert a RUNNING run and return it; if closed return
        the closing Lease (nothing inserted). For the file backend the returned run's lock is
        held by this process until `finish()` / `release_run_lock()`. With `spec.continues` set,
        at most one run ever continues a given run: a later claim raises AlreadyContinued
        (shipit.gate._common) naming the run that does, and inserts nothing."""

    @abstractmethod
    def heartbeat(
        self, run_id: str, *, pid: int | None = None, progress: tuple[float, float] | None = None
    ) -> bool:
        """Record liveness (and optionally the child pid and progress). Returns True when a stop
        was requested for this run."""

    @abstractmethod
    def save_checkpoint(self, run_id: str, state: Any) -> None: ...

    @abstractmethod
    def finish(
        self, run_id: str, state: str, exit_code: int | None = None, message: str | None = None
    ) -> Run:
        """Record the final state (finished/failed/checkpointed/interrupted)."""

    # -- deploy side --------------------------------------------------------------------------
    @abstractmethod
    def get_run(self, run_id: str) -> Run:
        """KeyError if unknown."""

    @abstractmethod
    def list_runs(
        self,
        states: Iterable[str] | None = None,
        host: str | None = None,
        limit: int | None = None,
    ) -> list[Run]:
        """Newest first."""

    @abstractmethod
    def request_stop(self, run_id: str, epoch: int, grace: float | None = None) -> None:
        """Mark stop_requested (FencingError if the gate is not closed at `epoch`). `grace`:
        the seconds between TERM and KILL the deploy grants; recorded as `stop_grace`, which
        the supervisor uses unless the run has its own (`Run.grace`)."""

    @abstractmethod
    def is_alive(self, run: Run) -> bool:
        """Is the run's supervisor alive? File/SQLite: its run lock is held. PostgreSQL: its
        heartbeat is fresh. Never judged from run time."""

    @abstractmethod
    def mark_interrupted(self, run_id: str, message: str) -> Run:
        """For a run whose death is confirmed (not alive) but which never recorded an outcome."""

    @abstractmethod
    def wait_runs_change(self, run_ids: Iterable[str], timeout: float) -> None:
        """Block until any of these runs may have ended, or timeout (event-driven: lock waits
        for file/SQLite, LISTEN/NOTIFY for PostgreSQL)."""

    @abstractmethod
    def continuations(self, run_ids: Iterable[str]) -> dict[str, str]:
        """For those of these runs that another run continues: run id -> the continuing run's id."""

    # -- waiting entries ------------------------------------------------------------------------
    # A job waiting at the closed gate is shown (status, `jobs list --state waiting`) through a
    # waiting entry, kept apart from the runs: it is not a claim and never a run, so neither the
    # claim's gate check, nor close_gate()'s barrier, nor list_runs() (what the drain reads)
    # ever sees it. Its liveness is that of a run: a lock its process holds (file, SQLite), or
    # a heartbeat (PostgreSQL). claim() with `spec.run_id` set to its id removes it in the same
    # step that records the run, which takes over the id.

    @abstractmethod
    def enter_waiting(self, spec: ClaimSpec, lease: Lease) -> Run:
        """Record that this process waits at the gate `lease` describes; returns the entry (state
        WAITING, `created_at` = since when). Pass its id as `ClaimSpec.run_id` to the claims."""

    @abstractmethod
    def refresh_waiting(self, run_id: str) -> None:
        """Keep a waiting entry alive (PostgreSQL heartbeat); a held lock needs nothing."""

    @abstractmethod
    def leave_waiting(self, run_id: str) -> None:
        """Remove a waiting entry (gave up, or failed); a no-op when it is gone already."""

    @abstractmethod
    def list_waiting(self, host: str | None = None) -> list[Run]:
        """The live waiting entries, newest first. Entries of processes that died are not shown
        (and are cleaned up where the backend can)."""

    @abstractmethod
    def claim_restart(self, run_id: str, epoch: int) -> bool:
        """Exactly-once restart: True for the first caller for this run_id (a unique claim row
        keyed by run id, recording the epoch); False for every later caller. Audited."""

    @abstractmethod
    def restart_claims(self, run_ids: Iterable[str]) -> dict[str, RestartClaim]:
        """The restart claims of these runs (runs without one are left out)."""

    @abstractmethod
    def hold_restart(self, run_id: str) -> bool:
        """Called by the supervisor spawned for a restart, before it claims its run: hold the
        restart claim so that it reads as pending, not dead (file/SQLite: a lock held by this
        process; PostgreSQL: a heartbeat, see refresh_restart_hold). False when another live
        process holds it already. True also when the run has no restart claim (a continuation
        started by hand): there is nothing to hold then."""

    @abstractmethod
    def refresh_restart_hold(self, run_id: str) -> None:
        """Keep a held restart claim fresh while waiting (PostgreSQL); a lock needs nothing."""

    @abstractmethod
    def release_restart_hold(self, run_id: str, *, continued: bool) -> None:
        """Let go of the hold. `continued`: a run now continues this one (ours or another's), so
        the claim will never be judged again and its lock file may go."""

    @abstractmethod
    def retake_restart(self, run_id: str, epoch: int, *, grace: float) -> RestartClaim | None:
        """Re-take an orphaned restart claim, atomically, at most once per orphaning: only when
        the run is still checkpointed/interrupted, no run continues it, nothing holds the claim
        and the claim is at least `grace` seconds old. Returns the claim as it was (the caller re-spawns), None otherwise. FencingError
        unless `epoch` is the gate's current epoch. Audited `restart-respawn`."""

    @abstractmethod
    def audit(self, action: str, actor: str, epoch: int, reason: str = "", forced: bool = False) -> None: ...

    @abstractmethod
    def audit_log(self, limit: int = 50) -> list[AuditEntry]: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
