"""Bad input through the real `shipit` process: one line naming file:line:key, exit 2, nothing
run; and `shipit check` on a deploy_to that does not exist yet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

HEAD = "application: app\nsource: {{dir: src}}\ndeploy_to: {deploy_to}\n"
STAGES = "stages:\n  prod:\n    hosts: [local]\n"


def shipit(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("SHIPIT_DSN", "SHIPIT_CONFIG")}
    return subprocess.run(
        [sys.executable, "-m", "shipit", *args], capture_output=True, text=True, cwd=project,
        env={**environ, **(env or {})}, timeout=120, check=False,
    )


def project(tmp_path: Path, body: str, deploy_to: str | None = None) -> Path:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / "app.py").write_text("x = 1\n")
    head = HEAD.format(deploy_to=deploy_to or tmp_path / "target")
    (tmp_path / "shipit.yaml").write_text(head + body)
    return tmp_path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "jobs:\n  store: file\n  adapters:\n    - type: sidekiq\n" + STAGES,
            "shipit.yaml:7: jobs.adapters[0].type: unknown adapter 'sidekiq'"
            " (use one of cron, systemd, command, rq, celery)",
        ),
        (
            "jobs:\n  adapters:\n    - type: rq\n      queus: [default]\n" + STAGES,
            "shipit.yaml:7: jobs.adapters[0].queus: unknown key (did you mean 'queues'?)",
        ),
        (
            "jobs:\n  adapters:\n    - type: systemd\n      timer: [a.timer]\n" + STAGES,
            "shipit.yaml:7: jobs.adapters[0].timer: unknown key (did you mean 'timers'?)",
        ),
        (
            'notify:\n  - webhook: "ftp://x"\n' + STAGES,
            "shipit.yaml:5: notify[0].webhook: must be an http:// or https:// URL, got 'ftp://x'",
        ),
        (
            "jobs:\n  store: postgres\n" + STAGES,
            "shipit.yaml:5: jobs.store: the postgres job store needs its DSN in the environment"
            " variable SHIPIT_DSN (jobs.dsn_env), which is not set",
        ),
        (
            "jobs:\n  env_allow: [API_TOKEN]\n" + STAGES,
            "shipit.yaml:5: jobs.env_allow: unknown key",
        ),
    ],
    ids=["adapter-type", "adapter-key", "systemd-key", "webhook", "postgres-dsn", "env_allow"],
)
@pytest.mark.parametrize("command", [("deploy", "prod", "--yes"), ("check", "prod")])
def test_bad_config_is_one_line_exit_2_and_nothing_runs(
    tmp_path: Path, body: str, message: str, command: tuple[str, ...]
) -> None:
    p = project(tmp_path, body)
    res = shipit(p, *command)
    assert (res.returncode, res.stdout) == (2, ""), res.stdout + res.stderr
    assert res.stderr == f"shipit: error: {message}\n"
    assert not (tmp_path / "target").exists() and not (tmp_path / ".shipit").exists()


def test_check_reports_a_deploy_to_that_cannot_be_created_and_deploy_agrees(tmp_path: Path) -> None:
    p = project(tmp_path, "jobs: {store: file}\n" + STAGES, deploy_to="/proc/nope/app")
    res = shipit(p, "check", "prod", "--json")
    assert res.returncode == 1, res.stdout + res.stderr
    (row,) = json.loads(res.stdout)
    assert (row["ok"], row["problems"]) == (
        False, ["/proc/nope/app does not exist and cannot be created (parent /proc is not writable)"],
    )
    table = shipit(p, "check", "prod")
    assert table.returncode == 1 and "PROBLEM" in table.stdout
    assert "/proc/nope/app does not exist and cannot be created (parent /proc is not writable)" in table.stdout
    assert shipit(p, "deploy", "prod", "--yes").returncode == 1


def test_check_is_ok_when_the_first_deploy_can_create_deploy_to(tmp_path: Path) -> None:
    target = tmp_path / "srv" / "app"
    p = project(tmp_path, "jobs: {store: file}\n" + STAGES, deploy_to=str(target))
    res = shipit(p, "check", "prod", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    (row,) = json.loads(res.stdout)
    assert (row["ok"], row["problems"]) == (True, [])
    assert row["notes"] == [f"{target} does not exist yet; the first deploy creates it (in {tmp_path})"]
    assert not (tmp_path / "srv").exists()
    deployed = shipit(p, "deploy", "prod", "--yes")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert (target / "current").is_symlink()
