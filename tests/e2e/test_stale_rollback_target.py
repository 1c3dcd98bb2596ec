"""A deploy rolls back to the release its hosts had when it switched them, not to the one it
read before it held the gate (chaos seed 13: another deploy switched and rolled back in between,
and the second deploy's rollback put the first one's bad release back on two hosts out of three)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml

from shipit import runner
from shipit.events import Event, EventBus, Recorder
from tests.e2e.deploy_harness import Deployer, deploy_hosts  # noqa: F401

pytestmark = pytest.mark.e2e


def test_a_rollback_after_waiting_for_the_gate_restores_what_was_live_at_the_switch(
    tmp_path: Path, deploy_hosts, monkeypatch  # noqa: F811
) -> None:
    d = Deployer(tmp_path, deploy_hosts, monkeypatch, keep_releases=5)
    r1, _ = d.deploy()
    assert r1.outcome == "success", r1.error
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    # after_release: the first deploy to get there (A) waits until B has read the hosts and is
    # waiting for the gate, then fails; the second (B) fails at once. Both roll back.
    hook = (f'if mkdir {ctl}/a 2>/dev/null; then '
            f'while [ ! -e {ctl}/b-waits ]; do sleep 0.05; done; exit 3; else exit 4; fi')
    data = yaml.safe_load(d.config.read_text())
    data["hooks"] = {"after_release": [{"local": hook}]}
    d.config.write_text(yaml.safe_dump(data, sort_keys=False))

    results: dict[str, runner.DeployResult] = {}

    def a() -> None:
        results["a"] = runner.deploy(d.stage(), runner.DeployOptions(), EventBus())

    first = threading.Thread(target=a)
    first.start()
    for _ in range(600):
        if (ctl / "a").exists():
            break
        first.join(0.1)
    assert (ctl / "a").exists(), "deploy A never reached after_release"
    # A has switched every host to its release and waits in its hook: B reads the hosts now.
    assert {d.current(h) for h in deploy_hosts} != {r1.release}

    def b_waits(event: Event) -> None:
        if event.kind == "phase.started" and event.phase == "drain_jobs":
            (ctl / "b-waits").touch()

    bus, rec = EventBus(), Recorder()
    bus.subscribe(rec)
    bus.subscribe(b_waits)
    results["b"] = runner.deploy(d.stage(), runner.DeployOptions(lock_wait=60), bus)
    first.join(120)
    ra, rb = results["a"], results["b"]
    assert ra.outcome == "rolled_back" and ra.exit_code == 1, ra.error
    assert rb.outcome == "rolled_back" and rb.exit_code == 1, rb.error
    assert "exit code 4" in (rb.error or "")
    for h in deploy_hosts:
        # What was live when B switched is r1 (A had rolled back), not A's release B saw first.
        assert d.current(h) == r1.release, (h.name, d.current(h), ra.release, rb.release)
        assert (d.root(h) / "releases" / str(ra.release) / ".shipit-bad").exists()
        assert (d.root(h) / "releases" / str(rb.release) / ".shipit-bad").exists()
