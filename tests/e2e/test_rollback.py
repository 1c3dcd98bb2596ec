"""Failures after the switch, `shipit rollback`, `--to`, and Ctrl-C on a real CLI process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from tests.e2e.deploy_harness import Deployer, deploy_hosts, tree  # noqa: F401

pytestmark = pytest.mark.e2e


def set_hooks(d: Deployer, hooks: dict | None) -> None:
    data = yaml.safe_load(d.config.read_text())
    data.pop("hooks", None)
    if hooks:
        data["hooks"] = hooks
    d.config.write_text(yaml.safe_dump(data, sort_keys=False))


def bad(d: Deployer, host, release: str) -> bool:  # type: ignore[no-untyped-def]
    return (d.root(host) / "releases" / release / ".shipit-bad").exists()


def test_failure_after_switch_rolls_every_host_back_and_rollback_skips_bad(tmp_path, deploy_hosts, monkeypatch) -> None:  # noqa: F811
    d = Deployer(tmp_path, deploy_hosts, monkeypatch, keep_releases=5,
                 stage_extra={"roles": {"flaky": [deploy_hosts[2].name]}})
    r1, _ = d.deploy()
    r2, _ = d.deploy()
    set_hooks(d, {"after_release": [{"run": "echo boom; exit 3", "roles": ["flaky"]}]})
    r3, rec = d.deploy()
    assert r3.outcome == "rolled_back" and r3.exit_code == 1
    assert "exit code 3" in (r3.error or "") and "boom" in (r3.error or "")
    for h in deploy_hosts:
        assert d.current(h) == r2.release  # every host, not only the one whose hook failed
        assert bad(d, h, r3.release)
        last = json.loads((d.root(h) / ".shipit" / "history.jsonl").read_text().splitlines()[-1])
        assert (last["deploy_id"], last["outcome"]) == (r3.deploy_id, "rolled_back")
    set_hooks(d, None)
    back, _ = d.rollback()
    assert back.outcome == "success", back.error
    assert back.release == r1.release
    for h in deploy_hosts:
        assert d.current(h) == r1.release and bad(d, h, r2.release)
    r4, _ = d.deploy()
    # Releases now: r1, r2 (bad), r3 (bad), r4 (current): rollback must skip both bad ones.
    again, _ = d.rollback()
    assert again.release == r1.release, again.error
    to, _ = d.rollback(to=r4.release)
    assert to.outcome == "success" and all(d.current(h) == r4.release for h in deploy_hosts)
    from shipit import runner
    from shipit.events import EventBus

    outcomes = {r["deploy_id"]: r["outcome"] for r in runner.read_history(d.stage(), EventBus())}
    assert outcomes[r3.deploy_id] == "rolled_back" and outcomes[to.deploy_id] == "success"


def test_rollback_refuses_missing_target_and_disagreeing_hosts(tmp_path, deploy_hosts, monkeypatch) -> None:  # noqa: F811
    d = Deployer(tmp_path, deploy_hosts, monkeypatch)
    r1, _ = d.deploy()
    r2, _ = d.deploy()
    before = {h.name: tree(d.root(h)) for h in deploy_hosts}
    # A --to that is not there is a usage error (exit 2): nothing switched, nothing marked bad,
    # the gate never closed; the message lists what could be rolled back to.
    missing, rec = d.rollback(to="20000101000000000000")
    assert missing.outcome == "failed" and missing.exit_code == 2
    first = deploy_hosts[0].name
    assert missing.error == (
        f"[{first}] release 20000101000000000000 does not exist in {d.stage().deploy_to}/releases"
        f" (releases: {r1.release}, {r2.release})"
    )
    assert not rec.of("gate.closed")
    # Half-made (no REVISION): there, but not a release to go back to.
    (d.root(deploy_hosts[0]) / "releases" / "20000101000000000001").mkdir()
    half, _ = d.rollback(to="20000101000000000001")
    assert half.exit_code == 2
    assert half.error == (
        f"[{first}] release 20000101000000000001 is incomplete (no REVISION: it never finished)"
        f" in {d.stage().deploy_to}/releases (releases: {r1.release}, {r2.release})"
    )
    (d.root(deploy_hosts[0]) / "releases" / "20000101000000000001").rmdir()
    # The real CLI: exit 2, the one line, and the stage exactly as it was.
    cli = subprocess.run(
        [sys.executable, "-m", "shipit", "--config", str(d.config), "rollback", "test", "--to", "nosuch", "--yes"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120, check=False,
    )
    assert cli.returncode == 2, cli.stdout + cli.stderr
    assert f"[{first}] release nosuch does not exist in {d.stage().deploy_to}/releases (releases: {r1.release}, {r2.release})" in cli.stdout
    assert "Traceback" not in cli.stdout + cli.stderr
    after = {h.name: tree(d.root(h)) for h in deploy_hosts}
    assert {n: {k: v for k, v in t.items() if not k.startswith(".shipit")} for n, t in after.items()} == {
        n: {k: v for k, v in t.items() if not k.startswith(".shipit")} for n, t in before.items()
    }
    assert all(not bad(d, h, r) for h in deploy_hosts for r in (r1.release, r2.release))
    # One host's older release is gone: the hosts no longer agree on the target.
    os.rename(d.root(deploy_hosts[0]) / "releases" / r1.release, d.root(deploy_hosts[0]) / "releases" / "19990101000000000000")
    split, _ = d.rollback()
    assert split.outcome == "failed" and "disagree" in (split.error or "")
    assert all(d.current(h) == r2.release for h in deploy_hosts)
    # The gate was reopened every time: a deploy goes straight through.
    after_all, _ = d.deploy()
    assert after_all.outcome == "success", after_all.error


def test_ctrl_c_during_a_slow_hook_leaves_a_complete_release(tmp_path, deploy_hosts, monkeypatch) -> None:  # noqa: F811
    d = Deployer(tmp_path, deploy_hosts, monkeypatch)
    good, _ = d.deploy()
    marker = tmp_path / "hook-started"
    set_hooks(d, {"after_release": [{"local": f"touch {marker} && sleep 60"}]})
    proc = subprocess.Popen(
        [sys.executable, "-m", "shipit", "--config", str(d.config), "deploy", "test", "--yes"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )
    # Wait for the hook to start (the release is switched by then), then interrupt.
    import time

    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    for h in deploy_hosts:
        assert d.current(h) == good.release
        assert (d.root(h) / "current" / "REVISION").exists()
        new = [r for r in d.releases(h) if r != good.release]
        assert all(bad(d, h, r) for r in new)  # the interrupted release is never rolled back to
    set_hooks(d, None)
    after, _ = d.deploy()
    assert after.outcome == "success", after.error
    assert all(d.current(h) == after.release for h in deploy_hosts)
