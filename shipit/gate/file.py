"""File job store: one directory per host, no database. Local disks only (flock and rename
semantics do not hold on NFS).

Layout (dirs 0700, files 0600):
  schema            the schema version, written once
  gate.json         the lease, replaced by write-temp + fsync + rename (never half-written)
  gate.lock         claims hold LOCK_SH while they read the gate and write their run; the close
                    takes and drops LOCK_EX after writing the closed gate: that is the barrier
  writer.lock       LOCK_EX around every gate change, so two deploys cannot both close
  runs.lock         LOCK_EX around read-modify-write of a run file (job and deploy both write)
  runs/<id>.json    one run, atomically rewritten
  runs/<id>.lock    held LOCK_EX by the claiming process for the run's life (liveness)
  restarts/<id>     restart claims, created exclusively (exactly once), rewritten when re-taken
  restarts/<id>.lock  held LOCK_EX by the supervisor spawned for that restart until it claimed
  continued/<id>    the id of the one run that continues run <id>, created exclusively
  waiting/<id>.json a job waiting at the closed gate (shown by status), with waiting/<id>.lock
                    held by its process (see _common.WaitingRoom); never read by claims or drains
  audit.jsonl       appended JSON lines

Files that must appear whole and only once (restart claims, continuation markers) are written to
a temp file and link(2)ed into place: like O_EXCL, link fails when the name exists, and unlike
O_CREAT|O_EXCL followed by a write, nobody can ever read the file half-written.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from shipit.errors import CorruptState, FencingError, StoreUnavailable
from shipit.gate import _common as c
from shipit.gate.base import (
    ACTIVE_STATES,
    FINAL_STATES,
    INTERRUPTED,
    RESTARTABLE_STATES,
    RUNNING,
    SCHEMA_VERSION,
    STOP_REQUESTED,
    WAITING,
    AuditEntry,
    ClaimSpec,
    Lease,
    RestartClaim,
    Run,
    Store,
)

TYPE_CHECKING = False  # typing costs ~3 ms to import; annotations are strings (PEP 563)
if TYPE_CHECKING:
    from typing import Any


def _write_temp(path: str, data: bytes) -> str:
    tmp = f"{path}.tmp.{os.getpid()}.{os.urandom(4).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        c.remove(tmp)
        raise
    os.close(fd)
    return tmp


def _sync_dir(path: str) -> None:
    dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _write_atomic(path: str, data: bytes, *, sync_dir: bool = False) -> None:
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        c.remove(tmp)
        raise
    if sync_dir:
        _sync_dir(path)


def _write_new(path: str, data: bytes) -> bool:
    """Create `path` whole with `data`, only if it does not exist. False when it does."""
    tmp = _write_temp(path, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        c.remove(tmp)
    _sync_dir(path)
    return True


class FileStore(c.LocalWaiting, Store):
    kind = "file"
    central = False

    def __init__(
        self, directory: str, *, heartbeat_stale: float = 30.0, create: bool = True
    ) -> None:
        # heartbeat_stale is accepted for a uniform constructor; liveness here is the run lock.
        # create=False (the job side): a folder that holds no store yet is StoreMissing.
        self.dir = os.path.abspath(directory)
        self.heartbeat_stale = heartbeat_stale
        if not create and not any(
            os.path.exists(os.path.join(self.dir, name)) for name in ("schema", "gate.json")
        ):
            raise c.StoreMissing(f"file:{self.dir}")
        try:
            for sub in ("", "runs", "restarts", "continued", "waiting"):
                c.ensure_private_dir(os.path.join(self.dir, sub))
        except OSError as e:
            raise StoreUnavailable(f"cannot open the job store {self.dir}: {e.strerror}") from None
        self.locks = c.RunLocks(os.path.join(self.dir, "runs"))
        # Restart holds: taken by the supervisor a restart spawned, until its claim commits.
        self.holds = c.RunLocks(os.path.join(self.dir, "restarts"))
        self.waiting = c.WaitingRoom(os.path.join(self.dir, "waiting"))
        self._mu = threading.RLock()  # flock is per open file: serialise this object's threads
        self._gate_path = os.path.join(self.dir, "gate.json")
        with self._flock("writer.lock", fcntl.LOCK_EX):
            schema = os.path.join(self.dir, "schema")
            try:
                with open(schema) as f:
                    raw = f.read().strip()
            except FileNotFoundError:
                _write_atomic(schema, f"{SCHEMA_VERSION}\n".encode(), sync_dir=True)
                self._write_gate(Lease("open", 0))
            else:
                try:
                    version = int(raw)
                except ValueError:
                    raise CorruptState(f"{schema}: not a schema version: {raw[:40]!r}") from None
                c.check_schema(version, self.dir)
                if version < SCHEMA_VERSION:
                    self._migrate(version)
                    _write_atomic(schema, f"{SCHEMA_VERSION}\n".encode(), sync_dir=True)

    def _migrate(self, version: int) -> None:
        """Upgrade an older store in place (under writer.lock, so once)."""
        if version < 2:
            self._mark_existing_continuations()

    def _mark_existing_continuations(self) -> None:
        """Schema 2: runs that continue another get their marker, so that a continuation claimed
        before the upgrade still blocks a second one."""
        with self._flock("runs.lock", fcntl.LOCK_EX):
            by: dict[str, str] = {}
            # Unreadable run files are skipped here: list_runs reports them, naming each.
            for run in sorted(self._scan_runs(strict=False), key=lambda r: (r.created_at, r.id)):
                if run.continues is None:
                    continue
                if run.continues in by:
                    raise CorruptState(
                        f"{self.dir}: runs {by[run.continues]} and {run.id} both continue run "
                        f"{run.continues}; remove the one that should not count (runs/<id>.json) "
                        "before this shipit can use the store"
                    )
                by[run.continues] = run.id
            for continued, run_id in by.items():
                with contextlib.suppress(KeyError):  # an id that cannot be a file name
                    _write_new(self._marker_path(continued), run_id.encode())

    # -- plumbing -----------------------------------------------------------------------------
    @contextmanager
    def _flock(self, name: str, mode: int) -> Iterator[None]:
        with self._mu:
            fd = os.open(os.path.join(self.dir, name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, mode)
                yield
            finally:
                os.close(fd)  # closing drops the lock

    def _read_gate(self) -> Lease:
        try:
            with open(self._gate_path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise CorruptState(f"{self._gate_path} is missing: the gate state is unknown") from None
        try:
            doc = json.loads(raw)
            c.check_schema(int(doc.get("schema", 1)), self._gate_path)
            return c.lease_from(doc["lease"], self._gate_path)
        except CorruptState:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise CorruptState(
                f"{self._gate_path} is unreadable ({type(e).__name__}): treating the gate as "
                "closed; fix it with a forced close or open"
            ) from None

    def _write_gate(self, lease: Lease) -> None:
        doc = {"schema": SCHEMA_VERSION, "lease": lease.to_dict()}
        _write_atomic(self._gate_path, json.dumps(doc).encode(), sync_dir=True)

    def _gate_for_change(self, force: bool) -> Lease:
        try:
            return self._read_gate()
        except CorruptState:
            if not force:
                raise
            # Forced over an unreadable gate: carry on above every epoch we have seen so that
            # no old holder's epoch can match again.
            top = max([r.epoch for r in self._scan_runs(strict=False)] + [0])
            top = max([top] + [a.epoch for a in self.audit_log(limit=10**9)])
            return Lease("closed", top, "?", "unreadable gate", "?", 0.0, float("inf"))

    def _run_path(self, run_id: str) -> str:
        if not run_id or "/" in run_id or run_id.startswith("."):
            raise KeyError(run_id)
        return os.path.join(self.dir, "runs", f"{run_id}.json")

    def _load_run(self, path: str) -> Run:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise KeyError(os.path.basename(path)[:-5]) from None
        try:
            doc = json.loads(raw)
            c.check_schema(int(doc.get("schema", 1)), path)
            run = c.run_from_dict(c.unseal_run_dict(doc["run"], path))
            # A copied or hand-edited file naming another run would be acted on under that id.
            if run.id != os.path.basename(path)[: -len(".json")]:
                raise ValueError(f"id {run.id!r} does not match the file name")
            return run
        except CorruptState:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise CorruptState(f"{path}: run file is unreadable ({type(e).__name__})") from None

    def _save_run(self, run: Run) -> None:
        doc = {"schema": SCHEMA_VERSION, "run": c.seal_run_dict(run)}
        data = json.dumps(doc, ensure_ascii=False, allow_nan=False).encode()
        _write_atomic(self._run_path(run.id), data)

    def _update(self, run_id: str, **changes: Any) -> Run:
        """Read-modify-write under runs.lock (the job and the deploy both write run files)."""
        with self._flock("runs.lock", fcntl.LOCK_EX):
            run = self._load_run(self._run_path(run_id))
            new = replace(run, **changes)
            self._save_run(new)
            return new

    def _scan_runs(self, *, strict: bool = True) -> list[Run]:
        runs_dir = os.path.join(self.dir, "runs")
        out = []
        for name in os.listdir(runs_dir):
            if not name.endswith(".json"):
                continue
            try:
                out.append(self._load_run(os.path.join(runs_dir, name)))
            except KeyError:
                continue  # removed between listdir and open
            except CorruptState:
                if strict:
                    raise
        out.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return out

    def _audit(self, action: str, actor: str, epoch: int, reason: str, forced: bool) -> None:
        line = json.dumps(
            {"ts": time.time(), "action": action, "actor": actor, "epoch": epoch,
             "reason": reason, "forced": forced},
            ensure_ascii=False,
        ) + "\n"
        fd = os.open(
            os.path.join(self.dir, "audit.jsonl"),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
            0o600,
        )
        try:
            os.write(fd, line.encode())  # one write with O_APPEND: lines never interleave
        finally:
            os.close(fd)

    # -- gate ---------------------------------------------------------------------------------
    def gate(self) -> Lease:
        return self._read_gate()

    def close_gate(
        self, *, holder: str, deploy_id: str, reason: str, ttl: float, force: bool = False
    ) -> Lease:
        with self._flock("writer.lock", fcntl.LOCK_EX):
            lease, action = c.closed_lease(
                self._gate_for_change(force), holder=holder, deploy_id=deploy_id, reason=reason,
                ttl=ttl, now=time.time(), force=force,
            )
            self._write_gate(lease)
            if action:
                self._audit(action, holder, lease.epoch, reason, force)
            # Barrier: every claim that read the old gate holds LOCK_SH until its run file is
            # written; getting LOCK_EX means they are all done, and later ones read "closed".
            with self._flock("gate.lock", fcntl.LOCK_EX):
                pass
        return lease

    def renew(self, epoch: int, ttl: float) -> Lease:
        with self._flock("writer.lock", fcntl.LOCK_EX):
            current = self._read_gate()
            try:
                lease = c.renewed_lease(current, epoch, ttl, time.time())
            except FencingError as e:
                self._audit("renew-lost", current.holder, epoch, str(e), False)
                raise
            self._write_gate(lease)
        return lease

    def open_gate(self, epoch: int | None, *, actor: str, force: bool = False) -> Lease:
        with self._flock("writer.lock", fcntl.LOCK_EX):
            lease, action = c.opened_lease(self._gate_for_change(force), epoch, time.time(), force)
            if action:
                self._write_gate(lease)
                self._audit(action, actor, lease.epoch, "", force)
        return lease

    def _gate_stamp(self) -> tuple[int, int]:
        try:
            st = os.stat(self._gate_path)
        except FileNotFoundError:
            return (0, 0)
        return (st.st_ino, st.st_mtime_ns)

    def wait_gate_change(self, timeout: float) -> None:
        # Polled: a rename shows as a new inode. Wakes at the lease's expiry too (it then
        # counts as open although the file did not change).
        deadline = time.monotonic() + max(0.0, timeout)
        first = self._gate_stamp()
        try:
            lease: Lease | None = self._read_gate()
        except CorruptState:
            lease = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self._gate_stamp() != first:
                return
            if lease is not None and not lease.is_closed(time.time()):
                return  # open or expired already: the caller's claim will go through
            time.sleep(min(c.POLL, left))

    # -- job side -----------------------------------------------------------------------------
    def claim(self, spec: ClaimSpec) -> Run | Lease:
        # Unlocked look first: jobs waiting at a closed gate must not starve the barrier's
        # LOCK_EX by piling up LOCK_SH requests.
        lease = self._read_gate()
        if lease.is_closed(time.time()):
            return lease
        run_id = spec.run_id or c.new_run_id()
        self.locks.hold(run_id)  # before the run file exists: a listed run is never "dead"
        try:
            with self._flock("gate.lock", fcntl.LOCK_SH):
                now = time.time()
                lease = self._read_gate()
                if lease.is_closed(now):
                    self.locks.release(run_id, unlink=True)
                    return lease
                run = Run(
                    id=run_id, job=spec.job, host=spec.host, command=tuple(spec.command),
                    state=RUNNING, attempt=spec.attempt, key=spec.key, pid=spec.pid, cwd=spec.cwd,
                    env=dict(spec.env), epoch=lease.epoch, created_at=now, started_at=now,
                    heartbeat_at=now, continues=spec.continues, restarts=spec.restarts,
                    grace=spec.grace,
                )
                if spec.key is None and spec.continues is None:
                    self._save_run(run)
                else:
                    # Key and continuation checks read other runs: under runs.lock, like every
                    # other read-modify-write of run files, so two claims cannot both pass.
                    with self._flock("runs.lock", fcntl.LOCK_EX):
                        if spec.key is not None:
                            self._check_key(spec.key)
                        self._save_continuation(run) if spec.continues else self._save_run(run)
            if spec.run_id:
                self.waiting.leave(spec.run_id)  # the waiting entry is this run now
            return run
        except BaseException:
            self.locks.release(run_id, unlink=True)
            raise

    def _marker_path(self, run_id: str) -> str:
        self._run_path(run_id)  # the same rules: it becomes a file name
        return os.path.join(self.dir, "continued", run_id)

    def _continued_by(self, run_id: str) -> str | None:
        """The run that continues `run_id`. A marker whose run file never got written (its claimer
        died in between, runs.lock being held by nobody now) does not count."""
        try:
            with open(self._marker_path(run_id), encoding="utf-8") as f:
                other = f.read().strip()
        except (FileNotFoundError, KeyError):
            return None
        try:
            return other if os.path.exists(self._run_path(other)) else None
        except KeyError:
            return None

    def _save_continuation(self, run: Run) -> None:
        """Write a run that continues another, unless one already does (under runs.lock)."""
        assert run.continues is not None
        try:
            marker = self._marker_path(run.continues)
        except KeyError:
            raise ValueError(f"continues: {run.continues!r} is not a run id") from None
        by = self._continued_by(run.continues)
        if by is not None:
            raise c.AlreadyContinued(run.continues, by)
        if not _write_new(marker, run.id.encode()):
            _write_atomic(marker, run.id.encode(), sync_dir=True)  # a dead claimer's marker
        try:
            self._save_run(run)
        except BaseException:
            c.remove(marker)
            raise

    def _check_key(self, key: str) -> None:
        for other in self._scan_runs():
            if other.key != key or other.state not in ACTIVE_STATES | {WAITING}:
                continue
            if self.locks.is_held(other.id):
                raise c.RunBusy(f"job key {key!r} is already running (run {other.id})")
            self._save_run(
                replace(
                    other, state=INTERRUPTED, finished_at=time.time(),
                    message="process gone (found when the job key was claimed again)",
                )
            )

    def heartbeat(
        self, run_id: str, *, pid: int | None = None, progress: tuple[float, float] | None = None
    ) -> bool:
        changes: dict[str, Any] = {"heartbeat_at": time.time()}
        if pid is not None:
            changes["pid"] = pid
        if progress is not None:
            changes["progress_done"], changes["progress_total"] = progress
        return self._update(run_id, **changes).state == STOP_REQUESTED

    def save_checkpoint(self, run_id: str, state: Any) -> None:
        value = json.loads(c.encode_json(state))  # refuse non-JSON now, not at the next read
        self._update(run_id, checkpoint=value, checkpoint_at=time.time())

    def finish(
        self, run_id: str, state: str, exit_code: int | None = None, message: str | None = None
    ) -> Run:
        c.check_final(state)
        with self._flock("runs.lock", fcntl.LOCK_EX):
            run = self._load_run(self._run_path(run_id))
            if c.may_finish(run.state, state):
                if run.state in FINAL_STATES:  # given up after it ended: keep how it ended
                    run = replace(run, state=state, message=message)
                else:
                    run = replace(run, state=state, finished_at=time.time(), exit_code=exit_code,
                                  message=message)
                self._save_run(run)
        self.locks.release(run_id, unlink=True)
        return run

    def release_run_lock(self, run_id: str) -> None:
        """Let go of a run's lock without recording an outcome (the run will be judged dead)."""
        self.locks.release(run_id)

    # -- deploy side --------------------------------------------------------------------------
    def get_run(self, run_id: str) -> Run:
        return self._load_run(self._run_path(run_id))

    def list_runs(
        self, states: Iterable[str] | None = None, host: str | None = None, limit: int | None = None
    ) -> list[Run]:
        wanted = None if states is None else set(states)
        out = [
            r for r in self._scan_runs()
            if (wanted is None or r.state in wanted) and (host is None or r.host == host)
        ]
        return out if limit is None else out[:limit]

    def request_stop(self, run_id: str, epoch: int, grace: float | None = None) -> None:
        with self._flock("writer.lock", fcntl.LOCK_EX):
            lease = self._read_gate()
            if not (lease.is_closed(time.time()) and lease.epoch == epoch):
                raise FencingError(
                    f"cannot stop run {run_id}: the gate is not closed at epoch {epoch} "
                    f"(it is {lease.state} at epoch {lease.epoch})"
                )
            with self._flock("runs.lock", fcntl.LOCK_EX):
                run = self._load_run(self._run_path(run_id))
                if run.state == RUNNING:
                    self._save_run(replace(run, state=STOP_REQUESTED, stop_requested_at=time.time(),
                                           stop_grace=grace))

    def is_alive(self, run: Run) -> bool:
        return self.locks.is_held(run.id)

    def mark_interrupted(self, run_id: str, message: str) -> Run:
        with self._flock("runs.lock", fcntl.LOCK_EX):
            run = self._load_run(self._run_path(run_id))
            if run.state in FINAL_STATES:
                return run
            if self.locks.is_held(run_id):
                raise FencingError(f"run {run_id} is still alive: not marking it interrupted")
            run = replace(run, state=INTERRUPTED, finished_at=time.time(), message=message)
            self._save_run(run)
        c.remove(self.locks.path(run_id))
        return run

    def wait_runs_change(self, run_ids: Iterable[str], timeout: float) -> None:
        self.locks.wait_any_free(run_ids, timeout)

    def continuations(self, run_ids: Iterable[str]) -> dict[str, str]:
        out = {}
        for run_id in run_ids:
            by = self._continued_by(run_id)
            if by is not None:
                out[run_id] = by
        return out

    def claim_restart(self, run_id: str, epoch: int) -> bool:
        path = self._claim_path(run_id)
        lease = self._read_gate()
        if lease.epoch != epoch:
            raise FencingError(
                f"cannot restart run {run_id}: the gate is at epoch {lease.epoch}, not {epoch}"
            )
        doc = {"epoch": epoch, "ts": time.time(), "respawns": 0}
        if not _write_new(path, json.dumps(doc).encode()):
            return False
        self._audit("restart", lease.holder or "shipit", epoch, f"run {run_id}", False)
        return True

    def _claim_path(self, run_id: str) -> str:
        self._run_path(run_id)  # validates the id (it becomes a file name)
        return os.path.join(self.dir, "restarts", run_id)

    def _restart_claim(self, run_id: str, now: float) -> RestartClaim | None:
        path = self._claim_path(run_id)
        try:
            with open(path, "rb") as f:
                raw = f.read()
            st = os.stat(path)
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(raw)
            epoch, ts, respawns = int(doc["epoch"]), float(doc["ts"]), int(doc.get("respawns", 0))
        except (ValueError, TypeError, KeyError, AttributeError):
            # Claim files written before schema 2 could be cut short by a crash: the claim was
            # taken, its details are lost. Its file's age is all there is to go by.
            epoch, ts, respawns = 0, st.st_mtime, 0
        held = self.holds.is_held(run_id)
        return RestartClaim(run_id, epoch, ts, now - ts, held, respawns)

    def restart_claims(self, run_ids: Iterable[str]) -> dict[str, RestartClaim]:
        now = time.time()
        out = {}
        for run_id in run_ids:
            claim = self._restart_claim(run_id, now)
            if claim is not None:
                out[run_id] = claim
        return out

    def hold_restart(self, run_id: str) -> bool:
        self._claim_path(run_id)
        return self.holds.try_hold(run_id, c.HOLD_WAIT)

    def refresh_restart_hold(self, run_id: str) -> None:
        """Nothing to refresh: the lock is held for as long as this process lives."""

    def release_restart_hold(self, run_id: str, *, continued: bool) -> None:
        self.holds.release(run_id, unlink=continued)

    def retake_restart(self, run_id: str, epoch: int, *, grace: float) -> RestartClaim | None:
        path = self._claim_path(run_id)
        lease = self._read_gate()
        if lease.epoch != epoch:
            raise FencingError(
                f"cannot restart run {run_id}: the gate is at epoch {lease.epoch}, not {epoch}"
            )
        # Under runs.lock: continuation claims write their marker under it, and two re-takes
        # are serialised, so the second sees the first's fresh timestamp and backs off.
        with self._flock("runs.lock", fcntl.LOCK_EX):
            now = time.time()
            claim = self._restart_claim(run_id, now)
            if claim is None or not c.orphaned(claim, grace) or self._continued_by(run_id):
                return None
            try:
                if self._load_run(self._run_path(run_id)).state not in RESTARTABLE_STATES:
                    return None  # given up (or never stopped): nothing to start again
            except KeyError:
                return None
            doc = {"epoch": epoch, "ts": now, "respawns": claim.respawns + 1}
            _write_atomic(path, json.dumps(doc).encode(), sync_dir=True)
        self._audit("restart-respawn", lease.holder or "shipit", epoch,
                    c.respawn_reason(claim), False)
        return claim

    def audit(self, action: str, actor: str, epoch: int, reason: str = "", forced: bool = False) -> None:
        self._audit(action, actor, epoch, reason, forced)

    def reencrypt_state(self) -> int:
        """Re-encrypt every run's env and checkpoint with the newest state key (plain ones get
        encrypted). All files are checked before any is written: a run readable by none of the
        keys stops the rotation with nothing changed. Returns the number of runs rewritten."""
        runs_dir = os.path.join(self.dir, "runs")
        with self._flock("runs.lock", fcntl.LOCK_EX):
            todo = []
            for name in sorted(os.listdir(runs_dir)):
                if not name.endswith(".json"):
                    continue
                path = os.path.join(runs_dir, name)
                try:
                    with open(path, "rb") as f:
                        doc = json.loads(f.read())
                    run = doc["run"]
                except FileNotFoundError:
                    continue
                except (ValueError, TypeError, KeyError) as e:
                    raise CorruptState(f"{path}: run file is unreadable ({type(e).__name__})") from None
                todo.append((path, {**doc, "run": c.reseal_run_dict(run, path)}))
            for path, doc in todo:
                _write_atomic(path, json.dumps(doc, ensure_ascii=False, allow_nan=False).encode())
        return len(todo)

    def audit_log(self, limit: int = 50) -> list[AuditEntry]:
        try:
            with open(os.path.join(self.dir, "audit.jsonl"), encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        out: list[AuditEntry] = []
        for line in reversed(lines):
            if len(out) >= limit:
                break
            try:
                d = json.loads(line)
                out.append(
                    AuditEntry(d["ts"], d["action"], d["actor"], d["epoch"], d["reason"], d["forced"])
                )
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash; the trail goes on
        return out

    def close(self) -> None:
        self.locks.close()
        self.holds.close()
        self.waiting.close()
