"""Deploys to three real sshd hosts: layout, keep N, shared links, history, budget, failures."""

from __future__ import annotations

import json
import stat

import pytest

from tests.e2e.deploy_harness import Deployer, HomeHost, deploy_hosts, tree  # noqa: F401

pytestmark = pytest.mark.e2e


@pytest.fixture
def project(tmp_path, deploy_hosts, monkeypatch) -> Deployer:  # noqa: F811
    d = Deployer(tmp_path, deploy_hosts, monkeypatch, keep_releases=2,
                 linked_files=["config/app.env"], linked_dirs=["log"])
    for h in deploy_hosts:
        (d.root(h) / "shared" / "config").mkdir(parents=True)
        (d.root(h) / "shared" / "config" / "app.env").write_text(f"secret for {h.name}\n")
    return d


def test_first_deploy_redeploys_keep_n_shared_links_history_and_budget(project: Deployer) -> None:
    first, _ = project.deploy()
    assert first.outcome == "success" and first.exit_code == 0, first.error
    for h in project.hosts:
        rel = project.root(h) / "current"
        assert project.current(h) == first.release
        assert (rel / "app.py").read_text() == "VERSION = '1'\n"
        assert (rel / "REVISION").read_text().strip() == first.revision
        # The shared file replaced the archive's copy, and the shared dir is linked in.
        assert (rel / "config" / "app.env").read_text() == f"secret for {h.name}\n"
        assert (rel / "log").is_symlink()
    (project.app / "app.py").write_text("VERSION = '2'\n")
    second, _ = project.deploy()
    third, _ = project.deploy()
    assert second.outcome == third.outcome == "success"
    assert second.revision != first.revision and third.revision == second.revision
    for h in project.hosts:
        # keep_releases=2: the oldest is gone, the live one and the rollback target stay.
        assert project.releases(h) == [second.release, third.release]
        assert project.current(h) == third.release
        assert (project.root(h) / "current" / "app.py").read_text() == "VERSION = '2'\n"
        log = (project.root(h) / "revisions.log").read_text().splitlines()
        assert len(log) == 3 and log[-1].endswith(f"deployed as release {third.release} by {third_actor(project)}")
        assert oct((project.root(h) / ".shipit" / "history.jsonl").stat().st_mode & 0o777) == "0o600"
    # Budget: one connection and at most five remote commands per host for a redeploy.
    for host in project.opened:
        assert host.connections == 1, host.name
        assert host.commands <= 5, (host.name, host.commands)
    from shipit import runner
    from shipit.events import EventBus

    records = runner.read_history(project.stage(), EventBus())
    assert [r["deploy_id"] for r in records] == [third.deploy_id, second.deploy_id, first.deploy_id]
    assert {r["outcome"] for r in records} == {"success"}
    assert records[0]["hosts"] == [h.name for h in project.hosts]
    # The final record rode on the agent restart (no extra command): every phase, the real end.
    for rec, result in zip(records, (third, second, first), strict=True):
        assert set(rec["durations"]) == {"pre_deploy", "drain_jobs", "release", "restart_jobs"}
        for phase in ("pre_deploy", "drain_jobs", "release"):
            assert rec["durations"][phase] == round(result.durations[phase], 3), phase
        # Counted until the agent wrote it: its exit and the return trip are not in it.
        assert 0 < rec["durations"]["restart_jobs"] <= result.durations["restart_jobs"] + 0.002
        assert rec["finished"] - rec["started"] == pytest.approx(sum(rec["durations"].values()), abs=0.5)
    for h in project.hosts:
        lines = (project.root(h) / ".shipit" / "history.jsonl").read_text().splitlines()
        # Per deploy: the switch's provisional record, then the final one.
        assert [json.loads(line)["seq"] for line in lines] == [1, 2] * 3


def third_actor(project: Deployer) -> str:
    from shipit.runner import default_actor

    return default_actor()


def test_dry_run_touches_no_host(project: Deployer) -> None:
    project.deploy()
    before = {h.name: tree(h.home) for h in project.hosts}
    result, rec = project.deploy(dry_run=True)
    assert result.outcome == "dry_run" and result.exit_code == 0
    assert {h.name: tree(h.home) for h in project.hosts} == before
    shown = [e.data["command"] for e in rec.of("host.command")]
    assert any("mv -T" in c for c in shown) and any('mkdir "$r"' in c for c in shown)


def test_one_host_down_switches_nothing(project: Deployer, tmp_path, monkeypatch) -> None:  # noqa: ARG001
    good, _ = project.deploy()
    # A fourth host nobody listens on: unreachable.
    from tests.harness.sshd import free_port

    down = f"root@127.0.0.1:{free_port()}"
    import yaml

    data = yaml.safe_load(project.config.read_text())
    data["stages"]["test"]["hosts"].append(down)
    project.config.write_text(yaml.safe_dump(data, sort_keys=False))
    result, rec = project.deploy()
    assert result.outcome == "failed" and result.exit_code == 4
    assert down in (result.error or "")
    for h in project.hosts:
        assert project.current(h) == good.release
        assert project.releases(h) == [good.release]
    assert any(e.host == down for e in rec.of("host.failed"))


def test_failing_hook_before_switch_leaves_no_partial_release(tmp_path, deploy_hosts, monkeypatch) -> None:  # noqa: F811
    trap = deploy_hosts[1].name
    # The hook pre-creates the new release's directory on ONE host, so that host's prepare fails
    # (mkdir without -p) while the other hosts' prepares succeed: partial releases to clean up.
    d = Deployer(tmp_path, deploy_hosts, monkeypatch,
                 stage_extra={"roles": {"trap": [trap]}},
                 hooks={"before_release": [{"run": 'mkdir -p "$SHIPIT_DEPLOY_TO/releases/$SHIPIT_RELEASE"', "roles": ["trap"]}]})
    good, _ = _deploy_without_hook(d)
    result, rec = d.deploy()
    assert result.outcome == "failed" and result.exit_code == 1
    assert f"[{trap}]" in (result.error or "")
    for h in deploy_hosts:
        assert d.current(h) == good.release
        assert d.releases(h) == [good.release], h.name
        assert not list((d.root(h) / ".shipit").glob("upload-*"))
        lines = (d.root(h) / ".shipit" / "history.jsonl").read_text().splitlines()
        assert json.loads(lines[-1])["outcome"] == "failed"


def _deploy_without_hook(d: Deployer):  # type: ignore[no-untyped-def]
    text = d.config.read_text()
    import yaml

    data = yaml.safe_load(text)
    hooks = data.pop("hooks")
    d.config.write_text(yaml.safe_dump(data, sort_keys=False))
    out = d.deploy()
    data["hooks"] = hooks
    d.config.write_text(yaml.safe_dump(data, sort_keys=False))
    assert out[0].outcome == "success", out[0].error
    return out


def test_check_flags_hosts_on_different_releases(project: Deployer) -> None:
    """What a host lost after the switch leaves behind: one host still on another release.
    `shipit check` must not call that stage ready, and the next deploy makes the hosts agree."""
    from shipit import runner
    from shipit.events import EventBus

    first, _ = project.deploy()
    (project.app / "app.py").write_text("VERSION = '2'\n")
    second, _ = project.deploy()
    assert first.outcome == second.outcome == "success"
    assert all(c.ok for c in runner.check(project.stage(), EventBus()))
    odd = project.hosts[0]
    link = project.root(odd) / "current"
    link.unlink()
    link.symlink_to(f"releases/{first.release}")
    checks = runner.check(project.stage(), EventBus())
    assert not any(c.ok for c in checks)
    assert all("serve different releases" in " ".join(c.problems) for c in checks)
    assert f"{odd.name}: {first.release}" in checks[0].problems[-1]
    third, _ = project.deploy()
    assert third.outcome == "success", third.error
    assert {project.current(h) for h in project.hosts} == {third.release}
    assert all(c.ok for c in runner.check(project.stage(), EventBus()))


def _history_lines(d: Deployer, h: HomeHost) -> list[dict]:  # type: ignore[type-arg]
    text = (d.root(h) / ".shipit" / "history.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_central_store_hosts_without_runs_get_the_final_record_in_one_append(
    tmp_path, deploy_hosts, monkeypatch, pg_dsn  # noqa: F811
) -> None:
    """A central store drains in-process and calls the agent only where runs must restart: the
    other hosts get the final record in one plain append, still within the budget."""
    import yaml

    d = Deployer(tmp_path, deploy_hosts, monkeypatch)
    data = yaml.safe_load(d.config.read_text())
    data["jobs"]["store"] = "postgres"
    d.config.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("SHIPIT_DSN", pg_dsn)
    d.deploy()
    result, rec = d.deploy()
    assert result.outcome == "success", result.error
    for host in d.opened:
        assert host.connections == 1, host.name
        # facts, prepare, switch, the record: no agent drain or restart without runs.
        assert host.commands == 4, (host.name, host.commands)
    appends = [e for e in rec.of("host.command") if e.phase == "restart_jobs"]
    assert sorted(e.host for e in appends) == sorted(h.name for h in deploy_hosts)
    for h in deploy_hosts:
        last = _history_lines(d, h)[-1]
        assert last["deploy_id"] == result.deploy_id and last["seq"] == 2
        assert set(last["durations"]) == {"pre_deploy", "drain_jobs", "release", "restart_jobs"}
        assert last["durations"]["restart_jobs"] <= result.durations["restart_jobs"] + 0.002
        assert stat.S_IMODE((d.root(h) / ".shipit" / "history.jsonl").stat().st_mode) == 0o600


def test_a_failure_after_the_final_record_is_superseded_by_the_rollback(
    tmp_path, deploy_hosts, monkeypatch  # noqa: F811
) -> None:
    d = Deployer(tmp_path, deploy_hosts, monkeypatch,
                 hooks={"after_restart_jobs": [{"run": "echo late trouble >&2; exit 3"}]})
    good, _ = _deploy_without_hook(d)
    result, _ = d.deploy()
    assert result.outcome == "rolled_back", result.error
    for h in deploy_hosts:
        assert d.current(h) == good.release
        lines = [r for r in _history_lines(d, h) if r["deploy_id"] == result.deploy_id]
        # switch, final (written by the agent restart), then the rollback's record.
        assert [(r["seq"], r["outcome"]) for r in lines] == [(1, "success"), (2, "success"), (3, "rolled_back")]
    from shipit import runner
    from shipit.events import EventBus

    merged = runner.read_history(d.stage(), EventBus())
    assert [(r["deploy_id"], r["outcome"]) for r in merged] == [
        (result.deploy_id, "rolled_back"), (good.deploy_id, "success")]
    # Written by the switch back, while the rollback phase runs: the phases before it are all in.
    assert set(merged[0]["durations"]) == {"pre_deploy", "drain_jobs", "release", "restart_jobs"}
