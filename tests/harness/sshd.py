"""Real sshd test hosts on 127.0.0.1, one `sshd -D` process per host on a free port.

Every host has its own freshly generated ed25519 host key, written to a known_hosts file that
the hosts' SSHConfig names, and strict host key checking stays ON: tests connect exactly the
way a user does. Root logs in with a per-session client key.

Fixtures
  ssh_hosts3        session-scoped pool of three running hosts. Share it whenever the test
                    does not stop hosts; keep each test's files apart with its own deploy_to
                    (e.g. `tmp_path / "app"`, which is on the same machine).
  sshd_hosts        factory, function-scoped: `sshd_hosts(2)` -> two fresh hosts that are
                    stopped after the test. Use it for tests that kill() / start() hosts or
                    change host keys.
  ssh_client_key    session-scoped (private key path, public key line).
  ssh_known_hosts   session-scoped path of the known_hosts file holding every host's key.

A TestHost (see the class) gives: name ("root@127.0.0.1:PORT", the user running the tests), port, spec() -> HostSpec,
ssh -> SSHConfig (identity_file, known_hosts, strict), kill() / start() to take the host
down and bring it back with the same key, new_host_key() to make its key "change".

To build e2e deploy tests:

    def test_deploy(ssh_hosts3, tmp_path):
        cfg = write_shipit_yaml(tmp_path / "shipit.yaml", ssh_hosts3,
                                deploy_to=str(tmp_path / "app"),
                                source={"dir": str(project_dir)})
        # then: shipit -c cfg deploy test   (stage "test" holds all hosts)

Outside pytest (benchmarks, scripts): `pool = new_pool(dir)` then `start_hosts(pool, n, dir)`;
call `host.kill()` on each when done.

Commands run over SSH get `HOME=<a clean temp dir>` (sshd_config SetEnv) so root's ~/.bashrc
(pyenv init) is not sourced by every command; PATH is sshd's default, so the shipit command
on hosts is `SHIPIT_COMMAND` (this interpreter, `-m shipit`).

When sshd is missing the fixtures skip, except under CI=true where they fail.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shipit.config.model import HostSpec, SSHConfig

SSHD = "/usr/sbin/sshd"
SHIPIT_COMMAND = f"{sys.executable} -m shipit"
START_TIMEOUT = 10.0
# Whoever runs the suite logs in as themselves (root in CI containers).
USER = pwd.getpwuid(os.getuid()).pw_name


def require(path: str, what: str) -> None:
    """Fail under CI (a missing server must never pass silently), skip elsewhere."""
    if os.path.exists(path) or shutil.which(path):
        return
    message = f"{what} not installed: run scripts/install-test-deps.sh"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.01)
    raise RuntimeError(f"{what} did not listen on port {port}: {log.read_text()[-2000:]}")


def generate_ed25519() -> tuple[bytes, str]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public.decode()


def write_private(path: Path, data: bytes | str) -> None:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    path.chmod(0o600)


def _descendants(pid: int) -> list[int]:
    """Every process below pid: sshd's per-connection children must die with the host
    (they call setsid, so a process group kill would miss them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass
class SSHDPool:
    """Session-wide pieces shared by every test host."""

    root: Path
    client_key: Path
    client_public: str
    known_hosts: Path
    authorized_keys: Path
    home: Path
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_known_host(self, port: int, public: str) -> None:
        with self.lock:
            lines = [
                line
                for line in self.known_hosts.read_text().splitlines()
                if not line.startswith(f"[127.0.0.1]:{port} ")
            ]
            lines.append(f"[127.0.0.1]:{port} {public}")
            self.known_hosts.write_text("\n".join(lines) + "\n")


@dataclass
class TestHost:
    """One sshd standing for one host of a stage."""

    __test__ = False  # not a pytest test class

    pool: SSHDPool
    port: int
    dir: Path
    public_key: str = ""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"{USER}@127.0.0.1:{self.port}"

    @property
    def ssh(self) -> SSHConfig:
        return SSHConfig(
            identity_file=str(self.pool.client_key),
            known_hosts=str(self.pool.known_hosts),
            strict_host_key_checking=True,
            connect_timeout=5.0,
        )

    def spec(self, **overrides: Any) -> HostSpec:
        fields: dict[str, Any] = {
            "name": self.name,
            "hostname": "127.0.0.1",
            "user": USER,
            "port": self.port,
        }
        fields.update(overrides)
        return HostSpec(**fields)

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    def new_host_key(self) -> None:
        """Give the host a new key (a reinstalled machine, or an attacker); known_hosts keeps
        the old one. Takes effect at the next start()."""
        private, self.public_key = generate_ed25519()
        write_private(self.host_key, private)

    def _write_config(self) -> Path:
        config = self.dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.pool.authorized_keys}",
                    "PermitRootLogin prohibit-password",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "UseDNS no",
                    "MaxStartups 200",
                    "MaxSessions 100",
                    f"SetEnv HOME={self.pool.home}",
                    "Subsystem sftp internal-sftp",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        return config

    def spawn(self) -> None:
        """Start sshd without waiting for it (several hosts start in parallel)."""
        if self.proc is not None and self.proc.poll() is None:
            return
        if not self.host_key.exists():
            self.new_host_key()
            self.pool.add_known_host(self.port, self.public_key)
        config = self._write_config()
        log = open(self.dir / "sshd.log", "ab")  # noqa: SIM115 - handed to the child for its life
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()

    def wait_ready(self) -> None:
        assert self.proc is not None
        wait_for_port(self.port, self.proc, self.dir / "sshd.log", f"sshd on port {self.port}")

    def start(self) -> None:
        """Bring the host (back) up, with whatever host key it has now."""
        self.spawn()
        self.wait_ready()

    def kill(self) -> None:
        """The host goes down: the listener and every open session die at once."""
        if self.proc is None:
            return
        pids = _descendants(self.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def start_hosts(pool: SSHDPool, count: int, parent: Path) -> list[TestHost]:
    hosts = []
    for _ in range(count):
        port = free_port()
        host_dir = parent / f"host-{port}"
        host_dir.mkdir(mode=0o700)
        hosts.append(TestHost(pool=pool, port=port, dir=host_dir))
    for host in hosts:
        host.spawn()
    for host in hosts:
        host.wait_ready()
    return hosts


def host_entries(hosts: Sequence[TestHost]) -> list[str]:
    """The `hosts:` list of a stage, short form."""
    return [host.name for host in hosts]


def ssh_section(hosts: Sequence[TestHost]) -> dict[str, Any]:
    """The `ssh:` section that lets shipit reach the test hosts with strict key checking."""
    ssh = hosts[0].ssh
    return {
        "identity_file": ssh.identity_file,
        "known_hosts": ssh.known_hosts,
        "strict_host_key_checking": True,
        "connect_timeout": ssh.connect_timeout,
    }


def write_shipit_yaml(
    path: Path,
    hosts: Sequence[TestHost],
    *,
    deploy_to: str,
    source: dict[str, Any],
    stage: str = "test",
    application: str = "app",
    stage_extra: dict[str, Any] | None = None,
    **top: Any,
) -> Path:
    """Write a shipit.yaml whose stage `stage` deploys to `hosts`; `top` adds or overrides
    top-level keys (jobs, hooks, linked_files, ...), `stage_extra` stage-level ones."""
    data: dict[str, Any] = {
        "application": application,
        "source": source,
        "deploy_to": deploy_to,
        "shipit_command": SHIPIT_COMMAND,
        "ssh": ssh_section(hosts),
        "stages": {stage: {"hosts": host_entries(hosts), **(stage_extra or {})}},
    }
    data.update(top)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def new_pool(root: Path) -> SSHDPool:
    """A client key, authorized_keys, an empty known_hosts and a clean HOME under root (for
    benchmarks and scripts that start hosts without pytest; start_hosts(pool, n, root))."""
    # Privilege separation dir; sshd started by root refuses to run without it.
    with contextlib.suppress(PermissionError):
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    root.chmod(0o700)
    private, public = generate_ed25519()
    client_key = root / "id_ed25519"
    write_private(client_key, private)
    (root / "id_ed25519.pub").write_text(public + "\n")
    authorized = root / "authorized_keys"
    write_private(authorized, public + "\n")
    known_hosts = root / "known_hosts"
    write_private(known_hosts, "")
    home = root / "home"
    home.mkdir(mode=0o700)
    return SSHDPool(root, client_key, public, known_hosts, authorized, home)


@pytest.fixture(scope="session")
def sshd_pool(tmp_path_factory: pytest.TempPathFactory) -> SSHDPool:
    require(SSHD, "sshd")
    root = tmp_path_factory.mktemp("sshd")
    return new_pool(root)


@pytest.fixture(scope="session")
def ssh_client_key(sshd_pool: SSHDPool) -> tuple[Path, str]:
    return sshd_pool.client_key, sshd_pool.client_public


@pytest.fixture(scope="session")
def ssh_known_hosts(sshd_pool: SSHDPool) -> Path:
    return sshd_pool.known_hosts


@pytest.fixture(scope="session")
def ssh_hosts3(sshd_pool: SSHDPool) -> Iterator[list[TestHost]]:
    hosts = start_hosts(sshd_pool, 3, sshd_pool.root)
    yield hosts
    for host in hosts:
        host.kill()


@pytest.fixture
def sshd_hosts(sshd_pool: SSHDPool, tmp_path: Path) -> Iterator[Callable[[int], list[TestHost]]]:
    started: list[TestHost] = []

    def factory(count: int) -> list[TestHost]:
        parent = tmp_path / f"sshd-{len(started)}"
        parent.mkdir()
        hosts = start_hosts(sshd_pool, count, parent)
        started.extend(hosts)
        return hosts

    yield factory
    for host in started:
        host.kill()
