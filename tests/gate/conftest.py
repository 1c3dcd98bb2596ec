"""`store_factory`: one fixture, three backends, so every contract test runs against each.

A factory opens any number of store objects on the SAME store (standing for separate clients)
and knows, per backend, how to damage the stored state for the corruption tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shipit.gate.base import Store
from shipit.gate.url import open_store

BACKENDS = ["file", "sqlite", "postgres"]


class StoreFactory:
    def __init__(self, kind: str, url: str, root: Path | None) -> None:
        self.kind = kind
        self.url = url
        self.root = root  # file/sqlite: the store directory
        self.opened: list[Store] = []

    def __call__(self, **opts: Any) -> Store:
        store = open_store(self.url, **opts)
        self.opened.append(store)
        return store

    # -- damage, for the corruption tests ------------------------------------------------------
    def corrupt_gate(self) -> None:
        if self.kind == "file":
            assert self.root
            gate = self.root / "gate.json"
            gate.write_bytes(gate.read_bytes()[:9])  # a truncated write
        elif self.kind == "sqlite":
            self._sql("UPDATE gate SET epoch = 'x', expires_at = 'garbage'")
        else:
            self._pg("UPDATE shipit_gate SET state = 'bogus'")

    def corrupt_run(self, run_id: str) -> None:
        if self.kind == "file":
            assert self.root
            (self.root / "runs" / f"{run_id}.json").write_bytes(b"\x00garbage{")
        elif self.kind == "sqlite":
            self._sql(f"UPDATE runs SET checkpoint = '{{nope' WHERE id = '{run_id}'")
        else:
            self._pg(f"UPDATE shipit_runs SET command = '[not json' WHERE id = '{run_id}'")

    def bump_schema(self, version: int) -> None:
        if self.kind == "file":
            assert self.root
            (self.root / "schema").write_text(f"{version}\n")
        elif self.kind == "sqlite":
            self._sql(f"UPDATE meta SET value = '{version}' WHERE key = 'schema_version'")
        else:
            self._pg(f"UPDATE shipit_schema SET version = {version}")

    def _sql(self, sql: str) -> None:
        assert self.root
        db = sqlite3.connect(self.root / "jobs.db")
        db.execute(sql)
        db.commit()
        db.close()

    def _pg(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql)

    def close(self) -> None:
        for s in self.opened:
            with contextlib.suppress(Exception):
                s.close()


def make_factory(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    if kind == "file":
        root = tmp_path / "store"
        return StoreFactory(kind, f"file:{root}", root)
    if kind == "sqlite":
        root = tmp_path / "store"
        return StoreFactory(kind, f"sqlite:{root / 'jobs.db'}", root)
    dsn = request.getfixturevalue("pg_dsn")
    return StoreFactory(kind, dsn, None)


@pytest.fixture(params=BACKENDS)
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    factory = make_factory(request.param, request, tmp_path)
    yield factory
    factory.close()


@pytest.fixture
def store(store_factory: StoreFactory) -> Store:
    return store_factory()


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


MakeStore = Callable[..., Store]
__all__ = ["StoreFactory", "make_factory", "BACKENDS", "os"]
