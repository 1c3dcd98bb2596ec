"""Deploy-test helpers on top of tests/harness/sshd.py.

The harness's hosts all live on this machine, so one deploy_to would be the same directory on
every "host". Here every sshd runs in its own mount namespace with its own directory bound on
MOUNT: the same absolute deploy_to is a different tree on every host, as on real machines (and
the per-host job store path stays absolute). From the test, a host's tree is `host.root`.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shipit import runner
from shipit.config.loader import load_config
from shipit.config.model import StageConfig
from shipit.events import EventBus, Recorder
from shipit.hosts.base import Host
from tests.harness.sshd import SSHD, SSHDPool, TestHost, free_port, require, write_shipit_yaml

MOUNT = "/srv/shipit-e2e-hosts"


def _namespaces_work() -> bool:
    os.makedirs(MOUNT, exist_ok=True)
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", f"mount --bind /tmp {MOUNT}"],
        capture_output=True, check=False,
    )
    return probe.returncode == 0


class HomeHost(TestHost):
    """A test host whose MOUNT is its own directory (a private mount namespace)."""

    __test__ = False

    @property
    def home(self) -> Path:
        """What the host sees at MOUNT."""
        return self.dir / "root"

    def spawn(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        if not self.host_key.exists():
            self.new_host_key()
            self.pool.add_known_host(self.port, self.public_key)
        config = self._write_config()
        self.home.mkdir(exist_ok=True)
        inner = f"mount --bind {shlex.quote(str(self.home))} {MOUNT} && exec {SSHD} -D -e -f {shlex.quote(str(config))}"
        with open(self.dir / "sshd.log", "ab") as log:
            # unshare execs sh, which execs sshd: proc.pid is sshd, so kill() works unchanged.
            self.proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", inner],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )


@pytest.fixture(scope="session")
def deploy_hosts(sshd_pool: SSHDPool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[HomeHost]]:
    require(SSHD, "sshd")
    if not _namespaces_work():
        message = "mount namespaces (unshare -m) are not available: cannot give test hosts separate trees"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    parent = tmp_path_factory.mktemp("deployhosts")
    hosts = []
    for _ in range(3):
        port = free_port()
        d = parent / f"host-{port}"
        d.mkdir(mode=0o700)
        hosts.append(HomeHost(pool=sshd_pool, port=port, dir=d))
    for h in hosts:
        h.spawn()
    for h in hosts:
        h.wait_ready()
    yield hosts
    for h in hosts:
        h.kill()


def make_app(root: Path, version: str = "1") -> Path:
    app = root / "src"
    (app / "config").mkdir(parents=True, exist_ok=True)
    (app / "app.py").write_text(f"VERSION = {version!r}\n")
    (app / "config" / "app.env").write_text("from the archive\n")
    return app


class Deployer:
    """One project (shipit.yaml + app dir) deploying to some hosts, with host counters captured."""

    def __init__(self, tmp_path: Path, hosts: list[HomeHost], monkeypatch: pytest.MonkeyPatch, **top: Any) -> None:
        self.name = f"app-{uuid.uuid4().hex[:8]}"
        self.hosts = hosts
        self.app = make_app(tmp_path)
        stage_extra = top.pop("stage_extra", None)
        extra_hosts = top.pop("extra_hosts", [])
        self.config = write_shipit_yaml(
            tmp_path / "shipit.yaml", hosts, deploy_to=f"{MOUNT}/{self.name}", source={"dir": str(self.app)},
            stage_extra=stage_extra, jobs={"store": "file", "lease_ttl": 5}, **top,
        )
        if extra_hosts:
            import yaml

            data = yaml.safe_load(self.config.read_text())
            data["stages"]["test"]["hosts"] += extra_hosts
            self.config.write_text(yaml.safe_dump(data, sort_keys=False))
        self.opened: list[Host] = []
        real_open = runner.open_host

        def capture(spec: Any, ssh: Any) -> Host:
            host = real_open(spec, ssh)
            self.opened.append(host)
            return host

        monkeypatch.setattr(runner, "open_host", capture)

    def stage(self) -> StageConfig:
        return load_config(self.config).stage("test")

    def deploy(self, **opts: Any) -> tuple[runner.DeployResult, Recorder]:
        self.opened.clear()
        bus, rec = EventBus(), Recorder()
        bus.subscribe(rec)
        return runner.deploy(self.stage(), runner.DeployOptions(**opts), bus), rec

    def rollback(self, to: str | None = None) -> tuple[runner.DeployResult, Recorder]:
        self.opened.clear()
        bus, rec = EventBus(), Recorder()
        bus.subscribe(rec)
        return runner.rollback(self.stage(), runner.DeployOptions(), bus, to=to), rec

    def root(self, host: HomeHost) -> Path:
        return host.home / self.name

    def current(self, host: HomeHost) -> str | None:
        link = self.root(host) / "current"
        return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None

    def releases(self, host: HomeHost) -> list[str]:
        rel = self.root(host) / "releases"
        return sorted(p.name for p in rel.iterdir()) if rel.is_dir() else []


def tree(root: Path) -> dict[str, str]:
    """Every path below root with its kind and content hash: to compare before/after."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() + f":{p.stat().st_mode & 0o777:o}"
    return out
