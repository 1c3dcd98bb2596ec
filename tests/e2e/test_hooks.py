"""Hooks: config run/local/task hooks and hooks/<point> files with SHIPIT_* on the `local` host;
`roles:` on local/task hooks across real sshd hosts; a hook role no host has."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shipit import runner
from shipit.config.loader import load_config
from shipit.events import EventBus, Recorder
from tests.e2e.deploy_harness import Deployer, deploy_hosts  # noqa: F401

pytestmark = pytest.mark.e2e


def test_every_hook_kind_runs_with_the_shipit_env_on_the_local_host(tmp_path: Path) -> None:
    app = tmp_path / "src"
    app.mkdir()
    (app / "app.py").write_text("x = 1\n")
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "target dir"
    dump = 'echo "$SHIPIT_STAGE|$SHIPIT_RELEASE|$SHIPIT_REVISION|$SHIPIT_HOSTS|$SHIPIT_ACTOR|$SHIPIT_DEPLOY_TO|$(pwd)"'
    (tmp_path / "tasks.py").write_text(
        "from invoke import task\n\n@task\ndef notify(c):\n"
        f"    c.run('echo task $SHIPIT_RELEASE > {out}/task')\n"
    )
    hooks_dir = tmp_path / "hooks"
    hooks_dir.mkdir()
    (hooks_dir / "after_release").write_text(f"#!/bin/sh\necho file \"$SHIPIT_PREVIOUS_RELEASE\" > {out}/file\n")
    os.chmod(hooks_dir / "after_release", 0o755)
    config = tmp_path / "shipit.yaml"
    config.write_text(yaml.safe_dump({
        "application": "app", "source": {"dir": "src"}, "deploy_to": str(target),
        "jobs": {"store": "file"},
        "hooks": {
            "before_release": [{"run": f"{dump} > {out}/run-before"}],
            "after_release": [{"run": f"{dump} > {out}/run-after"}, {"local": f"{dump} > {out}/local"},
                              {"task": "notify"}],
        },
        "stages": {"prod": {"hosts": ["local"]}},
    }))
    stage = load_config(config).stage("prod")
    bus, rec = EventBus(), Recorder()
    bus.subscribe(rec)
    first = runner.deploy(stage, runner.DeployOptions(actor="ann"), bus)
    assert first.outcome == "success", first.error
    second = runner.deploy(stage, runner.DeployOptions(actor="ann"), bus)
    assert second.outcome == "success", second.error
    rel = f"{target}/releases/{second.release}"
    # Before the release exists the hook runs in deploy_to; after, in the release.
    assert (out / "run-before").read_text() == f"prod|{second.release}|{second.revision}|local|ann|{target}|{target}\n"
    assert (out / "run-after").read_text() == f"prod|{second.release}|{second.revision}|local|ann|{target}|{rel}\n"
    assert (out / "local").read_text() == f"prod|{second.release}|{second.revision}|local|ann|{target}|{tmp_path}\n"
    assert (out / "task").read_text() == f"task {second.release}\n"
    assert (out / "file").read_text() == f"file {first.release}\n"
    assert {e.data["where"] for e in rec.of("hook.finished")} == {"hosts", "local", "task", "file"}


def test_failing_local_hook_before_release_stops_the_deploy(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a").write_text("a")
    target = tmp_path / "t"
    config = tmp_path / "shipit.yaml"
    config.write_text(yaml.safe_dump({
        "application": "app", "source": {"dir": "src"}, "deploy_to": str(target), "jobs": {"store": "file"},
        "hooks": {"before_release": [{"local": "echo first; echo 'last words'; exit 7"}]},
        "stages": {"prod": {"hosts": ["local"]}},
    }))
    result = runner.deploy(load_config(config).stage("prod"), runner.DeployOptions(), EventBus())
    assert result.outcome == "failed" and result.exit_code == 1
    assert "[local] command failed with exit code 7" in (result.error or "")
    assert "last words" in (result.error or "")
    assert not (target / "current").exists() and list((target / "releases").iterdir()) == []


def test_local_and_task_hooks_with_roles_run_once_only_when_the_deploy_has_such_a_host(
    tmp_path: Path, deploy_hosts, monkeypatch  # noqa: F811
) -> None:
    """Through the real CLI: `--roles web` skips a db-only migrate (and says so); a full deploy
    runs it once, locally, however many hosts have the role."""
    web, db1, db2 = deploy_hosts
    out = tmp_path / "ran"
    (tmp_path / "tasks.py").write_text(
        "from invoke import task\n\n@task\ndef migrate(c):\n"
        f"    c.run('echo migrate $SHIPIT_HOSTS >> {out}')\n"
    )
    d = Deployer(
        tmp_path, deploy_hosts, monkeypatch,
        stage_extra={"roles": {"web": [web.name], "db": [db1.name, db2.name]}},
        hooks={"after_release": [{"task": "migrate", "roles": ["db"]},
                                 {"local": f"echo assets >> {out}", "roles": ["web"]}]},
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "shipit", "--config", str(d.config), *args],
            capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False,
        )

    only_web = cli("deploy", "test", "--roles", "web", "--yes")
    assert only_web.returncode == 0, only_web.stdout + only_web.stderr
    assert out.read_text() == "assets\n"
    assert "hook skipped: invoke migrate (roles: db; no host of this deploy has one)" in only_web.stdout
    out.unlink()
    full = cli("deploy", "test", "--yes")
    assert full.returncode == 0, full.stdout + full.stderr
    hosts = ",".join(h.name for h in deploy_hosts)
    assert sorted(out.read_text().splitlines()) == ["assets", f"migrate {hosts}"]
    assert "hook skipped" not in full.stdout


def test_a_hook_role_no_host_has_is_a_config_error_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    config = tmp_path / "shipit.yaml"
    config.write_text(
        "application: app\nsource: {dir: src}\n"
        f"deploy_to: {tmp_path / 'target'}\n"
        "hooks:\n  after_release:\n    - task: migrate\n      roles: [dbb]\n"
        "stages:\n  prod:\n    hosts: [{host: local, roles: [db]}]\n"
    )
    res = subprocess.run(
        [sys.executable, "-m", "shipit", "deploy", "prod", "--yes"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False,
    )
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr == (
        "shipit: error: shipit.yaml:7: hooks.after_release[0].roles[0]: no host has role 'dbb'"
        " (did you mean 'db'? roles: db)\n"
    )
    assert not (tmp_path / "target").exists()
