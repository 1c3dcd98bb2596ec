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
  restarts/<id>     restart claims, created O_CREAT|O_EXCL (exactly once)
  audit.jsonl       appended JSON lines
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from shipit.errors import CorruptState, FencingError, StoreUnavailable
from shipit.gate import _common as c
from shipit.gate.base import (
    ACTIVE_STATES,
    FINAL_STATES,
    INTERRUPTED,
    RUNNING,
    SCHEMA_VERSION,
    STOP_REQUESTED,
    WAITING,
    AuditEntry,
    ClaimSpec,
    Lease,
    Run,
    Store,
)


def _write_atomic(path: str, data: bytes, *, sync_dir: bool = False) -> None:
    tmp = f"{path}.tmp.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        c.remove(tmp)
        raise
    if sync_dir:
        dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class FileStore(Store):
    kind = "file"
    central = False

    def __init__(self, directory: str, *, heartbeat_stale: float = 30.0) -> None:
        # heartbeat_stale is accepted for a uniform constructor; liveness here is the run lock.
        self.dir = os.path.abspath(directory)
        self.heartbeat_stale = heartbeat_stale
        try:
            for sub in ("", "runs", "restarts"):
                c.ensure_private_dir(os.path.join(self.dir, sub))
        except OSError as e:
            raise StoreUnavailable(f"cannot open the job store {self.dir}: {e.strerror}") from None
        self.locks = c.RunLocks(os.path.join(self.dir, "runs"))
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
        doc = {"schema": SCHEMA_VERSION, "run": c.seal_run_dict(run.to_dict())}
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
        run_id = c.new_run_id()
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
                )
                if spec.key is None:
                    self._save_run(run)
                else:
                    with self._flock("runs.lock", fcntl.LOCK_EX):
                        self._check_key(spec.key)
                        self._save_run(run)
            return run
        except BaseException:
            self.locks.release(run_id, unlink=True)
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
            if run.state not in FINAL_STATES:
                run = replace(
                    run, state=state, finished_at=time.time(), exit_code=exit_code, message=message
                )
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

    def request_stop(self, run_id: str, epoch: int) -> None:
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
                    self._save_run(replace(run, state=STOP_REQUESTED, stop_requested_at=time.time()))

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

    def claim_restart(self, run_id: str, epoch: int) -> bool:
        self._run_path(run_id)  # validates the id (it becomes a file name)
        lease = self._read_gate()
        if lease.epoch != epoch:
            raise FencingError(
                f"cannot restart run {run_id}: the gate is at epoch {lease.epoch}, not {epoch}"
            )
        path = os.path.join(self.dir, "restarts", run_id)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps({"epoch": epoch, "ts": time.time()}).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self._audit("restart", lease.holder or "shipit", epoch, f"run {run_id}", False)
        return True

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
