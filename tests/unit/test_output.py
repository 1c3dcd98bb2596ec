"""The renderers of the event stream, fed events we emit ourselves."""

from __future__ import annotations

import io
import json
import re
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from rich.console import Console

from shipit.events import EventBus
from shipit.output import attach
from shipit.output.base import Composite
from shipit.output.jsonl import JsonRenderer
from shipit.output.live import LiveRenderer
from shipit.output.logfile import LogFileRenderer
from shipit.output.plain import PlainRenderer

SECRET = "hunter2-Sup3rSecret"


@dataclass
class Result:
    """Same fields as shipit.runner.DeployResult."""

    deploy_id: str = "d-1"
    outcome: str = "success"
    release: str | None = "20260101000000000000"
    revision: str | None = "abc123"
    error: str | None = None
    durations: dict[str, float] = field(
        default_factory=lambda: {"pre_deploy": 0.25, "release": 1.5}
    )
    exit_code: int = 0
    hosts: list[str] = field(default_factory=lambda: ["web1", "web2"])


def emit_deploy(bus: EventBus, *, dry_run: bool = False) -> None:
    bus.emit(
        "deploy.started",
        deploy_id="d-1",
        stage="prod",
        revision="abc123",
        hosts=["web1", "web2"],
        dry_run=dry_run,
    )
    bus.emit("phase.started", phase="pre_deploy")
    bus.emit("host.command", host="web1", phase="pre_deploy", command="mkdir -p /srv/app")
    bus.emit("host.output", host="web1", phase="pre_deploy", message="disk ok")
    bus.emit("phase.finished", phase="pre_deploy", duration=0.25, ok=True)
    bus.emit("phase.started", phase="drain_jobs")
    bus.emit("gate.closed", host="web1", phase="drain_jobs", epoch=4, holder="me@ci")
    run = {
        "id": "r1",
        "job": "import",
        "pid": 4242,
        "started_at": 1.0,
        "progress_done": 3,
        "progress_total": 4,
    }
    bus.emit("job.running", host="web1", phase="drain_jobs", run=run)
    bus.emit("job.stopped", host="web1", phase="drain_jobs", run={**run, "state": "checkpointed"})
    bus.emit("phase.finished", phase="drain_jobs", duration=2.0, ok=True)
    bus.emit("release.switched", host="web2", phase="release", release="20260101000000000000")
    bus.emit("log", message="disk nearly full", level="warning")
    bus.emit(
        "deploy.finished",
        deploy_id="d-1",
        outcome="success",
        durations={},
        release="20260101000000000000",
        error=None,
    )


PLAIN_LINES = [
    "deploying revision abc123 to prod (2 hosts), deploy d-1",
    "pre_deploy: started",
    "[web1] pre_deploy: disk ok",
    "pre_deploy: done in 0.2s",
    "drain_jobs: started",
    "[web1] drain_jobs: gate closed (epoch 4)",
    "[web1] drain_jobs: job import running (pid 4242)",
    "[web1] drain_jobs: job import stopped",
    "drain_jobs: done in 2.0s",
    "[web2] release: switched to 20260101000000000000",
    "warning: disk nearly full",
    "deploy d-1 success, release 20260101000000000000",
]

SUMMARY_LINES = [
    "summary: success, release 20260101000000000000 (revision abc123)",
    "hosts: web1, web2",
    "durations: pre_deploy 0.2s, release 1.5s",
]


def test_plain_lines_are_host_phase_message_without_commands() -> None:
    out = io.StringIO()
    bus = EventBus()
    renderer = PlainRenderer(out)
    bus.subscribe(renderer)
    emit_deploy(bus)
    renderer.finish(Result())
    assert out.getvalue().splitlines() == PLAIN_LINES + SUMMARY_LINES
    assert "\x1b" not in out.getvalue()  # no colour, no cursor movement


def test_plain_dry_run_prints_the_exact_commands() -> None:
    out = io.StringIO()
    bus = EventBus()
    bus.subscribe(PlainRenderer(out))
    emit_deploy(bus, dry_run=True)
    lines = out.getvalue().splitlines()
    assert lines[0] == "dry run: deploying revision abc123 to prod (2 hosts), deploy d-1"
    assert "[web1] pre_deploy: $ mkdir -p /srv/app" in lines


def test_plain_failure_summary_names_the_error() -> None:
    out = io.StringIO()
    renderer = PlainRenderer(out)
    renderer.finish(
        Result(outcome="rolled_back", release=None, error="[web2] disk full", exit_code=1)
    )
    assert out.getvalue().splitlines() == [
        "summary: rolled_back (revision abc123)",
        "hosts: web1, web2",
        "durations: pre_deploy 0.2s, release 1.5s",
        "error: [web2] disk full",
    ]


def test_json_is_one_object_per_event_then_the_summary() -> None:
    out = io.StringIO()
    bus = EventBus()
    renderer = JsonRenderer(out)
    bus.subscribe(renderer)
    emit_deploy(bus)
    renderer.finish(Result())
    objs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [o["kind"] for o in objs[:-1]] == [
        "deploy.started", "phase.started", "host.command", "host.output", "phase.finished",
        "phase.started", "gate.closed", "job.running", "job.stopped", "phase.finished",
        "release.switched", "log", "deploy.finished",
    ]  # fmt: skip
    assert objs[2] == {
        "kind": "host.command",
        "ts": objs[2]["ts"],
        "host": "web1",
        "phase": "pre_deploy",
        "message": "",
        "data": {"command": "mkdir -p /srv/app"},
    }
    assert objs[-1] == {
        "summary": {
            "deploy_id": "d-1",
            "outcome": "success",
            "release": "20260101000000000000",
            "revision": "abc123",
            "error": None,
            "durations": {"pre_deploy": 0.25, "release": 1.5},
            "exit_code": 0,
            "hosts": ["web1", "web2"],
        }
    }


def test_json_survives_values_json_cannot_encode() -> None:
    out = io.StringIO()
    bus = EventBus()
    bus.subscribe(JsonRenderer(out))
    bus.emit("log", message="x", path=Path("/srv/app"), level="info")
    assert json.loads(out.getvalue())["data"]["path"] == "/srv/app"


def test_log_file_is_private_named_by_deploy_id_and_has_every_event(tmp_path: Path) -> None:
    template = str(tmp_path / ".shipit" / "logs" / "prod-{deploy_id}.log")
    bus = EventBus()
    renderer = LogFileRenderer(template)
    bus.subscribe(renderer)
    bus.emit("log", message="before the deploy id is known", level="info")
    emit_deploy(bus)
    renderer.finish(Result())
    path = tmp_path / ".shipit" / "logs" / "prod-d-1.log"
    assert renderer.log_path == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 13 + 1  # the early event, the deploy's events, the summary
    assert "before the deploy id is known" in lines[0]
    # Timestamped, and the commands are kept even though the console hides them.
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z host\.command ", lines[3])
    assert "$ mkdir -p /srv/app" in lines[3]
    assert json.loads(lines[-1].split("summary", 1)[1])["outcome"] == "success"


def test_console_summary_shows_where_the_log_is(tmp_path: Path) -> None:
    out = io.StringIO()
    bus = EventBus()
    renderer = attach(bus, json=False, stream=out, log_path=str(tmp_path / "s-{deploy_id}.log"))
    emit_deploy(bus)
    renderer.finish(Result())
    assert out.getvalue().splitlines()[-1] == f"log: {tmp_path / 's-d-1.log'}"


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_attach_picks_the_renderer_for_the_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("TERM", "xterm")

    def console_of(**kw: object) -> object:
        renderer = attach(EventBus(), **kw)  # type: ignore[arg-type]
        assert isinstance(renderer, Composite)
        renderer.finish(None)
        return renderer.console

    assert isinstance(console_of(json=True, stream=FakeTTY()), JsonRenderer)
    assert isinstance(console_of(json=False, stream=io.StringIO()), PlainRenderer)
    assert isinstance(console_of(json=False, stream=FakeTTY()), LiveRenderer)
    monkeypatch.setenv("CI", "true")
    assert isinstance(console_of(json=False, stream=FakeTTY()), PlainRenderer)


def test_live_view_renders_hosts_phases_and_jobs_from_many_threads() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=160, record=True)
    renderer = LiveRenderer(console, refresh_per_second=50)
    bus = EventBus()
    bus.subscribe(renderer)
    renderer.start()
    hosts = [f"web{i}" for i in range(8)]
    bus.emit(
        "deploy.started", deploy_id="d-9", stage="prod", revision="abc", hosts=hosts, dry_run=False
    )
    bus.emit("phase.started", phase="drain_jobs")

    def work(host: str) -> None:
        run = {
            "id": f"r-{host}",
            "job": f"job-{host}",
            "pid": 100,
            "progress_done": 1,
            "progress_total": 2,
        }
        bus.emit("job.running", host=host, phase="drain_jobs", run=run)
        for n in range(40):
            bus.emit("host.output", host=host, phase="drain_jobs", message=f"{host} line {n}")

    threads = [threading.Thread(target=work, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bus.emit("host.failed", host="web3", phase="drain_jobs", message="job store gone")
    snapshot = Console(file=io.StringIO(), width=160, record=True)
    snapshot.print(renderer.render())
    view = snapshot.export_text()
    renderer.finish(Result(outcome="failed", error="job store gone", exit_code=1))
    for h in hosts:
        assert f"{h} line 39" in view or h == "web3"
        assert f"job-{h}" in view
    assert "50% (1/2)" in view
    assert "job store gone" in view
    final = console.export_text()
    assert "[web3] drain_jobs: FAILED: job store gone" in final
    assert "summary: failed" in final and "error: job store gone" in final


def test_secrets_are_masked_in_every_channel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("CI", raising=False)
    outputs: list[io.StringIO] = []
    snapshots: list[str] = []
    renderers = []
    for as_json, stream in ((True, io.StringIO()), (False, io.StringIO()), (False, FakeTTY())):
        bus = EventBus()
        r = attach(
            bus,
            json=as_json,
            stream=stream,
            secrets=[SECRET],
            log_path=str(tmp_path / f"{len(renderers)}-{{deploy_id}}.log"),
            verbose=True,
        )
        emit_deploy(bus)
        bus.emit("host.output", host="web1", phase="release", message=f"token={SECRET}")
        bus.emit("host.command", host="web1", phase="release", command=f"export DB={SECRET}")
        bus.emit("host.failed", host="web2", phase="release", message=f"bad {SECRET}")
        bus.emit(
            "log", message="x", level="error", nested={"a": [f"in a list {SECRET}"], SECRET: 1}
        )
        if isinstance(r.console, LiveRenderer):
            snap = Console(file=io.StringIO(), width=200, record=True)
            snap.print(r.console.render())
            snapshots.append(snap.export_text())
        r.finish(Result(error=f"failed with {SECRET}", outcome="failed", exit_code=1))
        outputs.append(stream)
        renderers.append(r)
    logs = list(tmp_path.glob("*.log"))
    assert len(logs) == 3
    texts = [o.getvalue() for o in outputs] + [p.read_text() for p in logs]
    assert len(snapshots) == 1 and "$ export DB=****" in snapshots[0]
    for text in texts:
        assert "failed with ****" in text
    # The live view keeps only each host's last line; the other channels keep every line.
    for text in texts[:2] + texts[3:]:
        assert "token=****" in text
    for text in texts + snapshots:
        assert SECRET not in text
        assert "hunter2" not in text


@pytest.mark.parametrize(
    ("data", "header"),
    [
        ({"source_dir": "examples/app"}, "deploying directory examples/app to prod (1 host), deploy d-1"),
        ({"branch": "main"}, "deploying branch main to prod (1 host), deploy d-1"),
        ({"revision": "v1.2", "branch": "main"}, "deploying revision v1.2 to prod (1 host), deploy d-1"),
        ({"mode": "rollback"}, "rolling back prod to the previous release (1 host), deploy d-1"),
        (
            {"mode": "rollback", "rollback_to": "20260101000000000000"},
            "rolling back prod to release 20260101000000000000 (1 host), deploy d-1",
        ),
        (
            {"branch": "main", "dry_run": True},
            "dry run: deploying branch main to prod (1 host), deploy d-1",
        ),
        ({}, "deploying HEAD to prod (1 host), deploy d-1"),
    ],
)
def test_the_header_names_what_is_deployed(data: dict, header: str) -> None:
    out = io.StringIO()
    bus = EventBus()
    bus.subscribe(PlainRenderer(out))
    bus.emit("deploy.started", deploy_id="d-1", stage="prod", hosts=["web1"], **data)
    assert out.getvalue().splitlines() == [header]


def test_a_rollback_ends_saying_rollback() -> None:
    out = io.StringIO()
    bus = EventBus()
    bus.subscribe(PlainRenderer(out))
    bus.emit("deploy.finished", deploy_id="d-1", outcome="success", release="R1", mode="rollback")
    assert out.getvalue().splitlines() == ["rollback d-1 success, release R1"]


def test_a_failed_hook_says_failed_twice_never_finished() -> None:
    out = io.StringIO()
    bus = EventBus()
    bus.subscribe(PlainRenderer(out))
    bus.emit("hook.started", phase="after_release", hook="after_release", where="hosts", command="x")
    bus.emit("host.failed", host="web1", phase="after_release", message="`x` exited 3")
    bus.emit("hook.finished", phase="after_release", hook="after_release", where="hosts", ok=False)
    bus.emit("hook.started", phase="after_release", hook="after_release", where="local", command="y")
    bus.emit("hook.finished", phase="after_release", hook="after_release", where="local", ok=True)
    assert out.getvalue().splitlines() == [
        "after_release: hook after_release (hosts) running",
        "[web1] after_release: FAILED: `x` exited 3",
        "after_release: hook after_release (hosts) FAILED",
        "after_release: hook after_release (local) running",
        "after_release: hook after_release (local) finished",
    ]


def test_record_fields_read_as_text() -> None:
    from shipit.output.format import show_value

    assert show_value("created_at", 1796110015.304252) == "2026-12-01T07:26:55.304Z"
    assert show_value("command", ["python3", "jobs/crunch.py", "a b"]) == "python3 jobs/crunch.py 'a b'"
    assert show_value("env", ["A", "B"]) == "A, B"
    assert show_value("env", []) == "-"
    assert show_value("continues", None) == "-"
    assert show_value("progress_done", 42.0) == "42"
    assert show_value("checkpoint", {"next": 43}) == '{"next": 43}'
    assert show_value("pid", 4258) == "4258"
