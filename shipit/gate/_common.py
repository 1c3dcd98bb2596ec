"""Pieces shared by the store backends: run (de)serialisation, lease rules, run locks.

Kept apart from base.py (the interface) so that the backends agree on every rule that is not
storage: who may close, what GateHeld says, how a run is encoded, how liveness is probed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import fields

from shipit import crypto
from shipit.errors import CorruptState, FencingError, GateHeld, ShipitError, StoreUnavailable
from shipit.gate.base import (
    ALL_STATES,
    FINAL_STATES,
    GIVEN_UP,
    RESTARTABLE_STATES,
    SCHEMA_VERSION,
    WAITING,
    ClaimSpec,
    Lease,
    RestartClaim,
    Run,
    Sealed,
)

TYPE_CHECKING = False  # typing costs ~3 ms to import; annotations are strings (PEP 563)
if TYPE_CHECKING:
    from typing import Any

RUN_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Run))
# Fields kept as JSON text in SQL columns (structured values).
JSON_FIELDS = frozenset({"command", "env", "checkpoint"})
# Fields encrypted at rest when a state key is configured (see shipit/crypto.py).
SEALED_FIELDS = ("env", "checkpoint")
LEASE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Lease))

# Poll period for waits that cannot be event-driven by the OS (flock has no timeout).
POLL = 0.02
# How long a supervisor keeps trying for a restart hold: probers hold the lock for an instant.
HOLD_WAIT = 1.0


class StoreMissing(StoreUnavailable):
    """The job side (`shipit job run`, the Python API) found no store where it was told to look.
    It never creates one: a typo in a cron line's --store would otherwise run the job through a
    brand-new, open gate that no deploy ever closes. The deploy (its agent) creates the store."""

    def __init__(self, where: str) -> None:
        super().__init__(
            f"no job store at {where}: deploy the stage first (it creates the store) or fix "
            "--store/SHIPIT_STORE"
        )


class RunBusy(ShipitError):
    """Another live run holds the same job key (ClaimSpec.key)."""

    exit_code = 75


class AlreadyContinued(ShipitError):
    """Another run already continues this one: `claim()` with `continues` is unique per run, so a
    supervisor spawned twice for the same restart (a re-spawn racing a slow first spawn) finds out
    here and runs nothing. Not a failure: `shipit job run` says so and exits 0."""

    exit_code = 0

    def __init__(self, continued: str, by: str) -> None:
        super().__init__(f"run {continued} is already continued by run {by}")
        self.continued = continued
        self.by = by


def new_run_id() -> str:
    """Time-ordered ids so that a directory listing sorts oldest first."""
    return f"{time.time_ns() // 1000:015x}{os.urandom(4).hex()}"


def orphaned(claim: RestartClaim, grace: float) -> bool:
    """A restart claim nobody is acting on: nothing holds it, and its supervisor has had `grace`
    seconds to start and take the hold. (Whether a run continues it is checked apart.)"""
    return not claim.held and claim.age >= grace


def respawn_reason(claim: RestartClaim) -> str:
    """Why a restart is re-spawned, for the audit trail and the event."""
    return (
        f"run {claim.run_id}: its restart, claimed {claim.age:.1f}s earlier at epoch "
        f"{claim.epoch}, has no run continuing it and no live process holding it (the spawned "
        "supervisor died or never started)"
    )


def fmt_ts(ts: float) -> str:
    from datetime import datetime, timezone  # only for messages: not on every job start

    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def gate_held_message(lease: Lease) -> str:
    reason = f": {lease.reason}" if lease.reason else ""
    return (
        f"the gate is held by {lease.holder or '?'} (deploy {lease.deploy_id or '?'}) "
        f"since {fmt_ts(lease.created_at)}, expires {fmt_ts(lease.expires_at)}{reason}"
    )


def check_schema(version: int, where: str) -> None:
    if version > SCHEMA_VERSION:
        raise CorruptState(
            f"{where} was written by a newer shipit (schema {version}, this shipit knows "
            f"{SCHEMA_VERSION}): upgrade shipit on this host"
        )


def lease_from(values: Mapping[str, Any], where: str) -> Lease:
    """A Lease from stored values, or CorruptState: an unreadable gate must never read as open."""
    try:
        lease = Lease(
            state=str(values["state"]), epoch=_int(values["epoch"]), holder=str(values["holder"]),
            reason=str(values["reason"]), deploy_id=str(values["deploy_id"]),
            created_at=_num(values["created_at"]), expires_at=_num(values["expires_at"]),
        )
        if lease.state not in ("open", "closed"):
            raise ValueError(f"state {lease.state!r}")
        return lease
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptState(
            f"{where}: the gate is unreadable ({e}); claims are refused until it is repaired "
            "with a forced open or close"
        ) from None


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"epoch {v!r}")
    return v


def _num(v: Any) -> float:
    # NaN compares false with everything: a closed lease expiring at NaN would read as open.
    if isinstance(v, bool) or not isinstance(v, int | float) or v != v:
        raise TypeError(f"time {v!r}")
    return float(v)


# -- lease rules (identical across backends) -----------------------------------------------------


def closed_lease(
    current: Lease, *, holder: str, deploy_id: str, reason: str, ttl: float, now: float, force: bool
) -> tuple[Lease, str | None]:
    """The lease after a close request, and the audit action to record (None: nothing changed
    worth auditing). Raises GateHeld when another deploy holds an unexpired lease."""
    if current.is_closed(now):
        if current.deploy_id == deploy_id:
            # Idempotent re-close by the same deploy: same epoch, expiry pushed out.
            lease = Lease(
                "closed",
                current.epoch,
                current.holder,
                current.reason,
                deploy_id,
                current.created_at,
                max(current.expires_at, now + ttl),
            )
            return lease, None
        if not force:
            raise GateHeld(gate_held_message(current), current)
        action = "force-close"
    else:
        action = "close"
    return Lease("closed", current.epoch + 1, holder, reason, deploy_id, now, now + ttl), action


def renewed_lease(current: Lease, epoch: int, ttl: float, now: float) -> Lease:
    """FencingError unless the gate is still closed, unexpired, at `epoch`. An expired lease is
    not renewed: jobs may have been admitted while it counted as open."""
    if current.state != "closed" or current.epoch != epoch:
        raise FencingError(
            f"lease lost: the gate is {current.state} at epoch {current.epoch}, not closed at {epoch}"
        )
    if current.expires_at <= now:
        raise FencingError(f"lease lost: the lease at epoch {epoch} expired at {fmt_ts(current.expires_at)}")
    return Lease(
        "closed", epoch, current.holder, current.reason, current.deploy_id, current.created_at, now + ttl
    )


def opened_lease(current: Lease, epoch: int | None, now: float, force: bool) -> tuple[Lease, str | None]:
    """The lease after a reopen and the audit action (None: already open, a no-op)."""
    if force:
        return Lease("open", current.epoch, created_at=now), "force-open"
    if current.state == "open" and current.epoch == epoch:
        return current, None
    if current.state != "closed" or current.epoch != epoch:
        raise FencingError(
            f"cannot reopen: the gate is {current.state} at epoch {current.epoch}, not closed at {epoch}"
        )
    return Lease("open", current.epoch, created_at=now), "reopen"


def check_final(state: str) -> None:
    if state not in FINAL_STATES:
        raise ValueError(f"not a final run state: {state!r}")


def may_finish(current: str, new: str) -> bool:
    """The first final state is kept, but for one verdict: a stopped run (checkpointed or
    interrupted) that reached max_restarts is given up instead of being restarted, and must then
    read as given up, or every reconcile would take it for a restart still owed."""
    return current not in FINAL_STATES or (new == GIVEN_UP and current in RESTARTABLE_STATES)


# -- run encoding ---------------------------------------------------------------------------------


def run_to_dict(run: Run) -> dict[str, Any]:
    return run.to_dict()


_RUN_TYPES: dict[str, Any] = {
    "id": str, "job": str, "host": str, "state": str, "attempt": int, "epoch": int,
    "restarts": int, "created_at": int | float, "key": str | None, "pid": int | None,
    "cwd": str | None, "continues": str | None, "exit_code": int | None, "message": str | None,
    **{k: int | float | None for k in ("started_at", "finished_at", "heartbeat_at", "progress_done",
                                       "progress_total", "checkpoint_at", "stop_requested_at",
                                       "grace", "stop_grace")},
}


def run_from_dict(d: Mapping[str, Any]) -> Run:
    """TypeError/ValueError for a hand-edited or damaged record (callers make it CorruptState):
    a run with `attempt: "x"` would otherwise load and crash whoever restarts it."""
    kw = {k: d[k] for k in RUN_FIELDS if k in d}
    sealed_env = isinstance(kw.get("env"), Sealed)
    if not isinstance(kw.get("command") or [], list | tuple) or not (
        sealed_env or isinstance(kw.get("env") or {}, dict)
    ):
        raise TypeError("command must be a list and env a mapping")
    kw["command"] = tuple(kw.get("command") or ())
    if not sealed_env:
        kw["env"] = dict(kw.get("env") or {})
    for name, kind in _RUN_TYPES.items():
        if name in kw and (isinstance(kw[name], bool) or not isinstance(kw[name], kind)):
            raise TypeError(f"{name} {kw[name]!r}")
    if kw.get("state") not in ALL_STATES:
        raise ValueError(f"state {kw.get('state')!r}")
    if not all(isinstance(a, str) for a in kw["command"]) or not sealed_env and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in kw["env"].items()
    ):
        raise TypeError("command and env must hold text")
    return Run(**kw)


def run_to_row(run: Run) -> dict[str, Any]:
    row = run.to_dict()
    for k in JSON_FIELDS:
        if k in SEALED_FIELDS and isinstance(getattr(run, k), Sealed):
            continue  # still the stored token: written back as it was
        row[k] = None if k == "checkpoint" and row[k] is None else json.dumps(row[k], ensure_ascii=False)
        if k in SEALED_FIELDS and row[k] is not None:
            row[k] = crypto.seal(row[k])
    return row


def row_to_run(row: Mapping[str, Any], where: str) -> Run:
    """A run from a SQL row. An encrypted env or checkpoint is kept as a Sealed value, decrypted
    only by `Run.opened()`: reading runs never needs the key."""
    d = dict(row)
    try:
        for k in JSON_FIELDS:
            if d.get(k) is not None:
                text = d[k]
                if k in SEALED_FIELDS and crypto.is_encrypted(text):
                    d[k] = Sealed(text, f"{where}: run {d.get('id')!r}")
                else:
                    d[k] = json.loads(text)
        return run_from_dict(d)
    except (ValueError, TypeError) as e:
        raise CorruptState(f"{where}: run {d.get('id')!r} cannot be read ({e})") from None


def encode_json(value: Any) -> str:
    """JSON for a checkpoint; refuse what JSON cannot hold instead of storing something else."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint state must be JSON-serialisable: {e}") from None


def encode_checkpoint(value: Any) -> str:
    """A checkpoint as stored in a SQL column: JSON, encrypted when a state key is configured."""
    return crypto.seal(encode_json(value))


def seal_run_dict(run: Run) -> dict[str, Any]:
    """A run as a dict with env and checkpoint encrypted when a key is configured; for backends
    that store JSON documents rather than columns (file). Values still Sealed are written back
    as the token they were read as, key or no key."""
    out = run.to_dict()
    if crypto.cipher_from_env() is None:
        return out
    for k in SEALED_FIELDS:
        if out[k] is not None and not isinstance(getattr(run, k), Sealed):
            out[k] = crypto.seal(json.dumps(out[k], ensure_ascii=False, allow_nan=False))
    return out


def rotation_cipher() -> crypto.StateCipher:
    cipher = crypto.cipher_from_env()
    if cipher is None:
        raise crypto.StateKeyError(f"no job state key to rotate to ({crypto.HINT})")
    return cipher


def reseal_column(value: str | None, where: str) -> str | None:
    """A SQL column value (JSON text, maybe encrypted) under the newest key."""
    return None if value is None else rotation_cipher().rotate(value, where)


def reseal_run_dict(d: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A stored run document with env and checkpoint under the newest key."""
    cipher = rotation_cipher()
    out = dict(d)
    for k in SEALED_FIELDS:
        v = out.get(k)
        if crypto.is_encrypted(v):
            out[k] = cipher.rotate(v, f"{where}: run {out.get('id')!r}")
        elif v is not None:
            out[k] = cipher.encrypt(json.dumps(v, ensure_ascii=False, allow_nan=False))
    return out


def unseal_run_dict(d: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A stored run document with its encrypted values as Sealed (decrypted lazily)."""
    out = dict(d)
    for k in SEALED_FIELDS:
        if crypto.is_encrypted(out.get(k)):
            out[k] = Sealed(out[k], f"{where}: run {out.get('id')!r}")
    return out


# -- run locks (file and SQLite liveness) ---------------------------------------------------------


class RunLocks:
    """`<dir>/<run id>.lock`, held LOCK_EX by the claiming process for the run's life.

    A run whose lock can be taken is dead: the kernel drops flock locks when the process dies,
    so there is no PID reuse trap. Python opens fds non-inheritable, so a job's exec'd child does
    not keep its supervisor's lock alive.
    """

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self._held: dict[str, int] = {}
        self._mu = threading.Lock()

    def path(self, run_id: str) -> str:
        return os.path.join(self.dir, f"{run_id}.lock")

    def hold(self, run_id: str) -> None:
        fd = os.open(self.path(run_id), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        with self._mu:
            self._held[run_id] = fd

    def try_hold(self, run_id: str, wait: float) -> bool:
        """hold(), retried for up to `wait` seconds while another process has the lock: probers
        (is_held) take it for an instant, and a holder-to-be must not take that for a rival.
        False when someone still holds it after `wait`."""
        if self.holds(run_id):
            return True
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            try:
                self.hold(run_id)
            except BlockingIOError:
                pass
            else:
                if self._still_linked(run_id):
                    return True
                # Unlinked between our open and our lock (its claim was settled meanwhile):
                # a lock on a nameless inode would read as free to every prober.
                self.release(run_id)
                continue
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL)

    def _still_linked(self, run_id: str) -> bool:
        with self._mu:
            fd = self._held[run_id]
        try:
            return os.stat(self.path(run_id)).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def release(self, run_id: str, *, unlink: bool = False) -> None:
        with self._mu:
            fd = self._held.pop(run_id, None)
        if unlink:
            # Safe: a run id is never locked again, so a prober holding the old inode learns
            # "dead", which is true once the outcome is recorded.
            remove(self.path(run_id))
        if fd is not None:
            os.close(fd)

    def holds(self, run_id: str) -> bool:
        with self._mu:
            return run_id in self._held

    def is_held(self, run_id: str) -> bool:
        """Held by a live process (this one included)."""
        if self.holds(run_id):
            return True
        try:
            fd = os.open(self.path(run_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True
            raise
        finally:
            os.close(fd)
        return False

    def wait_any_free(self, run_ids: Iterable[str], timeout: float) -> None:
        """Return as soon as one of these locks is free (its process ended), or at timeout.
        flock has no timeout, so poll with LOCK_NB every POLL seconds: milliseconds of wake-up
        latency at negligible cost, and no blocked threads left behind at timeout."""
        ids = list(run_ids)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            if not ids or any(not self.is_held(r) for r in ids):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(POLL, left))

    def close(self) -> None:
        with self._mu:
            fds = list(self._held.values())
            self._held.clear()
        for fd in fds:
            os.close(fd)


class WaitingRoom:
    """Waiting entries of a per-host store (file, SQLite): `<dir>/<id>.json`, the entry, and
    `<dir>/<id>.lock`, held LOCK_EX by the waiting process for as long as it waits: the run-lock
    machinery, so an entry whose lock can be taken belongs to a process that is gone.

    The lock is taken before the entry is written and the entry removed before the lock is let
    go, so an entry seen with a free lock is certainly dead: `list()` removes it. Entries are
    for display only: written without fsync, and nothing the gate, the barrier or a drain
    reads ever looks in this folder.
    """

    # A lock file without its entry (a waiter killed between the two) is removed once this old.
    ORPHAN_AGE = 60.0

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.locks = RunLocks(directory)

    def _path(self, run_id: str) -> str:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise KeyError(run_id)
        return os.path.join(self.dir, f"{run_id}.json")

    def enter(self, spec: ClaimSpec, lease: Lease) -> Run:
        ensure_private_dir(self.dir)
        run_id = new_run_id()
        if not self.locks.try_hold(run_id, HOLD_WAIT):
            raise StoreUnavailable(f"{self.dir}: could not lock a new waiting entry")
        try:
            run = waiting_run(run_id, spec, lease, time.time())
            path = self._path(run_id)
            tmp = f"{path}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, json.dumps({"schema": SCHEMA_VERSION, "run": run.to_dict()}).encode())
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            self.locks.release(run_id, unlink=True)
            raise
        return run

    def leave(self, run_id: str) -> None:
        try:
            path = self._path(run_id)
        except KeyError:
            return
        remove(path)  # the entry first, then the lock: a listed entry's lock is always held
        if self.locks.holds(run_id):
            self.locks.release(run_id, unlink=True)
        else:
            remove(self.locks.path(run_id))

    def list(self, host: str | None = None) -> list[Run]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        out = []
        entries = {n[: -len(".json")] for n in names if n.endswith(".json")}
        for run_id in entries:
            if not self.locks.is_held(run_id):
                self.leave(run_id)  # its process is gone
                continue
            try:
                with open(self._path(run_id), "rb") as f:
                    run = run_from_dict(json.loads(f.read())["run"])
            except (OSError, ValueError, TypeError, KeyError):
                continue  # gone meanwhile, or damaged: it is only shown, never acted on
            if host is None or run.host == host:
                out.append(run)
        now = time.time()
        for name in names:
            run_id = name[: -len(".lock")]
            if name.endswith(".lock") and run_id not in entries:
                with contextlib.suppress(OSError):
                    old = now - os.stat(os.path.join(self.dir, name)).st_mtime > self.ORPHAN_AGE
                    if old and not self.locks.is_held(run_id):
                        remove(os.path.join(self.dir, name))
        out.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return out

    def close(self) -> None:
        self.locks.close()


def waiting_run(run_id: str, spec: ClaimSpec, lease: Lease, now: float) -> Run:
    """What a waiting entry shows: who waits, where, since when, at which closed epoch. Never
    the env (the entry is not encrypted and only shown)."""
    return Run(
        id=run_id, job=spec.job, host=spec.host, command=tuple(spec.command), state=WAITING,
        attempt=spec.attempt, key=spec.key, pid=spec.pid, cwd=spec.cwd, epoch=lease.epoch,
        created_at=now, heartbeat_at=now, continues=spec.continues, restarts=spec.restarts,
        grace=spec.grace,
    )


def remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def ensure_private_dir(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_mode & 0o077 and st.st_uid == os.getuid():
        os.chmod(path, 0o700)


class LocalWaiting:
    """Waiting entries for the stores on this machine's disk (file, SQLite): a WaitingRoom in
    `self.waiting`, whose lock is held for as long as the waiting process lives."""

    waiting: WaitingRoom

    def enter_waiting(self, spec: ClaimSpec, lease: Lease) -> Run:
        return self.waiting.enter(spec, lease)

    def refresh_waiting(self, run_id: str) -> None:
        """Nothing to refresh: the entry's lock is held for as long as this process lives."""

    def leave_waiting(self, run_id: str) -> None:
        self.waiting.leave(run_id)

    def list_waiting(self, host: str | None = None) -> list[Run]:
        return self.waiting.list(host)
