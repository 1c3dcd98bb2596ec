"""The job side never creates a store: `shipit job run` (and the Python API standalone) at a
location with no store (a typo in a cron line's --store) exits 5 with one line, runs nothing and
creates nothing; the deploy's agent is what creates a store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shipit.gate._common import StoreMissing
from tests.jobs.deploy_kit import agent
from tests.jobs.runtime_kit import SHIPIT, job_env

HINT = ": deploy the stage first (it creates the store) or fix --store/SHIPIT_STORE\n"


@pytest.fixture(params=["sqlite", "file", "postgres"])
def nowhere(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, str], str]:
    """(store URL, env, what the error names) for a store that does not exist yet."""
    if request.param == "sqlite":
        path = tmp_path / "nonexistent" / "dir" / "x.db"
        return f"sqlite:{path}", {}, f"sqlite:{path}"
    if request.param == "file":
        return f"file:{tmp_path / 'typo'}", {}, f"file:{tmp_path / 'typo'}"
    dsn = request.getfixturevalue("pg_dsn")  # a fresh database: no shipit tables in it
    return "postgres", {"SHIPIT_DSN": dsn}, ""


def test_job_run_refuses_a_store_that_does_not_exist(nowhere, tmp_path: Path) -> None:
    url, env, named = nowhere
    marker = tmp_path / "ran"
    proc = subprocess.run([*SHIPIT, "job", "run", "--store", url, "--", "touch", str(marker)],
                          capture_output=True, text=True, timeout=60, env=job_env(env))
    assert proc.returncode == 5
    assert proc.stderr.startswith(f"shipit: error: no job store at {named}")
    assert proc.stderr.endswith(HINT) and proc.stderr.count("\n") == 1
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing created either
    if env:
        assert "password" not in proc.stderr and env["SHIPIT_DSN"] not in proc.stderr


def test_the_python_api_standalone_refuses_it_too(nowhere, tmp_path: Path) -> None:
    url, env, _ = nowhere
    marker = tmp_path / "ran"
    code = (
        "import sys\nfrom shipit.jobs.api import job\n"
        f"with job('etl', store={url!r}):\n    open({str(marker)!r}, 'w').close()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=job_env(env))
    assert proc.returncode != 0 and "StoreMissing" in proc.stderr and "no job store at" in proc.stderr
    assert not marker.exists()


def test_the_agent_still_creates_the_store_it_owns(tmp_path: Path) -> None:
    url = f"sqlite:{tmp_path / 'shared' / 'shipit' / 'jobs.db'}"
    code, lines = agent("close", {"store": url, "deploy_id": "d1", "ttl": 5})
    assert code == 0 and lines[-1]["result"]["lease"]["state"] == "closed"
    assert (tmp_path / "shared" / "shipit" / "jobs.db").exists()
    with pytest.raises(StoreMissing):
        from shipit.jobs.supervisor import open_store_or_fail

        open_store_or_fail(f"sqlite:{tmp_path / 'elsewhere.db'}")
