"""Garbage in the stored state never opens the gate, never loses a run, never leaks a traceback.

Generated damage: bytes and JSON values written over gate.json and run files of the file store,
and any SQLite value in any column of the gate and runs tables. After each, the store either reads
what is there (when the damage happens to be a well-formed record) or raises CorruptState with one
line. Claims are the gate's whole point, so for every damaged gate: a claim that is not refused
must only happen when the gate really reads open, and a refused claim leaves no run behind.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from shipit.errors import CorruptState, ShipitError
from shipit.gate.base import ALL_STATES, ClaimSpec, Lease, Run, Store
from shipit.gate.file import FileStore
from shipit.gate.sqlite import SQLiteStore
from tests.fuzz.profiles import count, fuzz

pytestmark = pytest.mark.timeout(300)

SPEC = ClaimSpec(job="fuzz", host="h", command=("true",))
NOW = time.time()

json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["open", "closed", "running", "finished", "checkpointed", NOW + 3600, NOW - 3600]),
)
json_value = st.recursive(
    json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                         st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
GOOD_LEASE = {"state": "closed", "epoch": 7, "holder": "ann", "reason": "deploy",
              "deploy_id": "d1", "created_at": NOW, "expires_at": NOW + 3600}


def _replace_fields(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    return {**base, **changes}


lease_docs = st.one_of(
    json_value,
    st.dictionaries(st.sampled_from(list(GOOD_LEASE)), json_value, max_size=4).map(
        lambda ch: {"schema": 1, "lease": _replace_fields(GOOD_LEASE, ch)}
    ),
    st.lists(st.sampled_from(list(GOOD_LEASE)), max_size=3).map(
        lambda gone: {"schema": 1, "lease": {k: v for k, v in GOOD_LEASE.items() if k not in gone}}
    ),
    json_value.map(lambda s: {"schema": s, "lease": GOOD_LEASE}),
)
good_gate_bytes = json.dumps({"schema": 1, "lease": GOOD_LEASE}).encode()
gate_bytes = st.one_of(
    st.binary(max_size=80),
    st.integers(0, len(good_gate_bytes) - 1).map(lambda n: good_gate_bytes[:n]),
    lease_docs.map(lambda d: json.dumps(d).encode()),
)


@contextmanager
def scratch_dir() -> Iterator[Path]:
    # Per example, not a fixture: hypothesis runs every example inside one fixture instance.
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def one_line(exc: BaseException) -> None:
    text = str(exc)
    assert text and "\n" not in text.strip(), repr(text)


def lease_counts_closed(lease: Lease) -> bool:
    """What a careful reader must conclude: closed unless the expiry has plainly passed (-inf
    has: an expired lease counts as open; NaN has not, it compares false with everything)."""
    return lease.state == "closed" and not (lease.expires_at <= time.time())


def claim_outcome(store: Store, runs_before: list[str], list_runs_ids: Any) -> None:
    """Check gate() and claim() agree and that a refused claim wrote nothing."""
    try:
        lease: Lease | None = store.gate()
    except CorruptState as exc:
        one_line(exc)
        lease = None
    try:
        got = store.claim(SPEC)
    except CorruptState as exc:
        one_line(exc)
        got = None
    if lease is None or lease_counts_closed(lease):
        # Unreadable or closed: the job must not start.
        assert not isinstance(got, Run), (lease, got)
        assert list_runs_ids() == runs_before
    else:
        assert isinstance(got, Run), (lease, got)
        if isinstance(got, Run):
            store.finish(got.id, "finished", 0)


# -- file store --------------------------------------------------------------------------------

@fuzz(350)
@given(gate_bytes)
@example(b"")
@example(good_gate_bytes[:9])
@example(json.dumps({"schema": 1, "lease": {**GOOD_LEASE, "expires_at": "NaN"}}).encode())
@example(b'{"schema": 1, "lease": {"state": "closed", "epoch": 7, "holder": "", "reason": "",'
         b' "deploy_id": "", "created_at": 0, "expires_at": NaN}}')
@example(json.dumps({"schema": 2, "lease": GOOD_LEASE}).encode())
def test_file_gate_garbage_never_lets_a_job_in(raw: bytes) -> None:
    with scratch_dir() as scratch:
        _file_gate(scratch, raw)
    count("file gate.json")


def _file_gate(scratch: Path, raw: bytes) -> None:
    store = FileStore(str(scratch / "store"))
    try:
        (scratch / "store" / "gate.json").write_bytes(raw)
        runs = scratch / "store" / "runs"
        claim_outcome(store, [], lambda: sorted(p.name for p in runs.glob("*.json")))
    finally:
        store.close()


GOOD_RUN = Run(id="0000000000000001aaaaaaaa", job="j", host="h", command=("a", "b"),
               state="interrupted", env={"A": "1"}, checkpoint={"n": 1}).to_dict()
run_docs = st.one_of(
    st.binary(max_size=80).map(lambda b: ("bytes", b)),
    st.dictionaries(st.sampled_from(list(GOOD_RUN)), json_value, max_size=4).map(
        lambda ch: ("json", {"schema": 1, "run": {**GOOD_RUN, **ch}})
    ),
    json_value.map(lambda v: ("json", v)),
)
FIELD_TYPES: dict[str, Any] = {
    "id": str, "job": str, "host": str, "state": str, "attempt": int, "epoch": int, "restarts": int,
    "created_at": (int, float), "command": tuple, "env": dict,
}


def check_run_types(run: Run) -> None:
    """A run that loads must be usable: the fields code does arithmetic and lookups on."""
    for name, kind in FIELD_TYPES.items():
        value = getattr(run, name)
        assert isinstance(value, kind) and not isinstance(value, bool), (name, value)
    assert run.state in ALL_STATES, run.state
    assert all(isinstance(a, str) for a in run.command), run.command
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in run.env.items()), run.env


@fuzz(350)
@given(run_docs)
@example(("json", {"schema": 1, "run": {**GOOD_RUN, "attempt": "x"}}))
@example(("json", {"schema": 1, "run": {**GOOD_RUN, "state": 5}}))
@example(("json", {"schema": 9, "run": GOOD_RUN}))
def test_file_run_garbage_is_reported_not_lost(doc: tuple[str, Any]) -> None:
    with scratch_dir() as scratch:
        _file_run(scratch, doc)
    count("file run json")


def _file_run(scratch: Path, doc: tuple[str, Any]) -> None:
    kind, value = doc
    store = FileStore(str(scratch / "store"))
    try:
        path = scratch / "store" / "runs" / f"{GOOD_RUN['id']}.json"
        path.write_bytes(value if kind == "bytes" else json.dumps(value).encode())
        try:
            runs = store.list_runs()
        except CorruptState as exc:
            one_line(exc)
            assert GOOD_RUN["id"] in str(exc) or str(path) in str(exc), str(exc)
        else:
            # It read as a run: then it is listed (not silently dropped) and usable.
            assert [r.id for r in runs] == [GOOD_RUN["id"]]
            check_run_types(runs[0])
    finally:
        store.close()


# -- SQLite ------------------------------------------------------------------------------------

sql_value = st.one_of(
    st.none(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.text(max_size=10),
    st.binary(max_size=8), st.sampled_from(["open", "closed", "running", "{}", "[]", "null", "[1]",
                                            NOW + 3600, NOW - 3600]),
)
GATE_COLS = ["state", "epoch", "holder", "reason", "deploy_id", "created_at", "expires_at"]


@fuzz(350)
@given(st.dictionaries(st.sampled_from(GATE_COLS), sql_value, min_size=1, max_size=4))
@example({"epoch": "x", "expires_at": "garbage"})
@example({"state": "closed", "expires_at": "9e999"})
def test_sqlite_gate_garbage_never_lets_a_job_in(changes: dict[str, Any]) -> None:
    with scratch_dir() as scratch:
        _sqlite_gate(scratch, changes)
    count("sqlite gate row")


def _sqlite_gate(scratch: Path, changes: dict[str, Any]) -> None:
    path = scratch / "jobs.db"
    store = SQLiteStore(str(path))
    try:
        with sqlite3.connect(path) as db:
            db.execute("UPDATE gate SET state='closed', epoch=7, holder='ann', reason='', "
                       "deploy_id='d1', created_at=?, expires_at=?", (NOW, NOW + 3600))
            sets = ", ".join(f"{k} = ?" for k in changes)
            try:
                db.execute(f"UPDATE gate SET {sets}", tuple(changes.values()))
            except sqlite3.IntegrityError:
                return  # NOT NULL refused the damage: the gate stays as it was
        claim_outcome(store, [], lambda: [r[0] for r in sqlite3.connect(path).execute(
            "SELECT id FROM runs").fetchall()])
    finally:
        store.close()


RUN_COLS = [k for k in GOOD_RUN if k not in ("id",)]


@fuzz(350)
@given(st.dictionaries(st.sampled_from(RUN_COLS), sql_value, min_size=1, max_size=4))
@example({"command": "not json"})
@example({"attempt": "x"})
@example({"env": "[1]"})
def test_sqlite_run_garbage_is_reported_not_lost(changes: dict[str, Any]) -> None:
    with scratch_dir() as scratch:
        _sqlite_run(scratch, changes)
    count("sqlite run row")


def _sqlite_run(scratch: Path, changes: dict[str, Any]) -> None:
    path = scratch / "jobs.db"
    store = SQLiteStore(str(path))
    try:
        run = store.claim(SPEC)
        assert isinstance(run, Run)
        store.finish(run.id, "interrupted", None, "stopped")
        with sqlite3.connect(path) as db:
            sets = ", ".join(f"{k} = ?" for k in changes)
            try:
                db.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*changes.values(), run.id))
            except sqlite3.IntegrityError:
                return  # NOT NULL refused the damage: nothing to read back
        try:
            runs = store.list_runs()
        except (CorruptState, ShipitError) as exc:
            one_line(exc)
            assert isinstance(exc, CorruptState)
        else:
            assert [r.id for r in runs] == [run.id]
            check_run_types(runs[0])
    finally:
        store.close()
