"""Per-host stores are private: every folder 0700, every file 0600 (run files, run locks, the
SQLite WAL, audit trail, logs), while a real job runs and after it ends, whatever the umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from shipit.gate.url import open_store
from tests.jobs.deploy_kit import kill_group, running_run, start_job, wait_for


def modes(root: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for p in root.rglob("*"):
        out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


def assert_private(root: Path) -> None:
    bad = {name: f"{mode:04o}" for name, mode in modes(root).items()
           if mode != (0o700 if (root / name).is_dir() else 0o600)}
    assert not bad, bad


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_store_files_and_folders_are_private(kind: str, tmp_path: Path) -> None:
    root = tmp_path / "store"
    url = f"file:{root}" if kind == "file" else f"sqlite:{root / 'jobs.db'}"
    old = os.umask(0o002)  # a permissive umask must not leak into the store
    log = tmp_path / "job.log"
    try:
        store = open_store(url)  # as a deploy creates it (a job never does)
        proc = start_job(url, "sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], log=log)
        try:
            run = running_run(store, "sleeper")
            assert (root / "runs" / f"{run.id}.lock").exists()  # the run lock is among the files checked
            store.save_checkpoint(run.id, {"n": 1})
            store.audit("test", "me", 0)
            assert_private(root)
        finally:
            kill_group(proc)
            wait_for(lambda: not store.is_alive(run), what="the run lock to be free")
            store.close()
        assert_private(root)
        # The deploy side's restart spawner writes job logs under the store's folder.
        res = subprocess.run([sys.executable, "-m", "shipit", "agent", "restart", "--opts",
                              f'{{"store": "{url}", "epoch": 0, "run_ids": ["{run.id}"]}}'],
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert res.returncode == 0, res.stdout + res.stderr
        assert list((root / "logs").glob("*.log"))
        assert_private(root)
    finally:
        os.umask(old)
