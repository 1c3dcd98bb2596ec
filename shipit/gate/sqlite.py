"""SQLite job store: one database per host, WAL mode.

Every write is a `BEGIN IMMEDIATE` transaction, which takes SQLite's single write lock at its
start. A claim reads the gate and inserts its run inside one such transaction, and so does the
close, so the two are serialised: when `close_gate()` commits, every claim that saw the gate
open has committed, and every later claim sees it closed. That is the barrier; nothing else
is needed.

Liveness is the run lock `<db dir>/runs/<id>.lock` (see shipit.gate._common.RunLocks), taken
before the run row exists so that a listed run is never mistaken for a dead one. A pending
restart is alive while its supervisor holds `<db dir>/restarts/<run id>.lock`.

Schema: `_SCHEMA` is the first version's, created with IF NOT EXISTS on every open; `_MIGRATIONS`
take a store from each version to the next inside the same BEGIN IMMEDIATE transaction, so
concurrent first opens of an old store upgrade it once.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from shipit.errors import CorruptState, FencingError, StoreUnavailable
from shipit.gate import _common as c
from shipit.gate.base import (
    ACTIVE_STATES,
    FINAL_STATES,
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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS gate (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  state TEXT NOT NULL, epoch INTEGER NOT NULL, holder TEXT NOT NULL, reason TEXT NOT NULL,
  deploy_id TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE, job TEXT NOT NULL, host TEXT NOT NULL, command TEXT NOT NULL,
  state TEXT NOT NULL, attempt INTEGER NOT NULL, key TEXT, pid INTEGER, cwd TEXT,
  env TEXT NOT NULL, epoch INTEGER NOT NULL, created_at REAL NOT NULL, started_at REAL,
  finished_at REAL, heartbeat_at REAL, progress_done REAL, progress_total REAL,
  checkpoint TEXT, checkpoint_at REAL, continues TEXT, restarts INTEGER NOT NULL,
  exit_code INTEGER, message TEXT, stop_requested_at REAL
);
CREATE INDEX IF NOT EXISTS runs_state ON runs (state);
CREATE INDEX IF NOT EXISTS runs_key ON runs (key) WHERE key IS NOT NULL;
CREATE TABLE IF NOT EXISTS restarts (run_id TEXT PRIMARY KEY, epoch INTEGER NOT NULL, ts REAL NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, action TEXT NOT NULL,
  actor TEXT NOT NULL, epoch INTEGER NOT NULL, reason TEXT NOT NULL, forced INTEGER NOT NULL
);
INSERT OR IGNORE INTO gate VALUES (1, 'open', 0, '', '', '', 0, 0);
"""

# version -> statements taking a store from version-1 to it.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "ALTER TABLE restarts ADD COLUMN respawns INTEGER NOT NULL DEFAULT 0",
        "CREATE UNIQUE INDEX runs_continues ON runs (continues) WHERE continues IS NOT NULL",
    ),
    # A run's own grace and its stop request's. (Waiting entries are files: see WaitingRoom.)
    3: (
        "ALTER TABLE runs ADD COLUMN grace REAL",
        "ALTER TABLE runs ADD COLUMN stop_grace REAL",
    ),
}

_COLS = ", ".join(c.RUN_FIELDS)


class SQLiteStore(c.LocalWaiting, Store):
    kind = "sqlite"
    central = False

    def __init__(
        self, path: str, *, heartbeat_stale: float = 30.0, busy_timeout: float = 30.0,
        create: bool = True,
    ) -> None:
        # heartbeat_stale is accepted for a uniform constructor; liveness here is the run lock.
        # create=False (the job side): a database file that does not exist is StoreMissing.
        self.path = os.path.abspath(path)
        self.heartbeat_stale = heartbeat_stale
        if not create and not os.path.exists(self.path):
            raise c.StoreMissing(f"sqlite:{self.path}")
        d = os.path.dirname(self.path)
        self.locks = c.RunLocks(os.path.join(d, "runs"))
        self.holds = c.RunLocks(os.path.join(d, "restarts"))
        self.waiting = c.WaitingRoom(os.path.join(d, "waiting"))
        self._mu = threading.RLock()
        try:
            c.ensure_private_dir(d)
            c.ensure_private_dir(os.path.join(d, "runs"))
            c.ensure_private_dir(os.path.join(d, "restarts"))
            c.ensure_private_dir(os.path.join(d, "waiting"))
            if not os.path.exists(self.path):
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError as e:
            raise StoreUnavailable(f"cannot open the job store {self.path}: {e.strerror}") from None
        try:
            self._db = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            with self._tx() as db:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                self._upgrade(db)
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"cannot open the job store {self.path}: {e}") from None
        except (sqlite3.DatabaseError, ValueError) as e:
            raise CorruptState(f"{self.path}: not a readable shipit job store ({e})") from None

    def _upgrade(self, db: Any) -> None:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            version = 1  # just created from _SCHEMA
            db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        else:
            version = int(row[0])
            c.check_schema(version, self.path)
        for target in range(version + 1, SCHEMA_VERSION + 1):
            if target == 2:
                self._refuse_double_continuations(db)
            for stmt in _MIGRATIONS[target]:
                db.execute(stmt)
        if version < SCHEMA_VERSION:
            db.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
            )

    def _refuse_double_continuations(self, db: Any) -> None:
        """The unique index cannot be built over two runs continuing the same one; say which."""
        dup = db.execute(
            "SELECT continues, group_concat(id, ', ') FROM runs WHERE continues IS NOT NULL "
            "GROUP BY continues HAVING count(*) > 1 LIMIT 1"
        ).fetchone()
        if dup is not None:
            raise CorruptState(
                f"{self.path}: runs {dup[1]} all continue run {dup[0]}; delete the ones that "
                "should not count before this shipit can use the store"
            )

    # -- plumbing -----------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._mu:
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise StoreUnavailable(f"cannot reach the job store {self.path}: {e}") from None
            try:
                yield db
                db.execute("COMMIT")
            except BaseException as e:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if isinstance(e, sqlite3.OperationalError):  # locked, disk full, I/O error
                    raise StoreUnavailable(f"job store {self.path}: {e}") from None
                if isinstance(e, sqlite3.DatabaseError):
                    raise CorruptState(f"{self.path}: {e}") from None
                raise

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._mu:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as e:
                raise CorruptState(f"{self.path}: {e}") from None

    def _lease(self, row: sqlite3.Row) -> Lease:
        return c.lease_from({k: row[k] for k in c.LEASE_FIELDS}, f"{self.path} (gate)")

    def _gate_for_change(self, db: Any, force: bool) -> Lease:
        try:
            return self._gate(db)
        except CorruptState:
            if not force:
                raise
            # Forced over an unreadable gate: continue above every epoch seen so that no old
            # holder's epoch can match again.
            top = db.execute(
                "SELECT max(e) FROM (SELECT max(epoch) AS e FROM runs "
                "UNION ALL SELECT max(epoch) FROM audit WHERE typeof(epoch) = 'integer')"
            ).fetchone()[0]
            return Lease("closed", int(top or 0), "?", "unreadable gate", "?", 0.0, float("inf"))

    def _gate(self, db: Any) -> Lease:
        return self._lease(db.execute("SELECT * FROM gate WHERE id = 1").fetchone())

    def _put_gate(self, db: Any, lease: Lease) -> None:
        db.execute(
            "UPDATE gate SET state=?, epoch=?, holder=?, reason=?, deploy_id=?, created_at=?, "
            "expires_at=? WHERE id = 1",
            tuple(getattr(lease, k) for k in c.LEASE_FIELDS),
        )

    def _run(self, db: Any, run_id: str) -> Run:
        row = db.execute(f"SELECT {_COLS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(run_id)
        return c.row_to_run(row, self.path)

    def _audit(self, db: Any, action: str, actor: str, epoch: int, reason: str, forced: bool) -> None:
        db.execute(
            "INSERT INTO audit (ts, action, actor, epoch, reason, forced) VALUES (?,?,?,?,?,?)",
            (time.time(), action, actor, epoch, reason, int(forced)),
        )

    # -- gate ---------------------------------------------------------------------------------
    def gate(self) -> Lease:
        return self._lease(self._read("SELECT * FROM gate WHERE id = 1")[0])

    def close_gate(
        self, *, holder: str, deploy_id: str, reason: str, ttl: float, force: bool = False
    ) -> Lease:
        with self._tx() as db:
            lease, action = c.closed_lease(
                self._gate_for_change(db, force), holder=holder, deploy_id=deploy_id, reason=reason, ttl=ttl,
                now=time.time(), force=force,
            )
            self._put_gate(db, lease)
            if action:
                self._audit(db, action, holder, lease.epoch, reason, force)
        return lease

    def renew(self, epoch: int, ttl: float) -> Lease:
        failure: FencingError | None = None
        with self._tx() as db:
            current = self._gate(db)
            try:
                lease = c.renewed_lease(current, epoch, ttl, time.time())
                self._put_gate(db, lease)
            except FencingError as e:
                # Recorded (in this same transaction) so the trail shows when a deploy lost it.
                self._audit(db, "renew-lost", current.holder, epoch, str(e), False)
                failure = e
        if failure:
            raise failure
        return lease

    def open_gate(self, epoch: int | None, *, actor: str, force: bool = False) -> Lease:
        with self._tx() as db:
            lease, action = c.opened_lease(self._gate_for_change(db, force), epoch, time.time(), force)
            if action:
                self._put_gate(db, lease)
                self._audit(db, action, actor, lease.epoch, "", force)
        return lease

    def wait_gate_change(self, timeout: float) -> None:
        deadline = time.monotonic() + max(0.0, timeout)
        first = self.gate()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if not first.is_closed(time.time()):
                # Open (or expired) already: a reopen between the caller's claim and this read
                # must not make the caller sleep until the NEXT change.
                return
            time.sleep(min(c.POLL, left))
            if self.gate() != first:
                return

    # -- job side -----------------------------------------------------------------------------
    def claim(self, spec: ClaimSpec) -> Run | Lease:
        run_id = spec.run_id or c.new_run_id()
        # The lock is held before the row exists: a listed run is never judged dead by mistake.
        self.locks.hold(run_id)
        try:
            with self._tx() as db:
                now = time.time()
                lease = self._gate(db)
                if lease.is_closed(now):
                    self.locks.release(run_id, unlink=True)
                    return lease
                if spec.key is not None:
                    self._check_key(db, spec.key)
                if spec.continues is not None:
                    self._check_continues(db, spec.continues)
                run = Run(
                    id=run_id, job=spec.job, host=spec.host, command=tuple(spec.command),
                    state=RUNNING, attempt=spec.attempt, key=spec.key, pid=spec.pid, cwd=spec.cwd,
                    env=dict(spec.env), epoch=lease.epoch, created_at=now, started_at=now,
                    heartbeat_at=now, continues=spec.continues, restarts=spec.restarts,
                    grace=spec.grace,
                )
                row = c.run_to_row(run)
                db.execute(
                    f"INSERT INTO runs ({_COLS}) VALUES ({', '.join('?' * len(c.RUN_FIELDS))})",
                    tuple(row[k] for k in c.RUN_FIELDS),
                )
            if spec.run_id:
                self.waiting.leave(spec.run_id)  # the waiting entry is this run now
            return run
        except BaseException:
            self.locks.release(run_id, unlink=True)
            raise

    @staticmethod
    def _check_continues(db: Any, continued: str) -> None:
        # The unique index is the guarantee; reading first turns it into a clear answer (the
        # transaction holds the write lock, so nothing can slip in between).
        row = db.execute("SELECT id FROM runs WHERE continues = ?", (continued,)).fetchone()
        if row is not None:
            raise c.AlreadyContinued(continued, row[0])

    def _check_key(self, db: Any, key: str) -> None:
        active = tuple(ACTIVE_STATES | {WAITING})
        rows = db.execute(
            f"SELECT id FROM runs WHERE key = ? AND state IN ({','.join('?' * len(active))})",
            (key, *active),
        ).fetchall()
        for (other,) in rows:
            if self.locks.is_held(other):
                raise c.RunBusy(f"job key {key!r} is already running (run {other})")
            # Its process is gone without an outcome: record that and let the key go.
            db.execute(
                "UPDATE runs SET state='interrupted', finished_at=?, message=? WHERE id=?",
                (time.time(), "process gone (found when the job key was claimed again)", other),
            )

    def heartbeat(
        self, run_id: str, *, pid: int | None = None, progress: tuple[float, float] | None = None
    ) -> bool:
        with self._tx() as db:
            run = self._run(db, run_id)
            sets, args = ["heartbeat_at = ?"], [time.time()]
            if pid is not None:
                sets.append("pid = ?")
                args.append(pid)
            if progress is not None:
                sets += ["progress_done = ?", "progress_total = ?"]
                args += [progress[0], progress[1]]
            db.execute(f"UPDATE runs SET {', '.join(sets)} WHERE id = ?", (*args, run_id))
        return run.state == STOP_REQUESTED

    def save_checkpoint(self, run_id: str, state: Any) -> None:
        data = c.encode_checkpoint(state)
        with self._tx() as db:
            self._run(db, run_id)
            db.execute(
                "UPDATE runs SET checkpoint = ?, checkpoint_at = ? WHERE id = ?",
                (data, time.time(), run_id),
            )

    def finish(
        self, run_id: str, state: str, exit_code: int | None = None, message: str | None = None
    ) -> Run:
        c.check_final(state)
        with self._tx() as db:
            run = self._run(db, run_id)
            if run.state in FINAL_STATES and c.may_finish(run.state, state):
                # Given up after it ended: keep how it ended.
                db.execute("UPDATE runs SET state=?, message=? WHERE id=?", (state, message, run_id))
            elif c.may_finish(run.state, state):
                db.execute(
                    "UPDATE runs SET state=?, finished_at=?, exit_code=?, message=? WHERE id=?",
                    (state, time.time(), exit_code, message, run_id),
                )
            run = self._run(db, run_id)
        self.locks.release(run_id, unlink=True)
        return run

    def release_run_lock(self, run_id: str) -> None:
        """Let go of a run's lock without recording an outcome (the run will be judged dead)."""
        self.locks.release(run_id)

    # -- deploy side --------------------------------------------------------------------------
    def get_run(self, run_id: str) -> Run:
        with self._mu:
            return self._run(self._db, run_id)

    def list_runs(
        self, states: Iterable[str] | None = None, host: str | None = None, limit: int | None = None
    ) -> list[Run]:
        where, args = [], []
        if states is not None:
            st = list(states)
            where.append(f"state IN ({','.join('?' * len(st))})" if st else "0")
            args += st
        if host is not None:
            where.append("host = ?")
            args.append(host)
        sql = f"SELECT {_COLS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [c.row_to_run(r, self.path) for r in self._read(sql, tuple(args))]

    def request_stop(self, run_id: str, epoch: int, grace: float | None = None) -> None:
        with self._tx() as db:
            lease = self._gate(db)
            if not (lease.is_closed(time.time()) and lease.epoch == epoch):
                raise FencingError(
                    f"cannot stop run {run_id}: the gate is not closed at epoch {epoch} "
                    f"(it is {lease.state} at epoch {lease.epoch})"
                )
            run = self._run(db, run_id)
            if run.state == RUNNING:
                db.execute(
                    "UPDATE runs SET state=?, stop_requested_at=?, stop_grace=? WHERE id=?",
                    (STOP_REQUESTED, time.time(), grace, run_id),
                )

    def is_alive(self, run: Run) -> bool:
        return self.locks.is_held(run.id)

    def mark_interrupted(self, run_id: str, message: str) -> Run:
        with self._tx() as db:
            run = self._run(db, run_id)
            if run.state in FINAL_STATES:
                return run
            if self.locks.is_held(run_id):
                raise FencingError(f"run {run_id} is still alive: not marking it interrupted")
            db.execute(
                "UPDATE runs SET state='interrupted', finished_at=?, message=? WHERE id=?",
                (time.time(), message, run_id),
            )
            run = self._run(db, run_id)
        c.remove(self.locks.path(run_id))
        return run

    def wait_runs_change(self, run_ids: Iterable[str], timeout: float) -> None:
        self.locks.wait_any_free(run_ids, timeout)

    def _read_in(self, sql: str, ids: Iterable[str]) -> list[sqlite3.Row]:
        """Rows of `sql` (a SELECT whose `{in}` stands for `IN (...)`) for every id, in chunks:
        SQLite caps the number of bound parameters."""
        ids = list(ids)
        rows: list[sqlite3.Row] = []
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            rows += self._read(sql.format(**{"in": f"IN ({','.join('?' * len(chunk))})"}), tuple(chunk))
        return rows

    def continuations(self, run_ids: Iterable[str]) -> dict[str, str]:
        rows = self._read_in("SELECT continues, id FROM runs WHERE continues {in}", run_ids)
        return {str(r[0]): str(r[1]) for r in rows}

    def claim_restart(self, run_id: str, epoch: int) -> bool:
        with self._tx() as db:
            lease = self._gate(db)
            if lease.epoch != epoch:
                raise FencingError(
                    f"cannot restart run {run_id}: the gate is at epoch {lease.epoch}, not {epoch}"
                )
            cur = db.execute(
                "INSERT OR IGNORE INTO restarts (run_id, epoch, ts) VALUES (?, ?, ?)",
                (run_id, epoch, time.time()),
            )
            won = cur.rowcount == 1
            if won:
                self._audit(db, "restart", lease.holder or "shipit", epoch, f"run {run_id}", False)
        return won

    def _claim_of(self, row: sqlite3.Row, now: float) -> RestartClaim:
        run_id = str(row["run_id"])
        return RestartClaim(run_id, int(row["epoch"]), float(row["ts"]), now - float(row["ts"]),
                            self.holds.is_held(run_id), int(row["respawns"]))

    def restart_claims(self, run_ids: Iterable[str]) -> dict[str, RestartClaim]:
        rows = self._read_in("SELECT run_id, epoch, ts, respawns FROM restarts WHERE run_id {in}",
                             run_ids)
        now = time.time()
        return {r["run_id"]: self._claim_of(r, now) for r in rows}

    def hold_restart(self, run_id: str) -> bool:
        _check_id(run_id)
        return self.holds.try_hold(run_id, c.HOLD_WAIT)

    def refresh_restart_hold(self, run_id: str) -> None:
        """Nothing to refresh: the lock is held for as long as this process lives."""

    def release_restart_hold(self, run_id: str, *, continued: bool) -> None:
        self.holds.release(run_id, unlink=continued)

    def retake_restart(self, run_id: str, epoch: int, *, grace: float) -> RestartClaim | None:
        _check_id(run_id)
        with self._tx() as db:
            lease = self._gate(db)
            if lease.epoch != epoch:
                raise FencingError(
                    f"cannot restart run {run_id}: the gate is at epoch {lease.epoch}, not {epoch}"
                )
            row = db.execute(
                "SELECT run_id, epoch, ts, respawns FROM restarts WHERE run_id = ?", (run_id,)
            ).fetchone()
            now = time.time()
            if row is None:
                return None
            claim = self._claim_of(row, now)
            successor = db.execute("SELECT 1 FROM runs WHERE continues = ?", (run_id,)).fetchone()
            state = db.execute("SELECT state FROM runs WHERE id = ?", (run_id,)).fetchone()
            if (successor is not None or not c.orphaned(claim, grace)
                    or state is None or state[0] not in RESTARTABLE_STATES):
                return None
            # Compare-and-swap on the timestamp; BEGIN IMMEDIATE already serialises re-takes,
            # this keeps the update honest if that ever changes.
            cur = db.execute(
                "UPDATE restarts SET epoch = ?, ts = ?, respawns = respawns + 1 "
                "WHERE run_id = ? AND ts = ?",
                (epoch, now, run_id, row["ts"]),
            )
            if cur.rowcount != 1:
                return None
            self._audit(db, "restart-respawn", lease.holder or "shipit", epoch,
                        c.respawn_reason(claim), False)
        return claim

    def audit(self, action: str, actor: str, epoch: int, reason: str = "", forced: bool = False) -> None:
        with self._tx() as db:
            self._audit(db, action, actor, epoch, reason, forced)

    def reencrypt_state(self) -> int:
        """Re-encrypt every run's env and checkpoint with the newest state key, in one
        transaction (a run no key can read rolls it all back). Returns the number of runs."""
        with self._mu:
            self._db.execute("PRAGMA secure_delete = ON")
        with self._tx() as db:
            rows = db.execute("SELECT id, env, checkpoint FROM runs").fetchall()
            for run_id, env, checkpoint in rows:
                where = f"{self.path}: run {run_id!r}"
                db.execute(
                    "UPDATE runs SET env = ?, checkpoint = ? WHERE id = ?",
                    (c.reseal_column(env, where), c.reseal_column(checkpoint, where), run_id),
                )
        # Old values linger in the WAL and in freed pages until both are rewritten. Best effort:
        # a job holding a read transaction makes these return busy; a later rotation finishes.
        with self._mu:
            for stmt in ("PRAGMA wal_checkpoint(TRUNCATE)", "VACUUM", "PRAGMA wal_checkpoint(TRUNCATE)"):
                try:
                    self._db.execute(stmt)
                except sqlite3.OperationalError:
                    break
        return len(rows)

    def audit_log(self, limit: int = 50) -> list[AuditEntry]:
        rows = self._read(
            "SELECT ts, action, actor, epoch, reason, forced FROM audit ORDER BY seq DESC LIMIT ?",
            (int(limit),),
        )
        return [AuditEntry(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows]

    def close(self) -> None:
        self.locks.close()
        self.holds.close()
        self.waiting.close()
        with self._mu:
            self._db.close()


def _check_id(run_id: str) -> None:
    """A run id names a lock file: refuse anything that could leave the directory."""
    if not run_id or "/" in run_id or run_id.startswith("."):
        raise KeyError(run_id)
