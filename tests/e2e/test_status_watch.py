"""`shipit status STAGE --watch` against a real store on the local host: refreshed snapshots of the
gate, the running job (host, progress, elapsed) and the phase of a deploy in progress."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.jobs.deploy_kit import (
    SHIPIT,
    Project,
    kill_group,
    kill_jobs,
    running_run,
    start_job,
    wait_for,
)

pytestmark = pytest.mark.e2e

PROGRESS_JOB = (
    f"i=0; while :; do i=$((i+1)); {sys.executable} -m shipit job progress $i 1000; sleep 0.05; done"
)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    p = Project(tmp_path)
    p.shipit("deploy", "s", check=True)
    return p


def test_watch_refreshes_the_gate_and_the_running_job(project: Project) -> None:
    proc = start_job(project.url, "ticker", ["/bin/sh", "-c", PROGRESS_JOB], host="local")
    store = project.store()
    try:
        run = running_run(store, "ticker")
        wait_for(lambda: (store.get_run(run.id).progress_done or 0) >= 2, what="progress")
        res = project.shipit("status", "s", "--watch", "--interval", "0.3", "--count", "3")
        assert res.returncode == 0, res.stderr
        frames = res.stdout.split("--- ")[1:]
        assert len(frames) == 3
        for frame in frames:
            assert "local: gate open" in frame
            line = next(ln for ln in frame.splitlines() if run.id in ln)
            assert "ticker  running  host=local" in line and "progress=" in line and "elapsed=" in line
        done = [int(f.split("progress=")[1].split("/")[0]) for f in frames]
        assert done == sorted(done) and done[-1] > done[0]  # refreshed, not one reading repeated
        res = project.shipit("status", "s", "--watch", "--json", "--interval", "0.1", "--count", "2")
        snaps = [json.loads(line) for line in res.stdout.splitlines()]
        assert len(snaps) == 2 and snaps[0]["stores"]["local"]["runs"][0]["run_id"] == run.id
    finally:
        store.close()
        kill_group(proc)
        kill_jobs(project)


def test_watch_shows_the_phase_of_a_deploy_in_progress(project: Project) -> None:
    cfg = project.root / "shipit.yaml"
    data = yaml.safe_load(cfg.read_text())
    data["hooks"] = {"before_release": [{"run": "sleep 3"}]}  # holds the deploy in its release
    cfg.write_text(yaml.safe_dump(data))
    deploy = project.popen("deploy", "s")
    try:
        logs = project.root / ".shipit" / "logs"

        def in_release() -> bool:
            return any("before_release" in p.read_text() for p in logs.glob("s-*.log"))

        wait_for(in_release, what="the deploy to reach its release hooks")
        res = project.shipit("status", "s", "--watch", "--count", "1")
        assert res.returncode == 0, res.stderr
        assert "local: gate closed" in res.stdout
        assert "phase release" in res.stdout
    finally:
        deploy.wait(timeout=60)
    assert deploy.returncode == 0


def test_ctrl_c_ends_the_watch_with_exit_0(project: Project) -> None:
    watch = subprocess.Popen([*SHIPIT, "status", "s", "--watch", "--interval", "0.2"], cwd=project.root,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert watch.stdout is not None
    assert watch.stdout.readline().startswith("--- ")
    watch.send_signal(signal.SIGINT)
    _, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    assert "Traceback" not in err
