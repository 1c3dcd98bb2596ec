"""Hooks on the `local` host: config run/local/task hooks and hooks/<point> files, with SHIPIT_*."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from shipit import runner
from shipit.config.loader import load_config
from shipit.events import EventBus, Recorder

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
