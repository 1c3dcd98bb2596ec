"""Jobs over real SSH (sshd on 127.0.0.1, strict host keys) with the per-host file store: the
deploy reaches the store only through `shipit agent` on the host."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from shipit.gate.base import CHECKPOINTED
from tests.harness.sshd import ssh_section
from tests.jobs.deploy_kit import (
    Project,
    continuation,
    items,
    kill_group,
    kill_jobs,
    sigterm_after_the_stop_request,
    sigterm_while_the_drain_waits,
    wait_for,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def project(tmp_path: Path, ssh_hosts3) -> Project:
    host = ssh_hosts3[0]
    p = Project(tmp_path, store="file", hosts=[host.name], ssh=ssh_section([host]))
    p.shipit("deploy", "s", check=True)
    return p


def test_deploy_over_ssh_stops_and_restarts_the_job_once(project):
    proc, out = project.start_stateful(total=100000)
    first = project.current()
    store = project.store()
    try:
        wait_for(lambda: out.exists() and len(items(out)) >= 5, what="the job to make progress")
        res = project.shipit("deploy", "s")
        assert res.returncode == 0, res.stdout + res.stderr
        second = project.current()
        old = next(r for r in store.list_runs() if r.job == "crunch" and r.attempt == 1)
        assert old.state == CHECKPOINTED
        wait_for(lambda: sum(1 for _, a, _ in items(out) if a == 2) >= 3, what="the restarted run")
        new = continuation(store, old.id)
        assert new is not None and [r.id for r in store.list_runs() if r.continues == old.id] == [new.id]
        rows = items(out)
        assert [n for n, _, _ in rows] == list(range(1, len(rows) + 1))
        assert {rel for _, a, rel in rows if a == 2} == {second} and second != first
    finally:
        kill_group(proc)
        kill_jobs(project)
        store.close()


def test_a_lock_over_ssh_stops_the_next_deploy_with_exit_3(project):
    project.shipit("lock", "acquire", "s", "-m", "release freeze", check=True)
    res = project.shipit("deploy", "s")
    assert res.returncode == 3
    assert "release freeze" in res.stdout + res.stderr
    status = json.loads(project.shipit("lock", "status", "s", "--json").stdout)
    assert [g["reason"] for g in status.values()] == ["release freeze"]
    project.shipit("lock", "release", "s", check=True)
    assert project.shipit("deploy", "s").returncode == 0


def test_killing_the_deploy_over_ssh_hands_the_gate_back_and_restarts_once(project):
    """SIGKILL mid-drain: the host agent loses its reader, waits out the stop it asked for,
    reopens the gate and restarts the stopped run itself; later reconciles find nothing to do."""
    proc, out = project.start_stateful(total=100000)
    store = project.store()
    deploy = None
    try:
        wait_for(lambda: out.exists() and len(items(out)) >= 3, what="the job to make progress")
        deploy = project.popen("deploy", "s")
        stopped = wait_for(
            lambda: next((r for r in store.list_runs() if r.stop_requested_at), None),
            what="the deploy to ask the job to stop",
        )
        os.kill(deploy.pid, signal.SIGKILL)
        deploy.wait(timeout=10)
        wait_for(lambda: store.get_run(stopped.id).state == CHECKPOINTED, what="the checkpoint")
        wait_for(lambda: not store.gate().is_closed(time.time()), timeout=60, what="the gate to reopen")
        assert project.shipit("jobs", "reconcile", "s").returncode == 0
        assert project.shipit("jobs", "reconcile", "s").returncode == 0
        new = wait_for(lambda: continuation(store, stopped.id), what="the restarted run")
        assert [r.id for r in store.list_runs() if r.continues == stopped.id] == [new.id]
    finally:
        if deploy and deploy.poll() is None:
            deploy.kill()
        kill_group(proc)
        kill_jobs(project)
        store.close()


def test_a_host_lost_before_the_drain_reopens_the_hosts_that_closed(tmp_path, sshd_hosts):
    host = sshd_hosts(1)[0]
    p = Project(tmp_path, store="sqlite", hosts=["local", host.name], ssh=ssh_section([host]))
    assert host.proc is not None
    # Between pre_deploy and drain_jobs the SSH host goes down (listener and open sessions).
    cfg = yaml.safe_load((p.root / "shipit.yaml").read_text())
    pid = host.proc.pid
    cfg["hooks"] = {"before_drain_jobs": [{"local": f"pkill -9 -P {pid}; kill -9 {pid}"}]}
    (p.root / "shipit.yaml").write_text(yaml.safe_dump(cfg))
    res = p.shipit("deploy", "s")
    assert res.returncode == 4, res.stdout + res.stderr
    store = p.store()
    try:
        lease = store.gate()
        assert lease.epoch >= 1  # the local host did close...
        assert not lease.is_closed(time.time())  # ...and was reopened
    finally:
        store.close()


def test_sigterm_while_the_host_agent_waits_for_a_job_reopens_the_gate_at_once(tmp_path, ssh_hosts3):
    """A cancelled CI job during the drain: the deploy never learnt the host's lease (its agent
    was still waiting), so only the agent can hand the gate back. It must not stay closed for
    the lease's TTL (60 s here): cron jobs would queue at the gate for a minute."""
    host = ssh_hosts3[0]
    project = Project(tmp_path, store="file", hosts=[host.name], ssh=ssh_section([host]),
                      lease_ttl=60, drain_timeout=60)
    sigterm_while_the_drain_waits(project, reopened_within=15)


def test_sigterm_after_the_agent_stopped_a_job_reopens_and_restarts_it_once(tmp_path, ssh_hosts3):
    """The agent had already asked the job to stop when the deploy was cancelled (the job takes
    2 s to save its checkpoint): it reopens the gate and restarts the stopped run itself, on the
    live release, exactly once."""
    host = ssh_hosts3[0]
    project = Project(tmp_path, store="file", hosts=[host.name], ssh=ssh_section([host]),
                      lease_ttl=60, drain_timeout=0.5, grace=10)
    sigterm_after_the_stop_request(project, reopened_within=20)
