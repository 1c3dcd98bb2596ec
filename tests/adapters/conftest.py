"""Fixtures for the cron, systemd and command adapter tests: a local-host project deployed for
real (SQLite store), a real crontab guarded and restored, and a fake `systemctl` on PATH that
runs real processes (this machine has no running systemd)."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipit import runner
from shipit.config.loader import load_config
from shipit.config.model import StageConfig
from shipit.events import EventBus, Recorder
from tests.harness.sshd import SHIPIT_COMMAND

HERE = Path(__file__).parent
IN_CI = os.environ.get("CI") == "true"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed (scripts/install-test-deps.sh installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


class Project:
    """A shipit.yaml deploying a small source dir to `root/deploy` on the local host."""

    def __init__(self, root: Path, **top: Any) -> None:
        self.root = root
        self.src = root / "src"
        self.src.mkdir(exist_ok=True)
        (self.src / "VERSION").write_text("1\n")
        self.deploy_to = root / "deploy"
        self.config = root / "shipit.yaml"
        self.data: dict[str, Any] = {
            "application": top.pop("application", "app"),
            "source": {"dir": str(self.src)},
            "deploy_to": str(self.deploy_to),
            "shipit_command": SHIPIT_COMMAND,
            "jobs": {"store": "sqlite", "drain_timeout": 0.5, "grace": 0.5, "lease_ttl": 10},
            "stages": {"s": {"hosts": top.pop("hosts", ["local"])}},
        }
        jobs = top.pop("jobs", {})
        self.data["jobs"].update(jobs)
        self.data.update(top)
        self.write()

    def write(self) -> None:
        self.config.write_text(yaml.safe_dump(self.data, sort_keys=False))

    def stage(self) -> StageConfig:
        return load_config(self.config).stage("s")

    def deploy(self, *, dry_run: bool = False) -> tuple[runner.DeployResult, Recorder]:
        bus, rec = EventBus(), Recorder()
        bus.subscribe(rec)
        result = runner.deploy(self.stage(), runner.DeployOptions(dry_run=dry_run, actor="test"), bus)
        return result, rec

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`shipit --config <this> ARGS` in this process (as the console entry point runs it)."""
        from shipit.cli import run

        out, err = io.StringIO(), io.StringIO()
        argv = ["--config", str(self.config), *args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(argv)
        return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@pytest.fixture
def project_factory(tmp_path: Path) -> Any:
    def make(**top: Any) -> Project:
        return Project(tmp_path, **top)

    return make


def adapter_events(rec: Recorder, kind: str) -> list[dict[str, Any]]:
    return [e.data for e in rec.of(kind) if "adapter" in e.data]


# -- crontab --------------------------------------------------------------------------------
@pytest.fixture
def crontab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The real crontab of the user running the tests, saved and put back afterwards; one
    test at a time edits it (a lock shared with parallel workers)."""
    need("crontab")
    lock = open("/tmp/shipit-test-crontab.lock", "w")  # noqa: SIM115 - held for the test
    fcntl.flock(lock, fcntl.LOCK_EX)
    saved = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=False)
    try:
        yield
    finally:
        if saved.returncode == 0:
            subprocess.run(["crontab", "-"], input=saved.stdout, text=True, check=True)
        else:
            subprocess.run(["crontab", "-r"], capture_output=True, check=False)
        lock.close()


def crontab_text() -> str:
    res = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=False)
    return res.stdout if res.returncode == 0 else ""


def set_crontab(text: str) -> None:
    subprocess.run(["crontab", "-"], input=text, text=True, check=True)


# -- fake systemd ---------------------------------------------------------------------------
class FakeSystemd:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "units").mkdir(parents=True)
        (root / "state").mkdir()
        self.bin = root / "bin"
        self.bin.mkdir()
        script = self.bin / "systemctl"
        script.write_text(f"#!{sys.executable}\n" + (HERE / "fake_systemctl.py").read_text())
        script.chmod(0o755)

    def service(self, name: str, command: str) -> None:
        (self.root / "units" / f"{name}.service").write_text(command)

    def timer(self, name: str, command: str) -> None:
        self.service(name, command)
        (self.root / "units" / f"{name}.timer").touch()

    def ctl(self, *args: str) -> str:
        res = subprocess.run([str(self.bin / "systemctl"), *args], capture_output=True, text=True,
                             check=False, env=os.environ | {"FAKE_SYSTEMD": str(self.root)})
        return res.stdout.strip()

    def state(self, unit: str) -> str:
        return self.ctl("is-active", unit)

    def pid(self, unit: str) -> int | None:
        f = self.root / "state" / f"{unit}.pid"
        return int(f.read_text()) if f.exists() else None

    def calls(self) -> list[str]:
        f = self.root / "calls"
        return f.read_text().splitlines() if f.exists() else []

    def cleanup(self) -> None:
        for f in (self.root / "state").glob("*.pid"):
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.killpg(int(f.read_text()), signal.SIGKILL)


@pytest.fixture
def fake_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "systemd")
    monkeypatch.setenv("FAKE_SYSTEMD", str(fake.root))
    monkeypatch.setenv("PATH", f"{fake.bin}{os.pathsep}{os.environ['PATH']}")
    try:
        yield fake
    finally:
        fake.cleanup()
