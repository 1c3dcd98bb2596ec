"""A real deploy (local host, central PostgreSQL store with a password in its DSN, a secret var used
by a hook, a job to drain and restart) never shows a secret on any channel: stdout, stderr,
--json, the deploy log, the history, the job logs, or the argv of any shipit process the deploy
starts (a wrapper records every argv while it runs)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

from tests.harness.postgres import PASSWORD
from tests.jobs.deploy_kit import Project, continuation, items, kill_group, kill_jobs, wait_for

pytestmark = pytest.mark.e2e

API_KEY = "sk-live-4f9c2e7d1b-topsecret"


def test_no_secret_reaches_any_output_channel(tmp_path: Path, pg_dsn: str) -> None:
    assert PASSWORD in pg_dsn
    argv_log = tmp_path / "argv.log"
    wrapper = tmp_path / "shipit-wrapper"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"$*\" >> {argv_log}\n"
        f"exec {sys.executable} -m shipit \"$@\"\n"
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    project = Project(tmp_path, store="postgres", env={"SHIPIT_DSN": pg_dsn, "API_KEY": API_KEY})
    cfg = project.root / "shipit.yaml"
    data = yaml.safe_load(cfg.read_text())
    data["shipit_command"] = str(wrapper)
    data["vars"] = {"api_key": "${API_KEY}"}
    data["secrets"] = ["api_key"]
    data["hooks"] = {"before_release": [{"run": "echo calling the api with ${API_KEY}"}]}
    cfg.write_text(yaml.safe_dump(data))
    first = project.shipit("deploy", "s")
    assert first.returncode == 0, first.stderr
    proc, out = project.start_stateful(total=100000)
    store = project.store()
    try:
        wait_for(lambda: out.exists() and len(items(out)) >= 3, what="the job to make progress")
        plain = project.shipit("deploy", "s")
        assert plain.returncode == 0, plain.stderr
        old = next(r for r in store.list_runs() if r.attempt == 1)
        wait_for(lambda: continuation(store, old.id), what="the restart through the agent")
        as_json = project.shipit("deploy", "s", "--json")
        assert as_json.returncode == 0, as_json.stderr
        status = project.shipit("status", "s", "--json")
        assert status.returncode == 0, status.stderr
    finally:
        store.close()
        kill_group(proc)
        kill_jobs(project)
    assert "***" in plain.stdout + plain.stderr  # the hook's output was there, masked
    assert "agent restart" in argv_log.read_text()  # the agent did run (through the wrapper)
    channels = {
        "deploy stdout/stderr": plain.stdout + plain.stderr + first.stdout + first.stderr,
        "deploy --json": as_json.stdout + as_json.stderr,
        "status --json": status.stdout + status.stderr,
        "argv of shipit processes": argv_log.read_text(),
    }
    files = [*(project.root / ".shipit").rglob("*"), *project.deploy_to.rglob("*")]
    for p in files:
        if p.is_file() and not p.is_symlink() and "src" not in p.parts[-3:-1]:
            channels[str(p.relative_to(tmp_path))] = p.read_text(errors="replace")
    assert any(".shipit/logs" in k for k in channels) and any("history" in k for k in channels)
    for name, text in channels.items():
        for secret in (API_KEY, PASSWORD):
            assert secret not in text, f"{secret[:6]}... leaked into {name}"
    assert not [k for k in os.environ if k == "API_KEY"]  # the test kept it out of its own env
