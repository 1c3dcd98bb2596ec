"""Notifications delivered to a REAL HTTP server on 127.0.0.1 (webhook and apprise json://).

Waits are event-driven (a Condition signalled by the server or the bus); the timeouts in them
only turn a hang into a failure message.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from shipit.config.model import NotifyTarget
from shipit.events import Event, EventBus
from shipit.notify import Notifier

pytestmark = pytest.mark.e2e

SECRET = "s3cr3t-T0KEN/+x"
SOURCE = {"stage": "prod", "application": "shop", "deploy_id": "d-42", "actor": "ann@ci"}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.raw)


class Hook:
    """What the test server received, and how it should answer (per path)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.cond = threading.Condition()
        self.statuses: dict[str, list[int]] = {}
        self.hang: set[str] = set()
        self.release = threading.Event()
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        with self.cond:
            return [r for r in self.received if r.path.split("?")[0] == path]

    def wait_for(self, path: str, count: int, timeout: float = 10.0) -> list[Received]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.at(path)) >= count, timeout)
        assert ok, f"{path}: wanted {count} requests, got {[r.path for r in self.received]}"
        return self.at(path)


def _handler(hook: Hook) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with hook.cond:
                hook.received.append(Received(self.path, dict(self.headers), raw))
                hook.cond.notify_all()
                path = self.path.split("?")[0]
                queue = hook.statuses.get(path)
                status = queue.pop(0) if queue else 200
            if path in hook.hang:
                hook.release.wait(60)
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(h))
    server.daemon_threads = True
    h.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield h
    finally:
        h.release.set()
        server.shutdown()
        server.server_close()


class Failures:
    """Collects notify.failed events from the bus and lets a test wait for them."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.all: list[Event] = []
        self.cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self.cond:
            self.all.append(event)
            if event.kind == "notify.failed":
                self.events.append(event)
                self.cond.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Event]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.events) >= count, timeout)
        assert ok, f"wanted {count} notify.failed events, got {[e.message for e in self.events]}"
        return list(self.events)


def start(targets: list[NotifyTarget], **kw: Any) -> tuple[EventBus, Notifier, Failures]:
    bus = EventBus()
    failures = Failures()
    bus.subscribe(failures)
    kw.setdefault("secrets", [SECRET])
    kw.setdefault("source", SOURCE)
    notifier = Notifier(targets, **kw).attach(bus)
    return bus, notifier, failures


def webhook(hook: Hook, path: str, **kw: Any) -> NotifyTarget:
    return NotifyTarget(webhook=hook.url(path), **kw)


def deploy_story(bus: EventBus, outcome: str = "success") -> None:
    bus.emit(
        "deploy.started",
        deploy_id="d-42",
        stage="prod",
        revision="abc123def4567890",
        hosts=["web1", "web2"],
        dry_run=False,
    )
    bus.emit("phase.started", phase="drain_jobs")
    bus.emit("host.command", host="web1", phase="drain_jobs", command="shipit agent drain")
    bus.emit("gate.closed", host="web1", epoch=7, holder="ann@ci")
    bus.emit(
        "job.stopped",
        host="web1",
        run={
            "id": "r-1",
            "job": "crunch",
            "host": "web1",
            "state": "checkpointed",
            "attempt": 1,
            "started_at": 1000.0,
            "finished_at": 1095.0,
            "checkpoint": {"offset": 10},
            "env": {"TOKEN": "x"},
        },
    )
    bus.emit(
        "job.restarted",
        host="web1",
        job="crunch",
        run_id="r-1",
        new_run={"id": "r-2", "attempt": 2},
    )
    bus.emit("gate.reopened", host="web1", epoch=7)
    bus.emit(
        "deploy.finished",
        deploy_id="d-42",
        outcome=outcome,
        durations={"release": 3.0, "drain_jobs": 95.0},
        release="20261122051230",
        error=None,
    )


def test_deploy_story_arrives_in_order_with_the_fields_a_receiver_needs(hook: Hook) -> None:
    bus, notifier, failures = start(
        [webhook(hook, "/all", headers={"X-Team": "ops", "Authorization": "Bearer tok"})]
    )
    deploy_story(bus)
    assert notifier.close(10) is True

    got = hook.at("/all")
    assert [r.json["event"] for r in got] == [
        "deploy.started",
        "gate.closed",
        "job.stopped",
        "job.restarted",
        "gate.reopened",
        "deploy.finished",
    ]  # phase.started and host.command are chatter, not in the default set
    first = got[0]
    assert first.headers["X-Team"] == "ops"
    assert first.headers["Authorization"] == "Bearer tok"
    assert first.headers["Content-Type"] == "application/json"
    for r in got:
        body = r.json
        assert (body["stage"], body["application"], body["deploy_id"]) == ("prod", "shop", "d-42")
        assert datetime.fromisoformat(body["ts"]).tzinfo is not None
        assert "\n" not in body["text"]
    started, closed, stopped, restarted, _, finished = (r.json for r in got)
    assert started["text"] == "Deploying shop abc123def456 to prod (2 hosts) by ann@ci"
    assert closed["host"] == "web1" and "epoch 7" in closed["text"]
    assert stopped["text"] == "Job crunch on web1 stopped after 1m 35s, checkpoint saved"
    assert stopped["data"]["job"] == "crunch" and stopped["data"]["elapsed"] == 95.0
    assert stopped["data"]["checkpoint_saved"] is True
    assert "env" not in stopped["data"]["run"]  # environments stay on the host
    assert restarted["text"] == "Job crunch restarted on web1 (attempt 2, run r-2)"
    assert restarted["data"]["new_run_id"] == "r-2"
    assert finished["data"]["outcome"] == "success" and finished["severity"] == "success"
    assert finished["text"] == "Deployed shop to prod in 1m 38s (release 20261122051230)"
    assert failures.events == []


def test_a_manual_rollback_is_announced_as_one_start_to_finish(hook: Hook) -> None:
    # The source has no mode (as for a Notifier built by hand): deploy.started's is remembered.
    bus, notifier, failures = start([webhook(hook, "/all")], source={**SOURCE})
    bus.emit("deploy.started", deploy_id="d-43", stage="prod", hosts=["web1", "web2"],
             dry_run=False, mode="rollback", revision=None, rollback_to=None)
    bus.emit("deploy.finished", deploy_id="d-43", outcome="success", release="20261122051230",
             durations={"release": 0.5, "restart_jobs": 0.5}, error=None)
    assert notifier.close(10) is True
    assert [r.json["text"] for r in hook.at("/all")] == [
        "Rolling back shop on prod to the previous release (2 hosts) by ann@ci",
        "Rolled back shop on prod to release 20261122051230 in 1.0s",
    ]
    assert failures.events == []


def test_each_target_gets_only_the_kinds_it_asked_for(hook: Hook) -> None:
    bus, notifier, _ = start(
        [
            webhook(hook, "/default"),
            webhook(hook, "/jobs", events=["job.*", "deploy.failed"]),
            webhook(hook, "/wins", events=["deploy.success"]),
        ]
    )
    bus.emit("deploy.started", deploy_id="d-42", stage="prod")
    bus.emit("job.running", host="web1", run={"id": "r-1", "job": "crunch"})
    bus.emit("job.given_up", host="web1", job="crunch", restarts=5, message="too many restarts")
    bus.emit("deploy.finished", outcome="failed", error="release failed on web2")
    assert notifier.close(10) is True

    assert [r.json["event"] for r in hook.at("/default")] == [
        "deploy.started",
        "job.given_up",
        "deploy.finished",
    ]
    assert [r.json["event"] for r in hook.at("/jobs")] == [
        "job.running",
        "job.given_up",
        "deploy.finished",
    ]
    assert hook.at("/wins") == []
    failed = hook.at("/jobs")[-1].json
    assert failed["text"] == "Deploy of shop to prod FAILED: release failed on web2"
    assert failed["severity"] == "failure"
    assert hook.at("/jobs")[1].json["text"] == (
        "Job crunch on web1 given up after 5 restarts: too many restarts"
    )


def test_a_server_error_is_retried_and_then_delivered(hook: Hook) -> None:
    hook.statuses["/flaky"] = [500, 200]
    bus, notifier, failures = start([webhook(hook, "/flaky", retries=2)])
    bus.emit("gate.forced", host="web1", epoch=3, holder="bob")
    assert notifier.close(10) is True

    got = hook.at("/flaky")
    assert len(got) == 2 and got[0].raw == got[1].raw
    assert notifier.failures == [] and failures.events == []
    assert notifier.delivered == 1


def test_a_rejected_request_is_not_retried_but_reported(hook: Hook) -> None:
    hook.statuses["/gone"] = [404, 404, 404]
    bus, notifier, failures = start([webhook(hook, "/gone", retries=2)])
    bus.emit("deploy.started", deploy_id="d-42")
    assert notifier.close(10) is True

    assert len(hook.at("/gone")) == 1
    (failed,) = failures.events
    assert "HTTP 404" in failed.message and failed.data["attempts"] == 1
    assert failed.data["level"] == "warning"


def test_a_hanging_endpoint_is_abandoned_after_its_timeout(hook: Hook) -> None:
    hook.hang.add("/hang")
    bus, notifier, failures = start(
        [webhook(hook, "/hang", timeout=0.3, retries=0), webhook(hook, "/ok")]
    )
    bus.emit("deploy.started", deploy_id="d-42")
    (failed,) = failures.wait_for(1)
    assert "no answer within 0.3s" in failed.message
    assert not hook.release.is_set()  # the server was still hanging when shipit gave up
    assert notifier.close(10) is True
    assert len(hook.at("/ok")) == 1  # one dead target does not hold up the others


def test_close_returns_at_its_deadline_even_if_an_endpoint_never_answers(hook: Hook) -> None:
    hook.hang.add("/hang")
    bus, notifier, failures = start([webhook(hook, "/hang", timeout=60, retries=3)])
    bus.emit("deploy.started", deploy_id="d-42")
    bus.emit("deploy.finished", outcome="success")
    hook.wait_for("/hang", 1)

    assert notifier.close(0.5) is False
    assert not hook.release.is_set()  # close() did not wait for the server to give up
    (failed,) = failures.events
    assert "2 notification(s) not sent within 0.5s" in failed.message
    bus.emit("deploy.started", deploy_id="d-43")  # after close: ignored, and no error
    assert len(hook.at("/hang")) == 1


def test_an_unreachable_endpoint_never_raises_into_the_deploy() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port any more: connections are refused.
    bus, notifier, failures = start(
        [NotifyTarget(webhook=f"http://127.0.0.1:{port}/hook", retries=1)]
    )
    deploy_story(bus)  # must simply return
    assert notifier.close(10) is True
    assert len(failures.events) == 6  # one per notification, none about notify.failed itself
    assert all("cannot connect" in e.message and e.data["attempts"] == 2 for e in failures.events)
    assert [e.kind for e in failures.all].count("notify.failed") == 6


def test_secrets_never_reach_any_endpoint(hook: Hook) -> None:
    from urllib.parse import quote

    bus, notifier, _ = start(
        [
            webhook(hook, "/hook", events=["*"]),
            NotifyTarget(apprise=f"json://127.0.0.1:{hook.port}/apprise", events=["*"]),
        ]
    )
    bus.emit("deploy.started", deploy_id="d-42", revision=SECRET, hosts=[SECRET])
    bus.emit("log", message=f"connecting with {SECRET}", level="info")
    bus.emit(
        "job.stopped",
        host="web1",
        job="sync",
        run={
            "id": "r-9",
            "job": "sync",
            "command": ["sync", "--key", SECRET],
            "checkpoint": {"cursor": SECRET},
            "env": {"KEY": SECRET},
        },
    )
    bus.emit(
        "deploy.finished",
        outcome="failed",
        error=f"auth failed for https://u:{quote(SECRET, safe='')}@db.example/x",
        **{SECRET: "a secret used as a key"},
    )
    assert notifier.close(10) is True

    got = hook.wait_for("/hook", 4) + hook.wait_for("/apprise", 4)
    encoded = quote(SECRET, safe="")
    for r in got:
        for form in (SECRET, encoded, json.dumps(SECRET)[1:-1]):
            assert form.encode() not in r.raw, (r.path, r.raw)
    assert any(b"****" in r.raw for r in hook.at("/hook"))
    assert any(b"****" in r.raw for r in hook.at("/apprise"))


def test_url_credentials_are_sent_but_never_reported(hook: Hook) -> None:
    hook.statuses["/down/T0KENPATH"] = [503, 503]
    url = f"http://alice:Pa55word@127.0.0.1:{hook.port}/down/T0KENPATH?key=QU3RY"
    bus, notifier, failures = start([NotifyTarget(webhook=url, retries=1)])
    bus.emit("deploy.started", deploy_id="d-42")
    assert notifier.close(10) is True

    got = hook.at("/down/T0KENPATH")
    assert len(got) == 2
    assert (
        got[0].headers["Authorization"] == "Basic " + base64.b64encode(b"alice:Pa55word").decode()
    )
    (failed,) = failures.events
    said = failed.message + json.dumps(failed.data)
    assert "HTTP 503" in said and f"127.0.0.1:{hook.port}" in said
    for token in ("alice", "Pa55word", "T0KENPATH", "QU3RY"):
        assert token not in said


def test_apprise_json_url_delivers_title_and_body(hook: Hook) -> None:
    bus, notifier, failures = start([NotifyTarget(apprise=f"json://127.0.0.1:{hook.port}/apprise")])
    bus.emit("job.interrupted", host="web2", job="report", elapsed=4.25, checkpointed=False)
    bus.emit("deploy.finished", outcome="rolled_back", error="migration failed\nTraceback...")
    assert notifier.close(10) is True

    first, second = (r.json for r in hook.wait_for("/apprise", 2))
    assert first["title"] == "shipit · shop · prod"
    assert first["message"].startswith("Job report on web2 interrupted after 4.2s, no checkpoint")
    assert "deploy d-42" in first["message"]
    assert second["message"].startswith(
        "Deploy of shop to prod FAILED and was rolled back: migration failed\n"
    )
    assert second["type"] == "failure"
    assert failures.events == []


def test_a_dry_run_notifies_nobody(hook: Hook) -> None:
    bus, notifier, _ = start([webhook(hook, "/hook")])
    deploy_dry: Callable[..., Event] = bus.emit
    deploy_dry("deploy.started", deploy_id="d-1", stage="prod", dry_run=True)
    deploy_dry("deploy.finished", outcome="success")
    assert notifier.close(10) is True
    assert hook.at("/hook") == []


def test_a_failing_apprise_target_is_retried_and_reported_with_apprise_reason(hook: Hook) -> None:
    hook.statuses["/ap/T0KENPATH"] = [500, 500]
    bus, notifier, failures = start(
        [NotifyTarget(apprise=f"json://127.0.0.1:{hook.port}/ap/T0KENPATH", retries=1)]
    )
    bus.emit("deploy.started", deploy_id="d-42")
    assert notifier.close(10) is True

    assert len(hook.at("/ap/T0KENPATH")) == 2
    (failed,) = failures.events
    assert failed.message.startswith("notification about deploy.started to apprise json://…")
    assert "after 2 attempts: apprise: " in failed.message and "500" in failed.message
    assert "T0KENPATH" not in failed.message + json.dumps(failed.data)


def test_the_queue_is_bounded_and_overflow_is_reported(hook: Hook) -> None:
    hook.hang.add("/slow")
    bus, notifier, failures = start(
        [webhook(hook, "/slow", timeout=60, events=["*"])], queue_size=2
    )
    bus.emit("deploy.started", deploy_id="d-42")
    hook.wait_for("/slow", 1)  # the worker is now stuck sending the first one
    for n in range(4):
        bus.emit("job.running", host="web1", job=f"j{n}")

    assert notifier.close(0.3) is False
    assert sorted(e.message.split(": ", 1)[1] for e in failures.events) == [
        "2 notification(s) dropped: queue full",
        "3 notification(s) not sent within 0.3s",
    ]


# -- manual commands: `shipit lock` and `shipit jobs reconcile` on a real local stage -------------


def _stage_with_notify(tmp_path: Any, targets: list[dict[str, Any]]) -> Any:
    import yaml

    from tests.jobs.deploy_kit import Project

    project = Project(tmp_path)
    project.shipit("deploy", "s", check=True)  # creates the stage's store
    cfg = yaml.safe_load((project.root / "shipit.yaml").read_text())
    cfg["notify"] = targets
    (project.root / "shipit.yaml").write_text(yaml.safe_dump(cfg))
    return project


def test_lock_acquire_force_over_someone_elses_lock_is_announced_and_audited(
    hook: Hook, tmp_path: Any
) -> None:
    project = _stage_with_notify(tmp_path, [{"webhook": hook.url("/lock")}])
    project.shipit("lock", "acquire", "s", "-m", "db migration", env={"SHIPIT_ACTOR": "bob@box"},
                   check=True)
    forced = project.shipit("lock", "acquire", "s", "-m", "hotfix", "--force",
                            env={"SHIPIT_ACTOR": "ann@box"}, check=True)
    assert "gate forced closed" in forced.stderr and "bob@box" in forced.stderr
    project.shipit("lock", "release", "s", env={"SHIPIT_ACTOR": "ann@box"}, check=True)

    closed, taken, released = (r.json for r in hook.wait_for("/lock", 3))
    assert [closed["event"], taken["event"], released["event"]] == [
        "gate.closed", "gate.forced", "gate.reopened"]
    assert {b["mode"] for b in (closed, taken, released)} == {"lock"}
    assert (taken["stage"], taken["application"], taken["host"]) == ("s", "t", "local")
    bob_lock = closed["deploy_id"]
    assert bob_lock.startswith("lock-")
    assert closed["text"] == (
        f"Deploy lock taken on local by bob@box (epoch {closed['data']['epoch']}): "
        "db migration [t s]")
    epoch = taken["data"]["epoch"]
    assert epoch == closed["data"]["epoch"] + 1
    assert taken["severity"] == "warning"
    assert taken["text"] == (
        f"Job gate FORCED closed on local by ann@box (epoch {epoch}): hotfix; it was held by "
        f"bob@box ({bob_lock}: db migration) [t s]")
    data = taken["data"]
    assert (data["holder"], data["previous_holder"], data["previous_deploy_id"],
            data["previous_reason"], data["action"]) == (
        "ann@box", "bob@box", bob_lock, "db migration", "force-close")
    assert released["text"] == f"Deploy lock released on local by ann@box (epoch {epoch}) [t s]"

    # The audit trail says the same: forced exactly where gate.forced was announced.
    store = project.store()
    try:
        trail = store.audit_log(limit=3)
    finally:
        store.close()
    assert [(a.action, a.actor, a.epoch, a.forced) for a in trail] == [
        ("reopen", "ann@box", epoch, False),
        ("force-close", "ann@box", epoch, True),
        ("close", "bob@box", epoch - 1, False),
    ]


def test_a_dead_endpoint_never_fails_a_manual_command(tmp_path: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    project = _stage_with_notify(
        tmp_path, [{"webhook": f"http://127.0.0.1:{port}/x", "retries": 0, "timeout": 1}])
    res = project.shipit("jobs", "pause", "s", "-m", "backfill")
    assert res.returncode == 0, res.stderr
    assert "local: paused" in res.stdout
    assert "warning: notification about gate.closed" in res.stderr
    assert project.shipit("jobs", "resume", "s").returncode == 0


def test_jobs_reconcile_announces_the_job_it_restarts(hook: Hook, tmp_path: Any) -> None:
    import time as _time

    from shipit.gate.base import CHECKPOINTED
    from tests.jobs.deploy_kit import agent, continuation, items, kill_group, kill_jobs, wait_for

    project = _stage_with_notify(tmp_path, [{"webhook": hook.url("/jobs")}])
    proc, out = project.start_stateful(total=100000)
    store = project.store()
    try:
        wait_for(lambda: out.exists() and len(items(out)) >= 3, what="the job to make progress")
        # A deploy that stopped the job and died: its lease (3 s) is never renewed nor released.
        code, lines = agent("drain", {"store": project.url, "holder": "ci", "deploy_id": "gone",
                                      "ttl": 3, "timeout": 0.2, "policy": "terminate",
                                      "grace": 5, "reconcile": False})
        assert code == 0, lines
        stopped = next(r for r in store.list_runs() if r.job == "crunch")
        wait_for(lambda: store.get_run(stopped.id).state == CHECKPOINTED, what="the checkpoint")
        wait_for(lambda: not store.gate().is_closed(_time.time()), what="the lease to expire")

        res = project.shipit("jobs", "reconcile", "s", env={"SHIPIT_ACTOR": "ann@box"})
        assert res.returncode == 0, res.stderr
        assert "1 job(s) restarted" in res.stdout
        new = wait_for(lambda: continuation(store, stopped.id), what="the restarted run")

        reopened, restarted = (r.json for r in hook.wait_for("/jobs", 2))
        assert [reopened["event"], restarted["event"]] == ["gate.reopened", "job.restarted"]
        assert {reopened["mode"], restarted["mode"]} == {"reconcile"}
        assert reopened["text"].startswith("Job gate reopened on local after its lease expired")
        assert restarted["host"] == "local" and restarted["severity"] == "info"
        assert restarted["text"] == (
            f"Job crunch restarted on local (attempt 2, continuing run {stopped.id})")
        assert (restarted["data"]["continues"], restarted["data"]["attempt"]) == (stopped.id, 2)
        assert new.attempt == 2
    finally:
        store.close()
        kill_group(proc)
        kill_jobs(project)


def test_jobs_forget_announces_the_run_it_gives_up(hook: Hook, tmp_path: Any) -> None:
    from shipit.gate.base import CHECKPOINTED, GIVEN_UP, ClaimSpec, Run

    project = _stage_with_notify(tmp_path, [{"webhook": hook.url("/forget")}])
    store = project.store()
    try:
        run = store.claim(ClaimSpec(job="report", host="local", command=("true",)))
        assert isinstance(run, Run)
        store.finish(run.id, CHECKPOINTED, 0)
        res = project.shipit("jobs", "forget", "s", run.id, "-m", "its key is lost",
                             env={"SHIPIT_ACTOR": "ann@box"})
        assert res.returncode == 0, res.stderr
        assert f"run {run.id} (report) given up" in res.stdout
        assert "job.given_up" not in res.stderr  # said once, not echoed again
        assert store.get_run(run.id).state == GIVEN_UP
    finally:
        store.close()
    [given_up] = (r.json for r in hook.wait_for("/forget", 1))
    assert (given_up["event"], given_up["mode"], given_up["host"]) == ("job.given_up", "forget", "local")
    assert given_up["severity"] == "warning"
    assert given_up["text"] == "Job report on local given up: by ann@box: its key is lost"
    # Already given up: nothing changes, nobody is told again (a command flushes before exit).
    again = project.shipit("jobs", "forget", "s", run.id, "-m", "again")
    assert again.returncode == 0 and "was given up already" in again.stdout
    assert len(hook.at("/forget")) == 1
