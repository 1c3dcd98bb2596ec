"""Fixtures for the job-runtime tests (supervisor and Python API): a real store per backend.

`job_store` is parametrised over sqlite, file and postgres, created as a deploy would create it
(`shipit job run` refuses a store that does not exist). PostgreSQL comes from the `pg_dsn`
fixture of tests/harness/postgres.py; a backend whose code or server is missing is skipped with
its reason, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.jobs.runtime_kit import JobStore


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: not skipping)")
    pytest.skip(reason)


@pytest.fixture(params=["sqlite", "file", "postgres"])
def job_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    kind = request.param
    module = {"sqlite": "shipit.gate.sqlite", "file": "shipit.gate.file",
              "postgres": "shipit.gate.postgres"}[kind]
    try:
        importlib.import_module(module)
    except ImportError as exc:
        _unavailable(f"{kind} store not available: {exc}")
    if kind == "sqlite":
        store = JobStore(kind, f"sqlite:{tmp_path}/store/jobs.db", {})
    elif kind == "file":
        store = JobStore(kind, f"file:{tmp_path}/store", {})
    else:
        try:
            dsn = request.getfixturevalue("pg_dsn")
        except pytest.FixtureLookupError:
            _unavailable("the pg_dsn fixture (tests/harness/postgres.py) is not there yet")
        # The DSN reaches jobs through the environment, never on a command line.
        store = JobStore(kind, "postgres", {"SHIPIT_DSN": dsn})
    # What a first deploy does: the job side never creates a store (a typo'd --store would
    # otherwise run jobs through a fresh, open gate).
    store.open().close()
    yield store
