"""`shipit hosts trust` against real sshd hosts, strict host key checking on throughout."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from shipit.config.model import SSHConfig
from shipit.errors import HostError
from shipit.hosts.ssh import SSHHost
from tests.harness.sshd import TestHost, write_shipit_yaml

SHIPIT = [sys.executable, "-m", "shipit"]


def fp(public_line: str) -> str:
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def setup(tmp_path: Path, hosts: list[TestHost]) -> tuple[Path, Path]:
    known = tmp_path / "known_hosts"  # empty: none of the hosts is known yet
    cfg = write_shipit_yaml(tmp_path / "shipit.yaml", hosts, deploy_to=str(tmp_path / "app"),
                            source={"dir": str(tmp_path)})
    text = cfg.read_text().replace(str(hosts[0].pool.known_hosts), str(known))
    cfg.write_text(text)
    return cfg, known


def shipit(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SHIPIT, "--config", str(cfg), *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, check=False)


def reaches(host: TestHost, known: Path) -> bool:
    ssh = SSHConfig(identity_file=host.ssh.identity_file, known_hosts=str(known), connect_timeout=5.0)
    h = SSHHost(host.spec(), ssh)
    try:
        return h.run("true", check=False).exit_code == 0
    except HostError:
        return False
    finally:
        h.close()


def test_trust_shows_fingerprints_asks_and_then_hosts_connect(sshd_hosts, tmp_path: Path) -> None:
    hosts = sshd_hosts(2)
    cfg, known = setup(tmp_path, hosts)
    before = shipit(cfg, "status", "test")
    assert before.returncode == 4 and "not known" in before.stderr
    asked = shipit(cfg, "hosts", "trust", "test")  # no terminal and no --yes: nothing written
    assert asked.returncode == 2 and "--yes" in asked.stderr
    for h in hosts:
        assert f"{h.name}  ssh-ed25519  {fp(h.public_key)}  NEW" in asked.stdout
    assert not known.exists()
    res = shipit(cfg, "hosts", "trust", "test", "--yes")
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(os.stat(known).st_mode) == 0o600
    assert all(reaches(h, known) for h in hosts)
    again = shipit(cfg, "hosts", "trust", "test", "--yes", "--json")
    assert again.returncode == 0
    assert {h["status"] for h in json.loads(again.stdout)["hosts"]} == {"known"}
    assert len(known.read_text().splitlines()) == 2


def test_a_changed_key_is_refused_unless_replace_which_is_loud(sshd_hosts, tmp_path: Path) -> None:
    hosts = sshd_hosts(2)
    cfg, known = setup(tmp_path, hosts)
    assert shipit(cfg, "hosts", "trust", "test", "--yes").returncode == 0
    old_fp = fp(hosts[0].public_key)
    hosts[0].kill()
    hosts[0].new_host_key()
    hosts[0].start()
    saved = known.read_text()
    refused = shipit(cfg, "hosts", "trust", "test", "--yes")
    assert refused.returncode == 4
    assert "HOST KEY CHANGED" in refused.stderr and "--replace" in refused.stderr
    assert f"CHANGED (known_hosts has ssh-ed25519 {old_fp})" in refused.stdout
    assert known.read_text() == saved  # nothing written, the other host's line included
    assert not reaches(hosts[0], known)
    res = shipit(cfg, "hosts", "trust", "test", "--yes", "--replace")
    assert res.returncode == 0, res.stderr
    assert "REPLACING the host key" in res.stderr and fp(hosts[0].public_key) in res.stderr
    assert all(reaches(h, known) for h in hosts)
    assert old_fp not in shipit(cfg, "hosts", "trust", "test", "--yes").stdout
    assert len(known.read_text().splitlines()) == 2


def test_an_unreachable_host_is_a_one_line_exit_4(sshd_hosts, tmp_path: Path) -> None:
    hosts = sshd_hosts(1)
    cfg, known = setup(tmp_path, hosts)
    hosts[0].kill()
    res = shipit(cfg, "hosts", "trust", "test", "--yes")
    assert res.returncode == 4
    assert len(res.stderr.strip().splitlines()) == 1 and "cannot reach" in res.stderr
    assert not known.exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
