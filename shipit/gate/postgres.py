"""PostgreSQL job store (psycopg 3): one central store for every host of a stage.

The barrier is an advisory lock K, transaction-level only (so it works through PgBouncer's
transaction pooling):
- a claim runs in a transaction holding `pg_try_advisory_xact_lock_shared(K)`, reads the gate
  row and inserts its run; not granted means a close is in progress: the claim sees "closed";
- the close takes `pg_advisory_xact_lock(K)`, which waits for every in-flight claim and (being
  queued) makes new shared tries fail, flips the gate row (epoch+1), commits, then NOTIFY.
When close_gate() returns, every claim that saw the gate open has committed.

Times come from the server's clock. Liveness is a heartbeat fresher than `heartbeat_stale`.
LISTEN/NOTIFY wakes waiters (listen first, then re-query, then wait). A connection that broke
is replaced and the operation retried once; every operation is written so that a retry after
a lost commit acknowledgement gives the same answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from shipit.errors import CorruptState, FencingError, StoreUnavailable
from shipit.gate import _common as c
from shipit.gate.base import (
    ACTIVE_STATES,
    FINAL_STATES,
    GIVEN_UP,
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
from shipit.gate.url import redact

T = TypeVar("T")

GATE_KEY = 0x5348495049540001  # advisory lock: claims shared, close exclusive
SCHEMA_KEY = 0x5348495049540002  # advisory lock: first-use schema creation
GATE_CHANNEL = "shipit_gate"
RUNS_CHANNEL = "shipit_runs"
NOW = "extract(epoch from clock_timestamp())::float8"

SCHEMA = """
CREATE TABLE IF NOT EXISTS shipit_schema (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS shipit_gate (
  id integer PRIMARY KEY CHECK (id = 1), state text NOT NULL, epoch bigint NOT NULL,
  holder text NOT NULL, reason text NOT NULL, deploy_id text NOT NULL,
  created_at float8 NOT NULL, expires_at float8 NOT NULL
);
CREATE TABLE IF NOT EXISTS shipit_runs (
  seq bigserial, id text PRIMARY KEY, job text NOT NULL, host text NOT NULL,
  command text NOT NULL, state text NOT NULL, attempt integer NOT NULL, key text, pid integer,
  cwd text, env text NOT NULL, epoch bigint NOT NULL, created_at float8 NOT NULL,
  started_at float8, finished_at float8, heartbeat_at float8, progress_done float8,
  progress_total float8, checkpoint text, checkpoint_at float8, continues text,
  restarts integer NOT NULL, exit_code integer, message text, stop_requested_at float8
);
CREATE INDEX IF NOT EXISTS shipit_runs_seq ON shipit_runs (seq);
CREATE INDEX IF NOT EXISTS shipit_runs_state ON shipit_runs (state);
CREATE INDEX IF NOT EXISTS shipit_runs_key ON shipit_runs (key) WHERE key IS NOT NULL;
CREATE TABLE IF NOT EXISTS shipit_restarts (
  run_id text PRIMARY KEY, epoch bigint NOT NULL, ts float8 NOT NULL, token text NOT NULL
);
CREATE TABLE IF NOT EXISTS shipit_audit (
  seq bigserial PRIMARY KEY, ts float8 NOT NULL, action text NOT NULL, actor text NOT NULL,
  epoch bigint NOT NULL, reason text NOT NULL, forced boolean NOT NULL
);
INSERT INTO shipit_gate VALUES (1, 'open', 0, '', '', '', 0, 0) ON CONFLICT DO NOTHING;
INSERT INTO shipit_schema SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM shipit_schema);
"""

# version -> the DDL taking a store from version-1 to it. SCHEMA above is version 1 and stays
# so: a new store is created at 1 and upgraded like an old one.
MIGRATIONS: dict[int, str] = {
    # Unique continuations; restart claims held by their spawned supervisor through a heartbeat
    # (held_at by holder; a session lock would not survive PgBouncer's transaction pooling).
    2: """
ALTER TABLE shipit_restarts ADD COLUMN IF NOT EXISTS held_at float8,
  ADD COLUMN IF NOT EXISTS holder text, ADD COLUMN IF NOT EXISTS respawns integer NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX IF NOT EXISTS shipit_runs_continues ON shipit_runs (continues)
  WHERE continues IS NOT NULL;
""",
    # A run's own grace and its stop request's; waiting entries (jobs at the closed gate, shown
    # by status). Entries are never deleted (the app role has no DELETE): a gone or stale one's
    # slot is taken over by the next waiter, so the table holds at most as many rows as jobs
    # ever waited at once.
    3: """
ALTER TABLE shipit_runs ADD COLUMN IF NOT EXISTS grace float8,
  ADD COLUMN IF NOT EXISTS stop_grace float8;
CREATE TABLE IF NOT EXISTS shipit_waiting (
  slot bigserial PRIMARY KEY, id text NOT NULL, host text NOT NULL, gone boolean NOT NULL,
  created_at float8 NOT NULL, heartbeat_at float8 NOT NULL, doc text NOT NULL
);
CREATE INDEX IF NOT EXISTS shipit_waiting_id ON shipit_waiting (id);
""",
}

_COLS = sql.SQL(", ").join(sql.Identifier(k) for k in c.RUN_FIELDS)
_SELECT_RUN = sql.SQL("SELECT {} FROM shipit_runs").format(_COLS)
_FINAL = list(FINAL_STATES)


class PostgresStore(Store):
    kind = "postgres"
    central = True

    def __init__(
        self, dsn: str, *, heartbeat_stale: float = 30.0, connect_timeout: float = 5.0,
        close_wait: float = 30.0, create: bool = True,
    ) -> None:
        # create=False (the job side): a database without shipit's tables is StoreMissing.
        self._create = create
        self._dsn = dsn
        self.heartbeat_stale = heartbeat_stale
        self.connect_timeout = connect_timeout
        self.close_wait = close_wait  # how long a close waits for in-flight claims
        self._mu = threading.RLock()
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._listen_mu = threading.Lock()
        self._listener: psycopg.Connection[Any] | None = None
        self._hold_tokens: dict[str, str] = {}  # restart holds this object took: run id -> token
        self._with_retry(self._init_schema)

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self._dsn)!r})"

    # -- plumbing -----------------------------------------------------------------------------
    def _unavailable(self, e: BaseException) -> StoreUnavailable:
        reason = redact(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        password = _password(self._dsn)
        if password:
            reason = reason.replace(password, "***")
        return StoreUnavailable(f"cannot reach the job store: {reason}")

    def _connect(self, **kw: Any) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                self._dsn, connect_timeout=max(1, int(self.connect_timeout)),
                application_name="shipit", **kw,
            )
        except psycopg.Error as e:
            raise self._unavailable(e) from None

    def _db(self) -> psycopg.Connection[dict[str, Any]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = self._connect(row_factory=dict_row)
        return self._conn

    def _with_retry(self, fn: Callable[[psycopg.Cursor[dict[str, Any]]], T]) -> T:
        """Run fn in one transaction. A broken connection is replaced and fn retried once:
        every fn is safe to repeat after a commit whose acknowledgement was lost."""
        for attempt in (1, 2):
            with self._mu:
                conn = self._db()
                try:
                    with conn.transaction(), conn.cursor() as cur:
                        return fn(cur)
                except (psycopg.OperationalError, psycopg.InterfaceError) as e:
                    if isinstance(e, psycopg.errors.LockNotAvailable):
                        raise StoreUnavailable(
                            f"cannot close the gate: claims in flight did not finish within "
                            f"{self.close_wait:g} s"
                        ) from None
                    if not conn.broken and not conn.closed:
                        raise self._unavailable(e) from None
                    self._conn = None
                    if attempt == 2:
                        raise self._unavailable(e) from None
                except psycopg.Error as e:
                    # Missing tables, bad values: the store is damaged, not unreachable.
                    raise CorruptState(f"job store {redact(self._dsn)}: {e}") from None
        raise AssertionError("unreachable")

    def _init_schema(self, cur: psycopg.Cursor[dict[str, Any]]) -> None:
        cur.execute("SELECT to_regclass('shipit_schema') IS NOT NULL AS present")
        row = cur.fetchone()
        if not (row and row["present"]) and not self._create:
            raise c.StoreMissing(redact(self._dsn))
        if not (row and row["present"]):
            # Serialised so that concurrent first uses do not race on CREATE TABLE.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_KEY,))
            cur.execute(SCHEMA)
        version = self._schema_version(cur)
        if version < SCHEMA_VERSION:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_KEY,))
            self._migrate(cur, self._schema_version(cur))  # re-read: another opener may be done

    def _schema_version(self, cur: psycopg.Cursor[dict[str, Any]]) -> int:
        cur.execute("SELECT max(version) AS v FROM shipit_schema")
        row = cur.fetchone()
        version = int(row["v"] if row and row["v"] is not None else 0)
        c.check_schema(version, f"job store {redact(self._dsn)}")
        return version

    def _migrate(self, cur: psycopg.Cursor[dict[str, Any]], version: int) -> None:
        """Bring the store up to SCHEMA_VERSION in this transaction (DDL is transactional)."""
        for target in range(version + 1, SCHEMA_VERSION + 1):
            if target == 2:
                self._refuse_double_continuations(cur)
            cur.execute(MIGRATIONS[target])
        if version < SCHEMA_VERSION:
            cur.execute("UPDATE shipit_schema SET version = %s", (SCHEMA_VERSION,))

    def _refuse_double_continuations(self, cur: psycopg.Cursor[dict[str, Any]]) -> None:
        cur.execute(
            "SELECT continues, string_agg(id, ', ') AS ids FROM shipit_runs "
            "WHERE continues IS NOT NULL GROUP BY continues HAVING count(*) > 1 LIMIT 1"
        )
        dup = cur.fetchone()
        if dup is not None:
            raise CorruptState(
                f"job store {redact(self._dsn)}: runs {dup['ids']} all continue run "
                f"{dup['continues']}; delete the ones that should not count before this shipit "
                "can use the store"
            )

    @staticmethod
    def _now(cur: psycopg.Cursor[dict[str, Any]]) -> float:
        cur.execute(f"SELECT {NOW} AS now")
        row = cur.fetchone()
        assert row
        return float(row["now"])

    def _gate(self, cur: psycopg.Cursor[dict[str, Any]], lock: str = "") -> Lease:
        cur.execute(f"SELECT * FROM shipit_gate WHERE id = 1 {lock}")
        row = cur.fetchone()
        if row is None:
            raise CorruptState(f"job store {redact(self._dsn)}: the gate row is missing")
        return c.lease_from(row, f"job store {redact(self._dsn)}")

    def _gate_for_change(self, cur: psycopg.Cursor[dict[str, Any]], force: bool) -> Lease:
        try:
            return self._gate(cur, "FOR UPDATE")
        except CorruptState:
            if not force:
                raise
            cur.execute(
                "SELECT greatest((SELECT max(epoch) FROM shipit_runs), "
                "(SELECT max(epoch) FROM shipit_audit), 0) AS top"
            )
            row = cur.fetchone()
            top = int(row["top"]) if row else 0
            return Lease("closed", top, "?", "unreadable gate", "?", 0.0, float("inf"))

    def _put_gate(self, cur: psycopg.Cursor[dict[str, Any]], lease: Lease) -> None:
        cur.execute(
            "UPDATE shipit_gate SET state=%s, epoch=%s, holder=%s, reason=%s, deploy_id=%s, "
            "created_at=%s, expires_at=%s WHERE id = 1",
            tuple(getattr(lease, k) for k in c.LEASE_FIELDS),
        )
        cur.execute("SELECT pg_notify(%s, %s)", (GATE_CHANNEL, str(lease.epoch)))

    def _run(self, cur: psycopg.Cursor[dict[str, Any]], run_id: str, lock: str = "") -> Run:
        cur.execute(_SELECT_RUN + sql.SQL(" WHERE id = %s " + lock), (run_id,))
        row = cur.fetchone()
        if row is None:
            raise KeyError(run_id)
        return c.row_to_run(row, f"job store {redact(self._dsn)}")

    def _audit(
        self, cur: psycopg.Cursor[dict[str, Any]], action: str, actor: str, epoch: int,
        reason: str, forced: bool,
    ) -> None:
        cur.execute(
            f"INSERT INTO shipit_audit (ts, action, actor, epoch, reason, forced) "
            f"VALUES ({NOW}, %s, %s, %s, %s, %s)",
            (action, actor, epoch, reason, forced),
        )

    def _notify_run(self, cur: psycopg.Cursor[dict[str, Any]], run_id: str) -> None:
        cur.execute("SELECT pg_notify(%s, %s)", (RUNS_CHANNEL, run_id))

    # -- gate ---------------------------------------------------------------------------------
    def gate(self) -> Lease:
        return self._with_retry(self._gate)

    def close_gate(
        self, *, holder: str, deploy_id: str, reason: str, ttl: float, force: bool = False
    ) -> Lease:
        def tx(cur: psycopg.Cursor[dict[str, Any]]) -> Lease:
            cur.execute(f"SET LOCAL lock_timeout = '{int(self.close_wait * 1000)}ms'")
            # Waits for every in-flight claim; queued, it also turns new shared tries away.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (GATE_KEY,))
            lease, action = c.closed_lease(
                self._gate_for_change(cur, force), holder=holder, deploy_id=deploy_id,
                reason=reason, ttl=ttl, now=self._now(cur), force=force,
            )
            self._put_gate(cur, lease)
            if action:
                self._audit(cur, action, holder, lease.epoch, reason, force)
            return lease

        return self._with_retry(tx)

    def renew(self, epoch: int, ttl: float) -> Lease:
        failure: list[FencingError] = []

        def tx(cur: psycopg.Cursor[dict[str, Any]]) -> Lease:
            failure.clear()
            current = self._gate(cur, "FOR UPDATE")
            try:
                lease = c.renewed_lease(current, epoch, ttl, self._now(cur))
            except FencingError as e:
                self._audit(cur, "renew-lost", current.holder, epoch, str(e), False)
                failure.append(e)
                return current
            self._put_gate(cur, lease)
            return lease

        lease = self._with_retry(tx)
        if failure:
            raise failure[0]
        return lease

    def open_gate(self, epoch: int | None, *, actor: str, force: bool = False) -> Lease:
        def tx(cur: psycopg.Cursor[dict[str, Any]]) -> Lease:
            lease, action = c.opened_lease(
                self._gate_for_change(cur, force), epoch, self._now(cur), force
            )
            if action:
                self._put_gate(cur, lease)
                self._audit(cur, action, actor, lease.epoch, "", force)
            return lease

        return self._with_retry(tx)

    def wait_gate_change(self, timeout: float) -> None:
        deadline = time.monotonic() + max(0.0, timeout)
        self._listen()  # listen first, then re-query: no change can slip in between
        self._drain()
        lease, now = self._with_retry(lambda cur: (self._gate(cur), self._now(cur)))
        left = deadline - time.monotonic()
        if lease.state != "closed" or lease.expires_at <= now:
            return  # open or expired already: the caller's claim will go through
        self._wait_notify(min(left, lease.expires_at - now), None)

    # -- job side -----------------------------------------------------------------------------
    def claim(self, spec: ClaimSpec) -> Run | Lease:
        run_id = spec.run_id or c.new_run_id()
        tried = False

        def tx(cur: psycopg.Cursor[dict[str, Any]]) -> Run | Lease:
            nonlocal tried
            if tried:
                with contextlib.suppress(KeyError):
                    return self._run(cur, run_id)  # our first commit went through after all
            tried = True
            cur.execute(
                f"SELECT pg_try_advisory_xact_lock_shared(%s) AS granted, {NOW} AS now",
                (GATE_KEY,),
            )
            row = cur.fetchone()
            assert row
            now = float(row["now"])
            # A separate statement on purpose: in READ COMMITTED its snapshot is taken after the
            # lock was granted, so it sees any close that committed before. Folding the gate read
            # into the lock statement would read a snapshot older than the lock.
            lease = self._gate(cur)
            if not row["granted"]:
                # A close is in progress: the gate is as good as closed.
                return Lease(
                    "closed", lease.epoch + 1, lease.holder, "a deploy is closing the gate",
                    lease.deploy_id, now, now + 1.0,
                )
            if lease.is_closed(now):
                return lease
            if spec.key is not None:
                self._check_key(cur, spec.key)
            run = Run(
                id=run_id, job=spec.job, host=spec.host, command=tuple(spec.command),
                state=RUNNING, attempt=spec.attempt, key=spec.key, pid=spec.pid, cwd=spec.cwd,
                env=dict(spec.env), epoch=lease.epoch, created_at=now, started_at=now,
                heartbeat_at=now, continues=spec.continues, restarts=spec.restarts,
                grace=spec.grace,
            )
            r = c.run_to_row(run)
            # A second continuation of the same run is skipped by the partial unique index (a
            # racing one is waited for), then named.
            cur.execute(
                sql.SQL(
                    "INSERT INTO shipit_runs ({}) VALUES ({}) "
                    "ON CONFLICT (continues) WHERE continues IS NOT NULL DO NOTHING"
                ).format(_COLS, sql.SQL(", ").join(sql.Placeholder() * len(c.RUN_FIELDS))),
                tuple(r[k] for k in c.RUN_FIELDS),
            )
            if cur.rowcount != 1:
                cur.execute("SELECT id FROM shipit_runs WHERE continues = %s", (spec.continues,))
                other = cur.fetchone()
                raise c.AlreadyContinued(str(spec.continues), other["id"] if other else "?")
            if spec.run_id:
                # The waiting entry is this run now: gone in the very transaction that admits it.
                cur.execute("UPDATE shipit_waiting SET gone = true WHERE id = %s", (spec.run_id,))
            return run

        return self._with_retry(tx)

    def _check_key(self, cur: psycopg.Cursor[dict[str, Any]], key: str) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7))", (f"shipit-key:{key}",))
        cur.execute(
            f"SELECT id, {NOW} - coalesce(heartbeat_at, created_at) AS age FROM shipit_runs "
            "WHERE key = %s AND state = ANY(%s) FOR UPDATE",
            (key, list(ACTIVE_STATES | {WAITING})),
        )
        for row in cur.fetchall():
            if row["age"] < self.heartbeat_stale:
                raise c.RunBusy(f"job key {key!r} is already running (run {row['id']})")
            cur.execute(
                f"UPDATE shipit_runs SET state = 'interrupted', finished_at = {NOW}, message = %s "
                "WHERE id = %s",
                ("heartbeat stale (found when the job key was claimed again)", row["id"]),
            )

    def heartbeat(
        self, run_id: str, *, pid: int | None = None, progress: tuple[float, float] | None = None
    ) -> bool:
        def tx(cur: psycopg.Cursor[dict[str, Any]]) -> bool:
            cur.execute(
                f"UPDATE shipit_runs SET heartbeat_at = {NOW}, pid = coalesce(%s, pid), "
                "progress_done = coalesce(%s, progress_done), "
                "progress_total = coalesce(%s, progress_total) WHERE id = %s RETURNING state",
                (pid, *(progress or (None, None)), run_id),
            )
            row = cur.fetchone()
            if row is None:
                raise KeyError(run_id)
            return bool(row["state"] == STOP_REQUESTED)

        return self._with_retry(tx)

    def save_checkpoint(self, run_id: str, state: Any) -> None:
        data = c.encode_checkpoint(state)

        def tx(cur: psycopg.Cursor[dict[str, Any]]) -> None:
            cur.execute(
                f"UPDATE shipit_runs SET checkpoint = %s, checkpoint_at = {NOW} WHERE id = %s",
                (data, run_id),
            )
            if cur.rowcount != 1:
                raise KeyError(run_id)

        self._with_retry(tx)

    def finish(
        self, run_id: str, state: str, exit_code: int | None = None, message: str | None = None
    ) -> Run:
        c.check_final(state)

        def tx(cur: psycopg.Cursor[dict[str, Any]]) -> Run:
            # See c.may_finish. A run given up after it ended keeps its end time and exit code.
            cur.execute(
                "UPDATE shipit_runs SET state = %(state)s, message = %(msg)s, "
                f"finished_at = CASE WHEN state = ANY(%(final)s) THEN finished_at ELSE {NOW} END, "
                "exit_code = CASE WHEN state = ANY(%(final)s) THEN exit_code ELSE %(code)s END "
                "WHERE id = %(id)s AND (NOT (state = ANY(%(final)s)) "
                "OR (%(state)s = %(given_up)s AND state = ANY(%(stopped)s)))",
                {"state": state, "msg": message, "final": _FINAL, "code": exit_code, "id": run_id,
                 "given_up": GIVEN_UP, "stopped": list(RESTARTABLE_STATES)},
            )
            self._notify_run(cur, run_id)
            return self._run(cur, run_id)

        return self._with_retry(tx)

    def release_run_lock(self, run_id: str) -> None:
        """Nothing to release: liveness here is the heartbeat."""

    # -- deploy side --------------------------------------------------------------------------
    def get_run(self, run_id: str) -> Run:
        return self._with_retry(lambda cur: self._run(cur, run_id))

    def list_runs(
        self, states: Iterable[str] | None = None, host: str | None = None, limit: int | None = None
    ) -> list[Run]:
        where: list[sql.Composable] = []
        args: list[Any] = []
        if states is not None:
            where.append(sql.SQL("state = ANY(%s)"))
            args.append(list(states))
        if host is not None:
            where.append(sql.SQL("host = %s"))
            args.append(host)
        q = _SELECT_RUN
        if where:
            q = q + sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where)
        q = q + sql.SQL(" ORDER BY seq DESC")
        if limit is not None:
            q = q + sql.SQL(" LIMIT {}").format(sql.Literal(int(limit)))

        def tx(cur: psycopg.Cursor[dict[str, Any]]) -> list[Run]:
            cur.execute(q, args)
            where_ = f"job store {redact(self._dsn)}"
            return [c.row_to_run(r, where_) for r in cur.fetchall()]

        return self._with_retry(tx)

    def request_stop(self, run_id: str, epoch: int, grace: float | None = None) -> None:
        def tx(cur: psycopg.Cursor[dict[str, Any]]) -> None:
            lease = self._gate(cur, "FOR SHARE")
            if not (lease.is_closed(self._now(cur)) and lease.epoch == epoch):
                raise FencingError(
                    f"cannot stop run {run_id}: the gate is not closed at epoch {epoch} "
                    f"(it is {lease.state} at epoch {lease.epoch})"
                )
            self._run(cur, run_id)
            cur.execute(
                f"UPDATE shipit_runs SET state = %s, stop_requested_at = {NOW}, stop_grace = %s "
                "WHERE id = %s AND state = %s",
                (STOP_REQUESTED, grace, run_id, RUNNING),
            )

        self._with_retry(tx)

    def is_alive(self, run: Run) -> bool:
        def tx(cur: psycopg.Cursor[dict[str, Any]]) -> bool:
            cur.execute(
                f"SELECT state, {NOW} - coalesce(heartbeat_at, created_at) AS age "
                "FROM shipit_runs WHERE id = %s",
                (run.id,),
            )
            row = cur.fetchone()
            if row is None or row["state"] in FINAL_STATES:
                return False
            return bool(row["age"] < self.heartbeat_stale)

        return self._with_retry(tx)

    def mark_interrupted(self, run_id: str, message: str) -> Run:
        def tx(cur: psycopg.Cursor[dict[str, Any]]) -> Run:
            run = self._run(cur, run_id, "FOR UPDATE")
            if run.state in FINAL_STATES:
                return run
            cur.execute(
                f"UPDATE shipit_runs SET state = 'interrupted', finished_at = {NOW}, message = %s "
                f"WHERE id = %s AND {NOW} - coalesce(heartbeat_at, created_at) >= %s",
                (message, run_id, self.heartbeat_stale),
            )
            if cur.rowcount != 1:
                raise FencingError(f"run {run_id} is still alive: not marking it interrupted")
            self._notify_run(cur, run_id)
            return self._run(cur, run_id)

        return self._with_retry(tx)

    def wait_runs_change(self, run_ids: Iterable[str], timeout: float) -> None:
        ids = list(run_ids)
        deadline = time.monotonic() + max(0.0, timeout)
        if not ids:
            return
        while True:
            self._listen()  # again each round: a listener lost to a server restart comes back
            self._drain()  # stale notifications must not cut this wait short

            def tx(cur: psycopg.Cursor[dict[str, Any]]) -> float | None:
                cur.execute(
                    f"SELECT state, %s - ({NOW} - coalesce(heartbeat_at, created_at)) AS fresh "
                    "FROM shipit_runs WHERE id = ANY(%s)",
                    (self.heartbeat_stale, ids),
                )
                rows = cur.fetchall()
                if len(rows) < len(ids) or any(
                    r["state"] in FINAL_STATES or r["fresh"] <= 0 for r in rows
                ):
                    return None
                return float(min(r["fresh"] for r in rows))

            fresh_for = self._with_retry(tx)
            left = deadline - time.monotonic()
            if fresh_for is None or left <= 0:
                return
            # Wake at the soonest heartbeat staleness too: a killed job sends no NOTIFY.
            if self._wait_notify(min(left, fresh_for + 0.01), set(ids)):
                return

    def continuations(self, run_ids: Iterable[str]) -> dict[str, str]:
        ids = list(run_ids)

        def tx(cur: psycopg.Cursor[dict[str, Any]]) -> dict[str, str]:
            cur.execute("SELECT continues, id FROM shipit_runs WHERE continues = ANY(%s)", (ids,))
            return {str(r["continues"]): str(r["id"]) for r in cur.fetchall()}

        return self._with_retry(tx) if ids else {}

    # -- waiting entries: liveness is the heartbeat, like runs ---------------------------------
    def enter_waiting(self, spec: ClaimSpec, lease: Lease) -> Run:
        run_id = c.new_run_id()

        def tx(cur: psycopg.Cursor[dict[str, Any]]) -> Run:
            now = self._now(cur)
            run = c.waiting_run(run_id, spec, lease, now)
            cur.execute("SELECT 1 FROM shipit_waiting WHERE id = %s AND NOT gone", (run_id,))
            if cur.fetchone() is not None:
                return run  # a retry after our commit's acknowledgement was lost
            values = {"id": run_id, "host": spec.host, "now": now, "stale": self.heartbeat_stale,
                      "doc": json.dumps(run.to_dict(), ensure_ascii=False)}
            # Take over the slot of an entry that is gone (or whose waiter died), else add one.
            cur.execute(
                "UPDATE shipit_waiting SET id = %(id)s, host = %(host)s, gone = false, "
                "created_at = %(now)s, heartbeat_at = %(now)s, doc = %(doc)s WHERE slot = ("
                "SELECT slot FROM shipit_waiting WHERE gone OR %(now)s - heartbeat_at >= %(stale)s "
                "ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED)",
                values,
            )
            if cur.rowcount != 1:
                cur.execute(
                    "INSERT INTO shipit_waiting (id, host, gone, created_at, heartbeat_at, doc) "
                    "VALUES (%(id)s, %(host)s, false, %(now)s, %(now)s, %(doc)s)",
                    values,
                )
            return run

        return self._with_retry(tx)

    def refresh_waiting(self, run_id: str) -> None:
        self._with_retry(lambda cur: cur.execute(
            f"UPDATE shipit_waiting SET heartbeat_at = {NOW} WHERE id = %s AND NOT gone", (run_id,)
        ))

    def leave_waiting(self, run_id: str) -> None:
        self._with_retry(lambda cur: cur.execute(
            "UPDATE shipit_waiting SET gone = true WHERE id = %s", (run_id,)
        ))

    def list_waiting(self, host: str | None = None) -> list[Run]:
        def tx(cur: psycopg.Cursor[dict[str, Any]]) -> list[Run]:
            cur.execute(
                "SELECT doc, created_at, heartbeat_at FROM shipit_waiting WHERE NOT gone "
                f"AND {NOW} - heartbeat_at < %(stale)s AND (%(host)s::text IS NULL OR host = %(host)s) "
                "ORDER BY created_at DESC, id DESC",
                {"stale": self.heartbeat_stale, "host": host},
            )
            out = []
            for r in cur.fetchall():
                try:
                    d = {**json.loads(r["doc"]), "created_at": r["created_at"],
                         "heartbeat_at": r["heartbeat_at"]}
                    out.append(c.run_from_dict(d))
                except (ValueError, TypeError):
                    continue  # only ever shown: a damaged entry is left out
            return out

        return self._with_retry(tx)

    def claim_restart(self, run_id: str, epoch: int) -> bool:
        token = os.urandom(8).hex()

        def tx(cur: psycopg.Cursor[dict[str, Any]]) -> bool:
            lease = self._gate(cur, "FOR SHARE")
            if lease.epoch != epoch:
                raise FencingError(
                    f"cannot restart run {run_id}: the gate is at epoch {lease.epoch}, not {epoch}"
                )
            cur.execute(
                f"INSERT INTO shipit_restarts (run_id, epoch, ts, token) VALUES (%s, %s, {NOW}, %s) "
                "ON CONFLICT (run_id) DO NOTHING",
                (run_id, epoch, token),
            )
            if cur.rowcount == 1:
                self._audit(cur, "restart", lease.holder or "shipit", epoch, f"run {run_id}", False)
                return True
            # A retry after our own commit was lost finds our token: we did win.
            cur.execute("SELECT token FROM shipit_restarts WHERE run_id = %s", (run_id,))
            row = cur.fetchone()
            return bool(row and row["token"] == token)

        return self._with_retry(tx)

    def _claim_of(self, row: dict[str, Any]) -> RestartClaim:
        return RestartClaim(row["run_id"], int(row["epoch"]), float(row["ts"]), float(row["age"]),
                            bool(row["held"]), int(row["respawns"]))

    _CLAIM_COLS = (
        f"run_id, epoch, ts, respawns, token, {NOW} - ts AS age, "
        f"(held_at IS NOT NULL AND {NOW} - held_at < %(stale)s) AS held"
    )

    def restart_claims(self, run_ids: Iterable[str]) -> dict[str, RestartClaim]:
        ids = list(run_ids)

        def tx(cur: psycopg.Cursor[dict[str, Any]]) -> dict[str, RestartClaim]:
            cur.execute(
                f"SELECT {self._CLAIM_COLS} FROM shipit_restarts WHERE run_id = ANY(%(ids)s)",
                {"stale": self.heartbeat_stale, "ids": ids},
            )
            return {r["run_id"]: self._claim_of(r) for r in cur.fetchall()}

        return self._with_retry(tx) if ids else {}

    def hold_restart(self, run_id: str) -> bool:
        token = self._hold_tokens.setdefault(run_id, os.urandom(8).hex())

        def tx(cur: psycopg.Cursor[dict[str, Any]]) -> bool:
            # Ours already (a retry), free, or held by a holder whose heartbeat went stale.
            cur.execute(
                f"UPDATE shipit_restarts SET held_at = {NOW}, holder = %(token)s "
                f"WHERE run_id = %(id)s AND (holder = %(token)s OR held_at IS NULL "
                f"OR {NOW} - held_at >= %(stale)s)",
                {"token": token, "id": run_id, "stale": self.heartbeat_stale},
            )
            if cur.rowcount == 1:
                return True
            cur.execute("SELECT 1 FROM shipit_restarts WHERE run_id = %s", (run_id,))
            return cur.fetchone() is None  # no claim: a continuation started by hand

        return self._with_retry(tx)

    def refresh_restart_hold(self, run_id: str) -> None:
        token = self._hold_tokens.get(run_id)
        if token is None:
            return
        self._with_retry(lambda cur: cur.execute(
            f"UPDATE shipit_restarts SET held_at = {NOW} WHERE run_id = %s AND holder = %s",
            (run_id, token),
        ))

    def release_restart_hold(self, run_id: str, *, continued: bool) -> None:
        token = self._hold_tokens.pop(run_id, None)
        if token is None:
            return
        # Released, not left to go stale: a supervisor that gave up (exit 75) can be re-spawned
        # without waiting out heartbeat_stale.
        self._with_retry(lambda cur: cur.execute(
            "UPDATE shipit_restarts SET held_at = NULL, holder = NULL "
            "WHERE run_id = %s AND holder = %s",
            (run_id, token),
        ))

    def retake_restart(self, run_id: str, epoch: int, *, grace: float) -> RestartClaim | None:
        token = os.urandom(8).hex()
        before: list[RestartClaim] = []

        def tx(cur: psycopg.Cursor[dict[str, Any]]) -> RestartClaim | None:
            lease = self._gate(cur, "FOR SHARE")
            if lease.epoch != epoch:
                raise FencingError(
                    f"cannot restart run {run_id}: the gate is at epoch {lease.epoch}, not {epoch}"
                )
            # FOR UPDATE serialises re-takes: the second one reads the first one's fresh ts.
            cur.execute(
                f"SELECT {self._CLAIM_COLS} FROM shipit_restarts WHERE run_id = %(id)s FOR UPDATE",
                {"stale": self.heartbeat_stale, "id": run_id},
            )
            row = cur.fetchone()
            if row is None:
                return None
            if row["token"] == token:
                return before[0]  # a retry after our commit's acknowledgement was lost
            claim = self._claim_of(row)
            cur.execute(
                "SELECT EXISTS (SELECT 1 FROM shipit_runs WHERE continues = %(id)s) AS continued, "
                "(SELECT state FROM shipit_runs WHERE id = %(id)s) AS state",
                {"id": run_id},
            )
            now = cur.fetchone()
            assert now
            if (now["continued"] or now["state"] not in RESTARTABLE_STATES
                    or not c.orphaned(claim, grace)):
                return None
            cur.execute(
                f"UPDATE shipit_restarts SET epoch = %s, ts = {NOW}, token = %s, held_at = NULL, "
                "holder = NULL, respawns = respawns + 1 WHERE run_id = %s AND token = %s",
                (epoch, token, run_id, row["token"]),
            )
            if cur.rowcount != 1:
                return None
            before[:] = [claim]
            self._audit(cur, "restart-respawn", lease.holder or "shipit", epoch,
                        c.respawn_reason(claim), False)
            return claim

        return self._with_retry(tx)

    def audit(self, action: str, actor: str, epoch: int, reason: str = "", forced: bool = False) -> None:
        self._with_retry(lambda cur: self._audit(cur, action, actor, epoch, reason, forced))

    def reencrypt_state(self) -> int:
        """Re-encrypt every run's env and checkpoint with the newest state key, in one
        transaction (a run no key can read rolls it all back). Returns the number of runs."""

        def tx(cur: psycopg.Cursor[dict[str, Any]]) -> int:
            cur.execute("SELECT id, env, checkpoint FROM shipit_runs FOR UPDATE")
            rows = cur.fetchall()
            where = f"job store {redact(self._dsn)}"
            for r in rows:
                w = f"{where}: run {r['id']!r}"
                cur.execute(
                    "UPDATE shipit_runs SET env = %s, checkpoint = %s WHERE id = %s",
                    (c.reseal_column(r["env"], w), c.reseal_column(r["checkpoint"], w), r["id"]),
                )
            return len(rows)

        return self._with_retry(tx)

    def audit_log(self, limit: int = 50) -> list[AuditEntry]:
        def tx(cur: psycopg.Cursor[dict[str, Any]]) -> list[AuditEntry]:
            cur.execute(
                "SELECT ts, action, actor, epoch, reason, forced FROM shipit_audit "
                "ORDER BY seq DESC LIMIT %s",
                (int(limit),),
            )
            return [
                AuditEntry(r["ts"], r["action"], r["actor"], int(r["epoch"]), r["reason"], r["forced"])
                for r in cur.fetchall()
            ]

        return self._with_retry(tx)

    # -- LISTEN/NOTIFY ------------------------------------------------------------------------
    def _listen(self) -> None:
        with self._listen_mu:
            if self._listener is not None and not self._listener.closed and not self._listener.broken:
                return
            conn = self._connect(autocommit=True)
            try:
                conn.execute(f"LISTEN {GATE_CHANNEL}")
                conn.execute(f"LISTEN {RUNS_CHANNEL}")
            except psycopg.Error as e:
                conn.close()
                raise self._unavailable(e) from None
            self._listener = conn

    def _drain(self) -> None:
        self._wait_notify(0, None)

    def _wait_notify(self, timeout: float, run_ids: set[str] | None) -> bool:
        """Wait up to timeout for a notification (on the gate channel when run_ids is None,
        else for one of these runs). True when one came."""
        with self._listen_mu:
            conn = self._listener
            if conn is None:
                return False
            deadline = time.monotonic() + max(0.0, timeout)
            try:
                while True:
                    left = max(0.0, deadline - time.monotonic())
                    got = None
                    for n in conn.notifies(timeout=left, stop_after=1):
                        got = n
                    if got is None:
                        return False
                    if timeout > 0 and (
                        (run_ids is None and got.channel == GATE_CHANNEL)
                        or (run_ids is not None and got.channel == RUNS_CHANNEL and got.payload in run_ids)
                    ):
                        return True
                    # Otherwise (draining, or another channel/run): keep reading.
            except psycopg.Error:
                # The listener broke (server restart): reconnect next time, wake the caller now
                # so that it re-reads the state instead of sleeping through a change.
                self._listener = None
                return True

    def close(self) -> None:
        with self._mu:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        with self._listen_mu:
            if self._listener is not None:
                self._listener.close()
                self._listener = None


def _password(dsn: str) -> str | None:
    try:
        return psycopg.conninfo.conninfo_to_dict(dsn).get("password") or None  # type: ignore[return-value]
    except psycopg.Error:
        return None
