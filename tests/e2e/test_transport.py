"""The transport against real sshd processes and this machine: what a deploy relies on."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from shipit.config.model import HostSpec, SSHConfig
from shipit.errors import CommandFailed, ConfigError, HostError
from shipit.hosts.base import Host
from shipit.hosts.fanout import FanOutError, run_parallel
from shipit.hosts.local import LocalHost
from shipit.hosts.open import open_host
from shipit.hosts.ssh import SSHHost
from tests.harness.sshd import TestHost, generate_ed25519, write_private

pytestmark = pytest.mark.e2e


@pytest.fixture
def ssh_host(ssh_hosts3: list[TestHost]) -> Host:
    target = ssh_hosts3[0]
    host = open_host(target.spec(), target.ssh)
    yield host
    host.close()


@pytest.fixture
def local_host() -> Host:
    host = open_host(HostSpec(name="local", hostname="localhost", local=True), SSHConfig())
    yield host
    host.close()


@pytest.fixture(params=["ssh", "local"])
def any_host(request: pytest.FixtureRequest) -> Host:
    return request.getfixturevalue(f"{request.param}_host")


def test_open_host_picks_the_transport(ssh_host: Host, local_host: Host) -> None:
    assert isinstance(ssh_host, SSHHost)
    assert isinstance(local_host, LocalHost)


def test_run_returns_output_and_exit_code(any_host: Host) -> None:
    result = any_host.run("echo out; echo err >&2; exit 3", check=False)
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.ok


def test_check_raises_command_failed_with_output(any_host: Host) -> None:
    with pytest.raises(CommandFailed) as info:
        any_host.run("echo boom; exit 7")
    assert info.value.returncode == 7
    assert info.value.exit_code == 1
    assert "boom" in str(info.value)
    assert f"[{any_host.name}]" in str(info.value)


def test_stdin_reaches_the_command_and_stays_off_the_command_line(any_host: Host) -> None:
    secret = "s3cr3t 'quoted' $HOME\nsecond line\n"
    result = any_host.run("cat", stdin=secret)
    assert result.stdout == secret
    assert secret not in result.command
    big = "y" * (3 * 1024 * 1024 + 7)
    assert any_host.run("wc -c", stdin=big).stdout.strip() == str(len(big))


def test_command_without_stdin_does_not_read_our_terminal(any_host: Host) -> None:
    # Invoke's default would mirror sys.stdin; under pytest that is a closed capture.
    assert any_host.run("echo ready").stdout == "ready\n"


def test_lines_stream_as_they_arrive(any_host: Host) -> None:
    seen: list[str] = []
    first_line_seen = threading.Event()

    def on_line(line: str) -> None:
        seen.append(line)
        first_line_seen.set()

    # The command waits for a file the callback's caller creates after the first line,
    # so the first line must have been delivered before the command ended.
    marker = Path(f"/tmp/shipit-stream-{threading.get_ident()}-{any_host.name.replace('/', '_')}")
    marker.unlink(missing_ok=True)

    def release() -> None:
        first_line_seen.wait(10)
        marker.touch()

    thread = threading.Thread(target=release)
    thread.start()
    try:
        result = any_host.run(
            f"echo first; i=0; while [ ! -e {marker} ] && [ $i -lt 200 ]; do sleep 0.05; "
            f"i=$((i+1)); done; printf 'second\\npar'; sleep 0.2; printf 'tial\\nno newline'",
            on_line=on_line,
        )
    finally:
        thread.join()
        marker.unlink(missing_ok=True)
    assert seen == ["first", "second", "partial", "no newline"]
    assert result.stdout == "first\nsecond\npartial\nno newline"


def test_timeout_stops_the_command(any_host: Host) -> None:
    result = any_host.run("sleep 30", timeout=0.5, check=False)
    assert result.exit_code == 124
    assert "timed out" in result.stderr
    with pytest.raises(CommandFailed):
        any_host.run("sleep 30", timeout=0.5)


def test_one_connection_serves_many_commands(any_host: Host) -> None:
    for i in range(20):
        assert any_host.run(f"echo {i}").stdout == f"{i}\n"
    assert any_host.connections == 1
    assert any_host.commands == 20


def test_put_uploads_a_file(any_host: Host, tmp_path: Path) -> None:
    source = tmp_path / "archive.tar.gz"
    source.write_bytes(bytes(range(256)) * 1000)
    target = tmp_path / "uploaded.bin"
    any_host.put(str(source), str(target))
    assert target.read_bytes() == source.read_bytes()
    assert any_host.uploads == 1


def test_unknown_host_key_is_refused_with_a_hint(
    ssh_hosts3: list[TestHost], tmp_path: Path
) -> None:
    target = ssh_hosts3[1]
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    ssh = target.ssh.model_copy(update={"known_hosts": str(empty)})
    host = SSHHost(target.spec(), ssh)
    with pytest.raises(HostError) as info:
        host.run("true")
    message = str(info.value)
    assert message.startswith(f"[{target.name}] host key not known")
    assert str(empty) in message
    assert f"ssh-keyscan -p {target.port} 127.0.0.1" in message
    assert info.value.exit_code == 4
    assert host.connections == 0


def test_unknown_host_key_is_accepted_only_when_checking_is_off(
    ssh_hosts3: list[TestHost], tmp_path: Path
) -> None:
    target = ssh_hosts3[1]
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    ssh = target.ssh.model_copy(
        update={"known_hosts": str(empty), "strict_host_key_checking": False}
    )
    with SSHHost(target.spec(), ssh) as host:
        assert host.run("echo in").stdout == "in\n"
    assert empty.read_text() == ""  # never written behind the user's back


def test_changed_host_key_is_refused(sshd_hosts) -> None:
    (target,) = sshd_hosts(1)
    target.kill()
    target.new_host_key()
    target.start()
    host = SSHHost(target.spec(), target.ssh)
    with pytest.raises(HostError) as info:
        host.run("true")
    message = str(info.value)
    assert message.startswith(f"[{target.name}] HOST KEY CHANGED")
    assert message.endswith("refusing to connect")
    assert "\n" not in message


def test_host_down_is_a_host_error_and_recovers_when_back(sshd_hosts) -> None:
    (target,) = sshd_hosts(1)
    host = SSHHost(target.spec(), target.ssh.model_copy(update={"connect_timeout": 2.0}))
    assert host.run("echo up").stdout == "up\n"
    target.kill()
    with pytest.raises(HostError) as info:
        host.run("echo again")
    assert str(info.value).startswith(f"[{target.name}] ")
    with pytest.raises(HostError, match="cannot connect: connection refused"):
        host.run("echo again")
    target.start()
    assert host.run("echo back").stdout == "back\n"
    assert host.connections == 2
    host.close()


def test_key_the_host_does_not_accept_is_an_auth_failure(
    ssh_hosts3: list[TestHost], tmp_path: Path
) -> None:
    target = ssh_hosts3[2]
    other = tmp_path / "other_key"
    write_private(other, generate_ed25519()[0])
    host = SSHHost(target.spec(), target.ssh.model_copy(update={"identity_file": str(other)}))
    with pytest.raises(HostError, match=r"cannot connect: authentication failed"):
        host.run("true")


def test_missing_identity_file_is_a_config_error(
    ssh_hosts3: list[TestHost], tmp_path: Path
) -> None:
    target = ssh_hosts3[2]
    missing = tmp_path / "no_such_key"
    host = SSHHost(target.spec(), target.ssh.model_copy(update={"identity_file": str(missing)}))
    with pytest.raises(ConfigError, match=f"ssh.identity_file: {missing}: no such file"):
        host.run("true")


def test_fan_out_over_three_hosts_reports_the_one_down(sshd_hosts) -> None:
    targets = sshd_hosts(3)
    targets[1].kill()
    hosts = [SSHHost(t.spec(), t.ssh) for t in targets]
    with pytest.raises(FanOutError) as info:
        run_parallel(hosts, lambda h: h.run("hostname >/dev/null; echo ok").stdout, limit=3)
    error = info.value
    assert list(error.results) == [targets[0].name, targets[2].name]
    assert all(v == "ok\n" for v in error.results.values())
    assert list(error.errors) == [targets[1].name]
    assert error.exit_code == 4
    assert f"[{targets[1].name}] cannot connect" in str(error)
    for host in hosts:
        host.close()


def test_local_put_into_missing_dir_is_a_one_line_error(local_host: Host, tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_text("x")
    with pytest.raises(Exception) as info:
        local_host.put(str(source), str(tmp_path / "missing" / "f"))
    assert "cannot copy" in str(info.value)


def test_host_dying_mid_command_is_a_host_error_not_a_failed_command(sshd_hosts) -> None:
    (target,) = sshd_hosts(1)
    host = SSHHost(target.spec(), target.ssh)

    def on_line(line: str) -> None:
        if line == "started":
            target.kill()

    with pytest.raises(HostError, match=r"connection lost"):
        host.run("echo started; sleep 30", on_line=on_line)
    host.close()


def test_commands_from_several_threads_share_the_connection(ssh_hosts3: list[TestHost]) -> None:
    target = ssh_hosts3[0]
    host = SSHHost(target.spec(), target.ssh)
    outputs: dict[int, str] = {}
    barrier = threading.Barrier(4, timeout=10)

    def work(i: int) -> None:
        barrier.wait()
        outputs[i] = host.run(f"echo {i}").stdout

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outputs == {i: f"{i}\n" for i in range(4)}
    assert (host.connections, host.commands) == (1, 4)
    host.close()


def test_jump_host_reaches_the_target_through_the_gateway(sshd_hosts) -> None:
    gateway, target = sshd_hosts(2)
    ssh = target.ssh.model_copy(update={"jump_host": gateway.name})
    with SSHHost(target.spec(), ssh) as host:
        # The target sees the session coming from the gateway's sshd, not from us directly.
        out = host.run("echo $SSH_CONNECTION").stdout.split()
    assert out[2:] == ["127.0.0.1", str(target.port)]
    # Kill the gateway: the target becomes unreachable through it.
    gateway.kill()
    with SSHHost(target.spec(), ssh) as host, pytest.raises(HostError):
        host.run("true")


def test_ssh_config_file_supplies_hostname_port_user_and_key(
    ssh_hosts3: list[TestHost], tmp_path: Path
) -> None:
    target = ssh_hosts3[0]
    config = tmp_path / "ssh_config"
    config.write_text(
        "Host web1\n"
        "    HostName 127.0.0.1\n"
        f"    Port {target.port}\n"
        "    User root\n"
        f"    IdentityFile {target.ssh.identity_file}\n"
    )
    ssh = SSHConfig(known_hosts=target.ssh.known_hosts, config_file=str(config))
    with SSHHost(HostSpec(name="web1", hostname="web1"), ssh) as host:
        assert host.run("echo via-config").stdout == "via-config\n"


def test_close_ends_a_command_running_in_another_thread(any_host: Host) -> None:
    # What an interrupted deploy relies on: closing the hosts frees the fan-out threads.
    host = any_host
    started = threading.Event()
    outcome: list[BaseException | None] = []

    def work() -> None:
        try:
            host.run("echo started; sleep 30", on_line=lambda line: started.set())
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    assert started.wait(10)
    host.close()
    thread.join(10)
    assert not thread.is_alive()
    assert isinstance(outcome[0], HostError)


def test_unknown_jump_host_key_names_the_jump_host(sshd_hosts, tmp_path: Path) -> None:
    gateway, target = sshd_hosts(2)
    only_target = tmp_path / "known_hosts"
    only_target.write_text(f"[127.0.0.1]:{target.port} {target.public_key}\n")
    ssh = target.ssh.model_copy(update={"jump_host": gateway.name, "known_hosts": str(only_target)})
    with pytest.raises(HostError) as info:
        SSHHost(target.spec(), ssh).run("true")
    message = str(info.value)
    assert message.startswith(f"[{target.name}] host key for [127.0.0.1]:{gateway.port} not known")
    assert f"ssh-keyscan -p {gateway.port} 127.0.0.1" in message


def test_command_that_ignores_its_stdin_still_gives_its_result(any_host: Host) -> None:
    # More stdin than the SSH channel window: the command exits before it could all be sent.
    big = "x" * (4 * 1024 * 1024)
    for _ in range(3):
        assert any_host.run("echo done", stdin=big).stdout == "done\n"
    assert any_host.run("exit 3", stdin="ignored", check=False).exit_code == 3
