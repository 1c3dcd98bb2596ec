"""`shipit agent` as the deploy runs it: a real process, JSON lines out, exit codes."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

from shipit.gate.base import CHECKPOINTED, FINISHED, ClaimSpec, Run
from shipit.gate.sqlite import SQLiteStore
from tests.jobs.deploy_kit import SHIPIT, agent, kill_group, running_run, start_job


def _store(tmp_path: Path) -> tuple[SQLiteStore, str]:
    s = SQLiteStore(str(tmp_path / "store" / "jobs.db"))
    return s, f"sqlite:{s.path}"


def test_drain_streams_events_then_the_result(tmp_path):
    store, url = _store(tmp_path)
    proc = start_job(url, "short", ["sleep", "0.5"])
    run = running_run(store, "short")
    code, lines = agent("drain", {"store": url, "host": "web1", "holder": "alice", "deploy_id": "d1",
                                  "ttl": 5, "timeout": 30})
    proc.wait(timeout=10)
    assert code == 0
    # Ticks are the agent making sure its deploy is still there (before it closes, at renewals).
    events = [line for line in lines if "event" in line and line["event"] != "tick"]
    kinds = [line["event"] for line in events]
    assert kinds[:2] == ["gate.closed", "job.running"] and "job.finished" in kinds
    assert all(line.get("host") == "web1" for line in events)
    result = lines[-1]["result"]
    assert result["lease"]["holder"] == "alice" and result["recorded"] == []
    assert events[1]["run"]["run_id"] == run.id
    store.close()


def test_a_held_gate_is_an_error_line_with_exit_3_naming_the_holder(tmp_path):
    store, url = _store(tmp_path)
    store.close_gate(holder="bob@ci", deploy_id="other", reason="hotfix", ttl=60)
    code, lines = agent("drain", {"store": url, "deploy_id": "mine", "ttl": 5})
    assert code == 3
    assert lines[-1]["exit_code"] == 3 and "bob@ci" in lines[-1]["error"] and "hotfix" in lines[-1]["error"]
    store.close()


def test_options_on_the_command_line_and_secrets_on_stdin(tmp_path):
    store, url = _store(tmp_path)
    proc = subprocess.run(
        [*SHIPIT, "agent", "close", "--opts", json.dumps({"store": url, "deploy_id": "x", "ttl": 5}),
         "--stdin"],
        input=json.dumps({"holder": "from-stdin"}) + "\n", capture_output=True, text=True,
        timeout=30, check=False,
    )
    assert proc.returncode == 0, proc.stdout
    assert json.loads(proc.stdout.splitlines()[-1])["result"]["lease"]["holder"] == "from-stdin"
    store.close()


def test_usage_errors_exit_2_without_a_traceback(tmp_path):
    code, lines = agent("explode", {})
    assert code == 2 and "usage" in lines[-1]["error"]
    code, lines = agent("status", {"store": "ftp://nope"})
    assert code == 2 and "Traceback" not in json.dumps(lines)


def test_readonly_status_does_not_create_a_store(tmp_path):
    url = f"sqlite:{tmp_path}/none/jobs.db"
    code, lines = agent("status", {"store": url, "readonly": True})
    assert code == 0 and lines[-1]["result"]["runs"] == []
    assert not (tmp_path / "none").exists()


def test_a_vanished_deploy_gets_its_gate_handed_back_at_once_not_at_the_ttl(tmp_path):
    """The deploy died while its agent waited for a job (SIGKILL, a cancelled CI runner): no
    switch can follow that lease, so the agent reopens the gate as soon as it notices (its next
    keepalive, about a second) instead of leaving jobs queued for the TTL (60 s here)."""
    store, url = _store(tmp_path)
    job = start_job(url, "forever", ["sleep", "120"])
    try:
        running_run(store, "forever")
        proc = subprocess.Popen(
            [*SHIPIT, "agent", "drain"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        assert proc.stdin and proc.stdout
        proc.stdin.write(json.dumps({"store": url, "deploy_id": "gone", "ttl": 60, "timeout": 600,
                                     "policy": "wait"}) + "\n")
        proc.stdin.close()
        first = json.loads(proc.stdout.readline())
        while first["event"] == "tick":
            first = json.loads(proc.stdout.readline())
        assert first["event"] == "gate.closed"
        proc.stdout.close()  # the deploy is gone: nobody reads the agent any more
        assert proc.wait(timeout=30) == 1
        assert not store.gate().is_closed(time.time()), store.gate()
        [opened] = [a for a in store.audit_log(limit=10) if a.action == "reopen"]
        assert opened.epoch == store.gate().epoch
        # The job was never asked to stop; it goes on.
        assert store.get_run(running_run(store, "forever").id).stop_requested_at is None
    finally:
        kill_group(job)
        store.close()


def _closes_by(store: SQLiteStore, deploy_id: str) -> list[str]:
    return [a.reason for a in store.audit_log(limit=1000) if a.action == "close" and deploy_id in a.reason]


def _drain_for_a_gone_deploy(url: str, **opts: object) -> int:
    """`agent drain` for deploy `gone`, whose requester disappears before the agent gets to
    close: the pipe it writes to is closed at once (sshd closes a session's pipes when its
    client dies, and leaves the command running)."""
    proc = subprocess.Popen(
        [*SHIPIT, "agent", "drain", "--opts", json.dumps({
            "store": url, "holder": "ci", "deploy_id": "gone", "reason": "deploy gone", "ttl": 3,
            "timeout": 30, **opts,
        })], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.close()
    return proc.wait(timeout=60)


def test_a_drain_whose_deploy_died_while_it_waited_for_restarts_to_settle_never_closes(tmp_path):
    """Chaos seed 11: the agent's reconcile waited for a young restart claim to settle, its deploy
    was SIGKILLed meanwhile, and the agent then closed the gate for nobody: held a TTL past the
    deploy's death, so the next reconcile and deploy exited 3."""
    store, url = _store(tmp_path)
    old = store.claim(ClaimSpec(job="report", host="h1", command=("true",)))
    assert isinstance(old, Run)
    lease = store.close_gate(holder="alice", deploy_id="d0", reason="deploy d0", ttl=60)
    store.request_stop(old.id, lease.epoch)
    store.finish(old.id, CHECKPOINTED, 0)
    assert store.claim_restart(old.id, lease.epoch)  # its supervisor is still starting
    store.open_gate(lease.epoch, actor="alice")
    code = []
    waiter = threading.Thread(target=lambda: code.append(_drain_for_a_gone_deploy(url, spawn_grace=3)))
    waiter.start()
    # The restart settles while the agent waits: its supervisor claims the continuation.
    new = store.claim(ClaimSpec(job="report", host="h1", command=("true",), continues=old.id, attempt=2))
    assert isinstance(new, Run)
    store.finish(new.id, FINISHED, 0)
    waiter.join(60)
    assert code == [1]  # RequesterGone
    assert not store.gate().is_closed(time.time()), store.gate()
    assert _closes_by(store, "gone") == []
    store.close()


def test_a_drain_whose_deploy_died_while_it_waited_for_the_gate_never_closes(tmp_path):
    """The same with `lock_wait`: the gate another deploy held frees up after the requester died."""
    store, url = _store(tmp_path)
    store.close_gate(holder="bob", deploy_id="other", reason="deploy other", ttl=2)
    assert _drain_for_a_gone_deploy(url, lock_wait=30) == 1
    assert _closes_by(store, "gone") == []
    assert store.gate().deploy_id == "other"
    store.close()


def test_a_renewal_for_a_deploy_already_gone_does_not_extend_the_lease(tmp_path):
    """`agent renew` started late (a loaded host) after its deploy died: the lease is left to
    expire at its TTL from the deploy's last renewal, not extended for nobody."""
    store, url = _store(tmp_path)
    lease = store.close_gate(holder="ci", deploy_id="gone", reason="deploy gone", ttl=30)
    proc = subprocess.Popen(
        [*SHIPIT, "agent", "renew", "--opts", json.dumps({"store": url, "epoch": lease.epoch, "ttl": 600})],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.close()
    assert proc.wait(timeout=60) == 1
    assert store.gate().expires_at == lease.expires_at
    store.close()
