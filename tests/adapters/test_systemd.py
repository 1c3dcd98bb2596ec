"""systemd: exact systemctl command lines, then whole deploys against a stand-in `systemctl`
that runs real processes (this machine has no running systemd: `systemctl is-system-running`
says offline)."""

from __future__ import annotations

import time
from pathlib import Path

from shipit.adapters.systemd import (
    is_active_command,
    parse_is_active,
    pause_commands,
    resume_commands,
    systemctl,
    unit_name,
)
from tests.adapters.conftest import FakeSystemd, adapter_events

# A worker that finishes its current "job" when told to stop; each start leaves a line.
WORKER = "echo start >> {log}; trap 'sleep 0.2; echo stopped >> {log}; exit 0' TERM; while :; do sleep 0.05; done"
# A timer's run that takes long; it ignores nothing, so the stop's SIGTERM ends it.
REPORT = "echo start >> {log}; sleep 30"


def test_command_lines():
    assert pause_commands("systemctl", False, ["report.timer"], ["worker.service", "w 2.service"]) == [
        "systemctl stop report.timer",
        "systemctl stop --no-block worker.service 'w 2.service'",
    ]
    assert resume_commands("systemctl", True, ["report.timer"], ["worker.service"]) == [
        "systemctl --user start report.timer worker.service"
    ]
    assert is_active_command("/bin/systemctl", True, ["a.service"]) == "/bin/systemctl --user is-active a.service || true"
    assert systemctl("systemctl", False, "kill", ["a.service"], "--signal=SIGKILL") == "systemctl kill --signal=SIGKILL a.service"
    assert unit_name("worker", "service") == "worker.service" and unit_name("x.timer", "timer") == "x.timer"
    assert parse_is_active(["a", "b"], "active\ninactive\n") == {"a": "active", "b": "inactive"}


def _project(project_factory, fake: FakeSystemd, tmp_path: Path, **adapter):
    fake.service("worker", WORKER.format(log=tmp_path / "worker.log"))
    fake.timer("report", REPORT.format(log=tmp_path / "report.log"))
    fake.ctl("start", "report.timer", "worker.service")
    cfg = {"type": "systemd", "timers": ["report"], "units": ["worker"], **adapter}
    return project_factory(jobs={"adapters": [cfg]})


def _wait(pred, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (value := pred()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_deploy_stops_timer_and_worker_then_starts_them_and_reruns_the_interrupted_run_once(
    project_factory, fake_systemd: FakeSystemd, tmp_path: Path
):
    p = _project(project_factory, fake_systemd, tmp_path)
    fake_systemd.ctl("start", "report.service")  # the timer fired: a run is under way
    old_worker = fake_systemd.pid("worker.service")
    result, rec = p.deploy()
    assert result.outcome == "success", result.error
    # The worker drained (finished its job on TERM) and runs again; the timer is back.
    assert _lines(tmp_path / "worker.log") == ["start", "stopped", "start"]
    assert fake_systemd.state("worker.service") == "active"
    assert fake_systemd.pid("worker.service") != old_worker
    assert fake_systemd.state("report.timer") == "active"
    # The report run outlived drain_timeout, was stopped, and was started again exactly once.
    _wait(lambda: len(_lines(tmp_path / "report.log")) == 2, "the rerun")
    assert fake_systemd.state("report.service") == "active"
    stopped = adapter_events(rec, "job.stopped")
    assert [e["item"]["id"] for e in stopped] == ["report.service"]
    assert [e["item"]["id"] for e in adapter_events(rec, "job.restarted")] == ["report.service"]
    assert [e["adapter"] for e in adapter_events(rec, "adapter.paused")] == ["systemd"]
    assert [e["adapter"] for e in adapter_events(rec, "adapter.resumed")] == ["systemd"]
    calls = [c for c in fake_systemd.calls() if not c.startswith("is-active")]
    assert calls == [
        "start report.timer worker.service",  # the test's own setup
        "start report.service",
        "stop report.timer",
        "stop --no-block worker.service",
        "stop --no-block report.service",
        "start report.timer worker.service",
        "start --no-block report.service",
    ]


def test_a_failed_deploy_starts_timer_and_worker_again(project_factory, fake_systemd, tmp_path):
    p = _project(project_factory, fake_systemd, tmp_path)
    p.data["hooks"] = {"before_release": [{"local": "exit 7"}]}
    p.write()
    result, rec = p.deploy()
    assert result.outcome == "failed"
    assert fake_systemd.state("report.timer") == "active"
    assert fake_systemd.state("worker.service") == "active"
    assert _lines(tmp_path / "worker.log") == ["start", "stopped", "start"]
    assert [e["adapter"] for e in adapter_events(rec, "adapter.resumed")] == ["systemd"]


def test_abort_policy_fails_the_deploy_and_leaves_the_run_alone(project_factory, fake_systemd, tmp_path):
    p = _project(project_factory, fake_systemd, tmp_path, drain_policy="abort", drain_timeout=0.3)
    fake_systemd.ctl("start", "report.service")
    run_pid = fake_systemd.pid("report.service")
    result, _ = p.deploy()
    assert result.outcome == "failed"
    assert "adapter systemd" in (result.error or "") and "report.service" in (result.error or "")
    assert "drain_policy abort" in (result.error or "")
    assert not (p.deploy_to / "current").exists()
    assert fake_systemd.pid("report.service") == run_pid and fake_systemd.state("report.service") == "active"
    assert fake_systemd.state("report.timer") == "active"
    assert fake_systemd.state("worker.service") == "active"


def test_dry_run_lists_running_units_and_changes_nothing(project_factory, fake_systemd, tmp_path):
    p = _project(project_factory, fake_systemd, tmp_path, user=True)
    worker = fake_systemd.pid("worker.service")
    result, rec = p.deploy(dry_run=True)
    assert result.exit_code == 0, result.error
    assert {c.split()[0] for c in fake_systemd.calls()[1:]} == {"--user"}
    assert all(" is-active " in f" {c} " for c in fake_systemd.calls()[1:])
    assert fake_systemd.pid("worker.service") == worker and fake_systemd.state("report.timer") == "active"
    shown = [e.data["command"] for e in rec.of("host.command") if "systemctl" in e.data["command"]]
    assert "systemctl --user stop report.timer" in shown
    assert [e["item"]["id"] for e in adapter_events(rec, "job.running")] == ["worker.service"]


def test_the_worked_example_pauses_with_sudo_and_the_named_units():
    from shipit.adapters.registry import build_adapters
    from shipit.config.loader import load_config

    example = Path(__file__).parents[2] / "examples" / "adapters" / "systemd" / "shipit.yaml"
    (adapter,) = build_adapters(load_config(example).stage("prod"))
    assert pause_commands(adapter.binary, adapter.user, adapter.timers, adapter.units) == [
        "sudo -n systemctl stop shop-report.timer",
        "sudo -n systemctl stop --no-block shop-worker.service",
    ]
    assert adapter.kinds == {"shop-report.service": "timer", "shop-worker.service": "unit"}


def test_over_ssh_with_user_units(project_factory, fake_systemd: FakeSystemd, sshd_hosts, tmp_path):
    """The same drain through a real sshd: commands reach the host's shell as written (the
    stand-in is named with its state dir, since an SSH session does not carry our env)."""
    from tests.harness.sshd import ssh_section

    host = sshd_hosts(1)[0]
    fake_systemd.service("worker", WORKER.format(log=tmp_path / "worker.log"))
    fake_systemd.ctl("start", "worker.service")
    binary = f"FAKE_SYSTEMD={fake_systemd.root} {fake_systemd.bin / 'systemctl'}"
    p = project_factory(
        hosts=[host.name], ssh=ssh_section([host]),
        jobs={"adapters": [{"type": "systemd", "units": ["worker"], "user": True, "systemctl": binary}]},
    )
    result, rec = p.deploy()
    assert result.outcome == "success", result.error
    assert _lines(tmp_path / "worker.log") == ["start", "stopped", "start"]
    assert fake_systemd.state("worker.service") == "active"
    assert [c for c in fake_systemd.calls() if "is-active" not in c] == [
        "start worker.service", "--user stop --no-block worker.service", "--user start worker.service",
    ]
    assert {e.host for e in rec.of("adapter.paused")} == {None}
    assert {e.host for e in rec.of("host.command") if "systemctl" in e.data["command"]} == {host.name}
