"""The test harness itself: what other e2e tests build on must hold."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from shipit.config.loader import load_config
from shipit.hosts.open import open_host
from tests.harness.sshd import SHIPIT_COMMAND, TestHost, write_shipit_yaml

pytestmark = pytest.mark.e2e


def test_written_shipit_yaml_reaches_every_host(ssh_hosts3: list[TestHost], tmp_path: Path) -> None:
    path = write_shipit_yaml(
        tmp_path / "shipit.yaml",
        ssh_hosts3,
        deploy_to=str(tmp_path / "app"),
        source={"dir": str(tmp_path)},
    )
    stage = load_config(path).stage("test")
    assert [h.name for h in stage.hosts] == [h.name for h in ssh_hosts3]
    assert stage.ssh.strict_host_key_checking
    for spec in stage.hosts:
        with open_host(spec, stage.ssh) as host:
            # The clean HOME from the harness, and the interpreter shipit runs with.
            out = host.run(f'echo "$HOME"; {stage.shipit_command} --help >/dev/null && echo ok')
            assert out.stdout.splitlines()[1] == "ok"
            assert out.stdout.splitlines()[0] != "/root"
    assert stage.shipit_command == SHIPIT_COMMAND


def test_redis_server_is_real(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.rpush("shipit-harness", "a", "b")
    assert client.lrange("shipit-harness", 0, -1) == [b"a", b"b"]
    client.delete("shipit-harness")
