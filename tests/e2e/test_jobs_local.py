"""Jobs through whole deploys and the CLI on the `local` host with the SQLite store: real
`shipit deploy`, real supervisors, real signals; invariants read back from the store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from shipit.gate.base import CHECKPOINTED, FINISHED
from tests.jobs.deploy_kit import (
    SHIPIT,
    Project,
    continuation,
    items,
    kill_group,
    kill_jobs,
    sigterm_after_the_stop_request,
    start_job,
    wait_for,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def project(tmp_path: Path) -> Project:
    p = Project(tmp_path)
    p.shipit("deploy", "s", check=True)
    return p


def test_deploy_stops_a_stateful_job_and_resumes_it_once_on_the_new_release(project):
    proc, out = project.start_stateful(total=100000)
    first = project.current()
    store = project.store()
    try:
        wait_for(lambda: out.exists() and len(items(out)) >= 5, what="the job to make progress")
        res = project.shipit("deploy", "s")
        assert res.returncode == 0, res.stderr
        second = project.current()
        assert second != first
        old = next(r for r in store.list_runs() if r.job == "crunch" and r.attempt == 1)
        assert old.state == CHECKPOINTED
        new = wait_for(lambda: continuation(store, old.id), what="the restarted run")
        wait_for(lambda: sum(1 for _, a, _ in items(out) if a == 2) >= 3, what="the restarted run to work")
        assert [r.id for r in store.list_runs() if r.continues == old.id] == [new.id]
        rows = items(out)
        # Every item exactly once, in order, across the two runs: the restart took the checkpoint.
        assert [n for n, _, _ in rows] == list(range(1, len(rows) + 1))
        assert {rel for _, attempt, rel in rows if attempt == 2} == {second}
        assert {rel for _, attempt, rel in rows if attempt == 1} == {first}
        assert not store.gate().is_closed(time.time())
    finally:
        store.close()
        kill_group(proc)
        kill_jobs(project)


def test_a_deploy_killed_mid_drain_gets_its_gate_handed_back_and_the_job_restarted_once(project):
    """SIGKILL mid-drain: the local agent outlives its deploy, sees its reader gone, waits out the
    stop it asked for, reopens and restarts the job; reconciles racing it never add a second."""
    proc, out = project.start_stateful(total=100000, delay=0.02)
    store = project.store()
    deploy = None
    try:
        wait_for(lambda: out.exists() and len(items(out)) >= 3, what="the job to make progress")
        # drain_timeout 0.5 then terminate, grace 30: the stop request lands, then we kill the deploy.
        project_cfg = yaml.safe_load((project.root / "shipit.yaml").read_text())
        project_cfg["jobs"]["grace"] = 30
        (project.root / "shipit.yaml").write_text(yaml.safe_dump(project_cfg))
        deploy = project.popen("deploy", "s")
        stopped = wait_for(
            lambda: next((r for r in store.list_runs() if r.stop_requested_at), None),
            what="the deploy to ask the job to stop",
        )
        os.kill(deploy.pid, signal.SIGKILL)
        deploy.wait(timeout=10)
        wait_for(lambda: store.get_run(stopped.id).state == CHECKPOINTED, what="the checkpoint")
        wait_for(lambda: not store.gate().is_closed(time.time()), timeout=60, what="the gate to reopen")
        racers = [project.popen("jobs", "reconcile", "s") for _ in range(3)]
        for r in racers:
            r.wait(timeout=60)
            assert r.returncode == 0, r.stderr.read()  # type: ignore[union-attr]
        new = wait_for(lambda: continuation(store, stopped.id), what="the restarted run")
        assert [r.id for r in store.list_runs() if r.continues == stopped.id] == [new.id]
        wait_for(lambda: any(a == 2 for _, a, _ in items(out)), what="the restarted run to work")
        numbers = [n for n, _, _ in items(out)]
        assert numbers == list(range(1, len(numbers) + 1))
    finally:
        store.close()
        if deploy and deploy.poll() is None:
            deploy.kill()
        kill_group(proc)
        kill_jobs(project)


def test_racing_lock_acquire_exactly_one_wins(project):
    racers = [project.popen("lock", "acquire", "s", "-m", f"racer {i}") for i in range(4)]
    results = [(r.wait(timeout=60), r.stderr.read()) for r in racers]  # type: ignore[union-attr]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 3, 3, 3]
    for code, err in results:
        if code == 3:
            assert "held by" in err and "racer" in err and "expires" in err
    deploy = project.shipit("deploy", "s")
    assert deploy.returncode == 3 and "racer" in deploy.stdout + deploy.stderr


def test_pause_makes_new_jobs_wait_and_resume_lets_them_run(project):
    project.shipit("jobs", "pause", "s", "-m", "db migration", check=True)
    marker = project.root / "ran"
    late = start_job(project.url, "late", ["touch", str(marker)], host="local")
    store = project.store()
    try:
        assert "db migration" in project.shipit("status", "s").stdout
        assert not marker.exists()
        project.shipit("jobs", "resume", "s", check=True)
        late.wait(timeout=30)
        assert late.returncode == 0 and marker.exists()
        assert [r.state for r in store.list_runs() if r.job == "late"] == [FINISHED]
    finally:
        store.close()
        if late.poll() is None:
            kill_group(late)


def test_releasing_someone_elses_lock_needs_force_and_is_audited(project):
    project.shipit("lock", "acquire", "s", "-m", "bob's", env={"SHIPIT_ACTOR": "bob@box"}, check=True)
    refused = project.shipit("lock", "release", "s", env={"SHIPIT_ACTOR": "alice@box"})
    assert refused.returncode == 3 and "bob@box" in refused.stderr and "--force" in refused.stderr
    project.shipit("lock", "release", "s", "--force", env={"SHIPIT_ACTOR": "alice@box"}, check=True)
    store = project.store()
    try:
        assert not store.gate().is_closed(time.time())
        forced = [a for a in store.audit_log() if a.forced]
        assert forced and forced[0].actor == "alice@box"
    finally:
        store.close()


def test_abort_policy_fails_the_deploy_and_leaves_the_job_running(project):
    cfg = yaml.safe_load((project.root / "shipit.yaml").read_text())
    cfg["jobs"]["drain_policy"] = "abort"
    (project.root / "shipit.yaml").write_text(yaml.safe_dump(cfg))
    first = project.current()
    proc = start_job(project.url, "forever", ["sleep", "60"], host="local")
    store = project.store()
    try:
        wait_for(lambda: any(r.job == "forever" for r in store.list_runs()), what="the job")
        res = project.shipit("deploy", "s")
        assert res.returncode == 1 and "forever" in res.stdout + res.stderr
        assert project.current() == first
        assert not store.gate().is_closed(time.time())
        run = next(r for r in store.list_runs() if r.job == "forever")
        assert store.is_alive(run) and run.stop_requested_at is None
    finally:
        store.close()
        kill_group(proc)


def test_status_and_list_show_the_running_job(project):
    proc = start_job(project.url, "visible", ["sleep", "60"], host="local")
    store = project.store()
    try:
        run = wait_for(lambda: next((r for r in store.list_runs() if r.job == "visible"), None),
                       what="the job")
        status = project.shipit("status", "s")
        assert status.returncode == 0
        assert run.id in status.stdout and "running" in status.stdout
        assert project.current() in status.stdout
        listed = project.shipit("jobs", "list", "s", "--state", "running", "--json")
        assert run.id in listed.stdout
        shown = project.shipit("jobs", "show", "s", run.id)
        assert shown.returncode == 0 and "visible" in shown.stdout
        missing = project.shipit("jobs", "show", "s", "nope")
        assert missing.returncode == 2 and "nope" in missing.stderr
    finally:
        store.close()
        kill_group(proc)


def test_a_failure_after_the_drain_restarts_the_job_on_the_live_release(project):
    cfg = yaml.safe_load((project.root / "shipit.yaml").read_text())
    cfg["hooks"] = {"before_release": [{"run": "echo broken >&2; exit 1"}]}
    (project.root / "shipit.yaml").write_text(yaml.safe_dump(cfg))
    proc, out = project.start_stateful(total=100000)
    live = project.current()
    store = project.store()
    try:
        wait_for(lambda: out.exists() and len(items(out)) >= 3, what="the job to make progress")
        res = project.shipit("deploy", "s")
        assert res.returncode == 1
        assert project.current() == live
        old = next(r for r in store.list_runs() if r.job == "crunch" and r.attempt == 1)
        assert old.state == CHECKPOINTED
        wait_for(lambda: sum(1 for _, a, _ in items(out) if a == 2) >= 3, what="the restarted run")
        assert len([r for r in store.list_runs() if r.continues == old.id]) == 1
        assert {rel for _, a, rel in items(out) if a == 2} == {live}
        assert not store.gate().is_closed(time.time())
    finally:
        store.close()
        kill_group(proc)
        kill_jobs(project)


def test_dry_run_lists_the_job_and_changes_nothing(project):
    proc = start_job(project.url, "busy", ["sleep", "60"], host="local")
    store = project.store()
    try:
        run = wait_for(lambda: next((r for r in store.list_runs() if r.job == "busy"), None),
                       what="the job")
        epoch = store.gate().epoch
        res = project.shipit("deploy", "s", "--dry-run")
        assert res.returncode == 0, res.stdout + res.stderr
        assert "busy" in res.stdout + res.stderr
        assert store.gate().epoch == epoch
        again = store.get_run(run.id)
        assert store.is_alive(again) and again.stop_requested_at is None
    finally:
        store.close()
        kill_group(proc)


def test_lock_wait_lets_a_deploy_through_once_the_lock_expires(project):
    project.shipit("lock", "acquire", "s", "-m", "short hold", "--ttl", "3",
                   env={"SHIPIT_ACTOR": "bob@box"}, check=True)
    assert project.shipit("deploy", "s").returncode == 3
    res = project.shipit("deploy", "s", "--lock-wait", "60")
    assert res.returncode == 0, res.stdout + res.stderr


def test_two_deploys_at_once_one_proceeds_the_other_exits_3_naming_the_holder(project):
    cfg = yaml.safe_load((project.root / "shipit.yaml").read_text())
    cfg["jobs"].update({"drain_policy": "wait", "drain_timeout": 60})
    (project.root / "shipit.yaml").write_text(yaml.safe_dump(cfg))
    job = start_job(project.url, "busy", ["sleep", "6"], host="local")
    store = project.store()
    try:
        wait_for(lambda: any(r.job == "busy" for r in store.list_runs()), what="the job")
        deploys = [project.popen("deploy", "s", env={"SHIPIT_ACTOR": f"dev{i}@box"}) for i in range(2)]
        results = [(d.wait(timeout=120), d.stdout.read() + d.stderr.read()) for d in deploys]  # type: ignore[union-attr]
        assert sorted(code for code, _ in results) == [0, 3]
        loser = next(text for code, text in results if code == 3)
        assert "held by dev" in loser and "expires" in loser and "since" in loser
    finally:
        store.close()
        kill_group(job)


def test_a_deploy_with_grace_1_kills_a_job_ignoring_term_after_1s_and_succeeds(tmp_path):
    """jobs.grace reaches a supervisor started by hand without --grace (its own default would
    be 10 s, and the drain waits grace + 5 s): the stop request carries it."""
    project = Project(tmp_path, grace=1, drain_timeout=0.5)
    project.shipit("deploy", "s", check=True)
    log = tmp_path / "stubborn.log"
    env = {k: v for k, v in os.environ.items() if k != "SHIPIT_GRACE"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*SHIPIT, "job", "run", "--store", project.url, "--host", "local", "--name", "stubborn",
             "--", "sh", "-c", 'trap "" TERM; while :; do sleep 0.05; done'],
            stdout=out, stderr=out, start_new_session=True, env=env,
        )
    store = project.store()
    try:
        run = wait_for(lambda: next((r for r in store.list_runs() if r.job == "stubborn"), None),
                       what="the job")
        res = project.shipit("deploy", "s")
        assert res.returncode == 0, res.stdout + res.stderr
        assert proc.wait(timeout=30) == 137
        said = log.read_text()
        assert "stop requested, sent SIGTERM (SIGKILL in 1s)" in said
        assert "still running 1s after SIGTERM, sent SIGKILL" in said
        stopped = store.get_run(run.id)
        assert stopped.state == "interrupted" and stopped.stop_grace == 1
        # ...and restarted like any stopped job (its supervisor claims the continuation as it starts)
        wait_for(lambda: continuation(store, run.id), what="the restarted run")
    finally:
        store.close()
        if proc.poll() is None:
            kill_group(proc)
        kill_jobs(project)


def test_a_job_waiting_at_a_paused_gate_is_shown_until_resume_lets_it_run(project):
    project.shipit("jobs", "pause", "s", "-m", "db migration", check=True)
    marker = project.root / "ran"
    late = start_job(project.url, "late", ["touch", str(marker)], host="local")
    store = project.store()
    try:
        entry = wait_for(lambda: next(iter(store.list_waiting()), None), what="the waiting job")
        status = project.shipit("status", "s")
        assert status.returncode == 0, status.stderr
        line = next(x for x in status.stdout.splitlines() if entry.id in x)
        assert "late" in line and "waiting" in line and "host=local" in line
        assert f"pid={late.pid}" in line
        listed = project.shipit("jobs", "list", "s", "--state", "waiting", "--json")
        assert listed.returncode == 0, listed.stderr
        [shown] = json.loads(listed.stdout)
        assert (shown["id"], shown["job"], shown["state"]) == (entry.id, "late", "waiting")
        assert store.list_runs() == [] and not marker.exists()
        project.shipit("jobs", "resume", "s", check=True)
        assert late.wait(timeout=30) == 0 and marker.exists()
        assert [(r.id, r.state) for r in store.list_runs()] == [(entry.id, FINISHED)]
        again = project.shipit("jobs", "list", "s", "--state", "waiting", "--json")
        assert json.loads(again.stdout) == []
        assert "waiting" not in project.shipit("status", "s").stdout
    finally:
        store.close()
        if late.poll() is None:
            kill_group(late)


def test_lock_log_shows_the_audit_trail_newest_first(project):
    project.shipit("lock", "acquire", "s", "-m", "bob's", env={"SHIPIT_ACTOR": "bob@box"}, check=True)
    project.shipit("lock", "acquire", "s", "-m", "hotfix", "--force",
                   env={"SHIPIT_ACTOR": "alice@box"}, check=True)
    project.shipit("lock", "release", "s", env={"SHIPIT_ACTOR": "alice@box"}, check=True)

    res = project.shipit("lock", "log", "s", "-n", "3", "--json", check=True)
    entries = json.loads(res.stdout)["local"]
    assert [(e["action"], e["actor"], e["forced"], e["reason"]) for e in entries] == [
        ("reopen", "alice@box", False, ""),
        ("force-close", "alice@box", True, "hotfix"),
        ("close", "bob@box", False, "bob's"),
    ]
    assert entries[0]["epoch"] == entries[1]["epoch"] == entries[2]["epoch"] + 1
    assert all(e["time"].endswith("Z") and "T" in e["time"] for e in entries)

    text = project.shipit("lock", "log", "s", "-n", "2", check=True).stdout.splitlines()
    assert text[0] == "local:" and len(text) == 3
    assert text[1].split()[1:5] == ["reopen", "alice@box", "epoch", str(entries[0]["epoch"])]
    assert text[2].split()[1:] == ["force-close", "alice@box", "epoch",
                                   str(entries[1]["epoch"]), "forced", "hotfix"]


def test_lock_log_on_a_host_without_a_store_creates_none(tmp_path):
    p = Project(tmp_path)
    res = p.shipit("lock", "log", "s", check=True)
    assert res.stdout == "local:\n  (no entries)\n"
    assert not (p.deploy_to / "shared").exists()


def test_sigterm_mid_drain_on_a_local_host_hands_the_gate_back_and_restarts_the_stopped_job(tmp_path):
    """The local agent gets SIGTERM with its interrupted deploy (its process group is ended):
    it must not die holding the gate for the TTL (60 s) with the job it stopped left down."""
    project = Project(tmp_path, lease_ttl=60, drain_timeout=0.5, grace=10)
    sigterm_after_the_stop_request(project, reopened_within=20)
