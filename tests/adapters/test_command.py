"""command: exact command text, the `list` contract, and whole deploys against a toy job system
made of shell scripts and real processes (pause file with a TTL, pid files, SIGTERM stops)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from shipit import runner
from shipit.adapters.command import build_command, parse_items
from shipit.config.loader import load_config
from shipit.errors import DeployFailed
from shipit.events import EventBus, Recorder
from tests.adapters.conftest import adapter_events
from tests.harness.sshd import SHIPIT_COMMAND

# One unit of work: registers its pid, works SECONDS (or until just after the pause: `drain`),
# unregisters; on TERM it unregisters and exits.
WORK = """cd "$1" || exit 1
echo $$ > "running/$2"
trap 'rm -f "running/$2"; echo "$2 stopped" >> events.log; exit 143' TERM
if [ "$3" = drain ]; then  # finishes a moment after the deploy paused the system
  while [ ! -e paused ]; do sleep 0.02; done
  sleep 0.2 & wait $!
elif [ "$3" = third-pause ]; then  # finishes once the pause ran three times
  while [ "$(cat events.log 2>/dev/null | grep -c '^pause')" -lt 3 ]; do sleep 0.02; done
else
  sleep "$3" & wait $!
fi
rm -f "running/$2"
echo "$2 done" >> events.log
"""
# `$${` because shipit.yaml reads `${NAME}` as its own interpolation.
LIST = """printf '['; sep=''
for f in running/*; do
  [ -e "$f" ] || continue
  id=$${f#running/}
  printf '%s{"id": "%s", "name": "job %s"}' "$sep" "$id" "$id"; sep=','
done
printf ']'"""


def _pool(tmp_path: Path) -> Path:
    pool = tmp_path / "pool"
    (pool / "running").mkdir(parents=True)
    (pool / "work.sh").write_text(WORK)
    return pool


def _adapter(pool: Path, **over: str) -> dict[str, object]:
    cd = f"cd {pool} && "
    cfg: dict[str, object] = {
        "type": "command",
        "name": "toy",
        "pause": cd + 'echo "$SHIPIT_TTL" > paused && echo "pause $SHIPIT_DEPLOY_ID" >> events.log',
        "list": cd + LIST,
        "stop": cd + 'for id in $SHIPIT_ITEMS; do kill -TERM "$(cat "running/$id")"; done',
        "resume": cd + "rm -f paused && echo resume >> events.log",
        "requeue": cd + 'printf "%s\\n" "$SHIPIT_ITEMS_JSON" >> requeued.json && for id in $SHIPIT_ITEMS; do '
        'setsid sh work.sh "$PWD" "$id" 30 </dev/null >/dev/null 2>&1 & done',
    }
    cfg.update(over)
    return cfg


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 10
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


def _start(pool: Path, item: str, seconds: float | str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sh", str(pool / "work.sh"), str(pool), item, str(seconds)], start_new_session=True)
    _wait_for(pool / "running" / item)
    return proc


def _cleanup(pool: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    for f in (pool / "running").glob("*"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(f.read_text()), signal.SIGKILL)
    for proc in procs:
        proc.kill()
        proc.wait()


def _events(pool: Path) -> list[str]:
    return (pool / "events.log").read_text().splitlines()


def test_build_command_quotes_our_values_and_keeps_the_users_text():
    assert build_command("sidekiqctl quiet $PIDFILE", {"SHIPIT_TTL": "60", "SHIPIT_HOST": "deploy@web 1"}) == (
        "SHIPIT_TTL=60 SHIPIT_HOST='deploy@web 1' sh -c 'sidekiqctl quiet $PIDFILE'"
    )


def test_parse_items_reads_ids_and_objects_and_refuses_anything_else():
    items = parse_items("toy", "web1", '["a", 7, {"id": "b", "name": "B", "started_at": 12, "detail": {"q": 1}}]')
    assert [(i.id, i.name, i.host, i.started_at, i.detail) for i in items] == [
        ("a", "a", "web1", None, {}), ("7", "7", "web1", None, {}), ("b", "B", "web1", 12.0, {"q": 1}),
    ]
    assert parse_items("toy", "web1", "\n") == []
    for bad in ("not json", '{"id": 1}', '[{"name": "no id"}]', "[true]"):
        with pytest.raises(DeployFailed, match=r"^adapter toy: "):
            parse_items("toy", "web1", bad)


def test_deploy_pauses_waits_stops_and_requeues_exactly_once(project_factory, tmp_path):
    pool = _pool(tmp_path)
    procs = [_start(pool, "quick", "drain"), _start(pool, "long", 30)]
    try:
        p = project_factory(jobs={"adapters": [_adapter(pool)], "drain_timeout": 2})
        result, rec = p.deploy()
        assert result.outcome == "success", result.error
        assert [e["item"]["id"] for e in adapter_events(rec, "job.finished")] == ["quick"]
        assert [e["item"]["id"] for e in adapter_events(rec, "job.stopped")] == ["long"]
        assert [e["item"]["id"] for e in adapter_events(rec, "job.restarted")] == ["long"]
        events = _events(pool)
        assert events[0] == f"pause {result.deploy_id}"
        assert events[1:] == ["quick done", "long stopped", "resume"]
        _wait_for(pool / "running" / "long")  # requeued: running again
        requeued = [json.loads(line) for line in (pool / "requeued.json").read_text().splitlines()]
        assert [[i["id"] for i in batch] for batch in requeued] == [["long"]]
        assert requeued[0][0]["name"] == "job long"
        assert not (pool / "paused").exists()
    finally:
        _cleanup(pool, procs)


def test_pause_gets_the_lease_ttl_so_the_system_can_expire_it(project_factory, tmp_path):
    pool = _pool(tmp_path)
    p = project_factory(jobs={"adapters": [_adapter(pool, resume=f"cd {pool} && echo resume >> events.log")],
                              "lease_ttl": 42})
    result, _ = p.deploy()
    assert result.outcome == "success", result.error
    assert (pool / "paused").read_text() == "42\n"


def test_a_failed_deploy_resumes_and_requeues_what_it_stopped(project_factory, tmp_path):
    pool = _pool(tmp_path)
    procs = [_start(pool, "long", 30)]
    try:
        p = project_factory(jobs={"adapters": [_adapter(pool)]},
                            hooks={"before_release": [{"local": "exit 3"}]})
        result, rec = p.deploy()
        assert result.outcome == "failed"
        assert not (pool / "paused").exists()
        assert _events(pool)[1:] == ["long stopped", "resume"]
        assert len((pool / "requeued.json").read_text().splitlines()) == 1
        _wait_for(pool / "running" / "long")
        assert [e["item"]["id"] for e in adapter_events(rec, "job.restarted")] == ["long"]
    finally:
        _cleanup(pool, procs)


def test_a_list_command_printing_garbage_fails_the_deploy_in_one_line_and_resumes(project_factory, tmp_path):
    pool = _pool(tmp_path)
    p = project_factory(jobs={"adapters": [_adapter(pool, list="echo 'Sidekiq 7.2 busy: 3'")]})
    result, _ = p.deploy()
    assert result.outcome == "failed"
    assert (result.error or "").startswith("1 host failed: [local] adapter toy: the list command printed no JSON list")
    assert "\n" not in (result.error or "")
    assert not (pool / "paused").exists()
    assert _events(pool)[-1] == "resume"


def test_a_failing_pause_still_gets_its_resume(project_factory, tmp_path):
    pool = _pool(tmp_path)
    p = project_factory(jobs={"adapters": [_adapter(pool, pause=f"cd {pool} && touch paused && exit 9")]})
    result, _ = p.deploy()
    assert result.outcome == "failed" and "exit code 9" in (result.error or "")
    assert not (pool / "paused").exists()


def test_run_on_local_runs_once_on_this_machine_and_dry_run_changes_nothing(project_factory, tmp_path):
    pool = _pool(tmp_path)
    procs = [_start(pool, "long", 30)]
    try:
        p = project_factory(jobs={"adapters": [_adapter(pool, run_on="local")]})
        result, rec = p.deploy(dry_run=True)
        assert result.exit_code == 0, result.error
        assert not (pool / "paused").exists() and not (pool / "events.log").exists()
        assert [e["item"]["id"] for e in adapter_events(rec, "job.running")] == ["long"]
        shown = [e.data["command"] for e in rec.of("host.command") if e.phase == "adapters"]
        assert any(c.startswith("SHIPIT_ADAPTER=toy ") and "SHIPIT_TTL=10 " in c for c in shown)
    finally:
        _cleanup(pool, procs)


def test_the_worked_example_deploys_with_its_toy_queue(tmp_path, monkeypatch):
    """examples/adapters/command as shipped: its scripts hold, stop and requeue real work."""
    example = Path(__file__).parents[2] / "examples" / "adapters" / "command"
    root = tmp_path / "example"
    shutil.copytree(example, root)
    cfg = yaml.safe_load((root / "shipit.yaml").read_text())
    cfg["deploy_to"] = str(tmp_path / "deploy")
    cfg["shipit_command"] = SHIPIT_COMMAND
    cfg["jobs"].update(drain_timeout=0.5, grace=1)
    (root / "shipit.yaml").write_text(yaml.safe_dump(cfg))
    toyq = tmp_path / "toyq"
    (toyq / "running").mkdir(parents=True)
    monkeypatch.setenv("TOYQ", str(toyq))
    monkeypatch.setenv("TOYQ_BIN", str(root / "toyq"))
    work = subprocess.Popen(["sh", str(root / "toyq" / "work.sh"), "nightly", "600"], start_new_session=True)
    try:
        _wait_for(toyq / "running" / "nightly")
        bus, rec = EventBus(), Recorder()
        bus.subscribe(rec)
        result = runner.deploy(load_config(root / "shipit.yaml").stage("local"), runner.DeployOptions(actor="t"), bus)
        assert result.outcome == "success", result.error
        assert _events(toyq) == [f"pause {result.deploy_id}", "nightly stopped", "resume", "requeue nightly"]
        _wait_for(toyq / "running" / "nightly")
        assert int((toyq / "running" / "nightly").read_text()) != work.pid
    finally:
        _cleanup(toyq, [work])


def test_two_adapters_with_one_name_is_a_config_error(project_factory, tmp_path):
    pool = _pool(tmp_path)
    p = project_factory(jobs={"adapters": [_adapter(pool), _adapter(pool)]})
    res = p.cli("config", "s")
    assert res.returncode == 2
    assert "jobs.adapters[1].name: adapter name 'toy' is used twice" in res.stderr


def test_one_adapters_failing_resume_does_not_keep_another_paused(project_factory, tmp_path):
    a, b = _pool(tmp_path / "a"), _pool(tmp_path / "b")
    p = project_factory(jobs={"adapters": [
        _adapter(a, name="a", resume=f"cd {a} && echo resume >> events.log && exit 5"),
        _adapter(b, name="b", pause=f"cd {b} && touch paused && exit 9"),
    ]})
    result, rec = p.deploy()
    assert result.outcome == "failed"
    assert "exit code 9" in (result.error or "") and "adapter a: resume failed" in (result.error or "")
    assert _events(a)[-1] == "resume" and not (b / "paused").exists()
    assert sorted(e["adapter"] for e in adapter_events(rec, "adapter.resumed")) == ["b"]


def test_sigterm_to_a_deploy_waiting_on_an_adapter_resumes_it(project_factory, tmp_path):
    pool = _pool(tmp_path)
    procs = [_start(pool, "long", 60)]
    try:
        p = project_factory(jobs={"adapters": [_adapter(pool)], "drain_timeout": 60})
        deploy = subprocess.Popen(
            [*SHIPIT_COMMAND.split(), "--config", str(p.config), "deploy", "s"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        _wait_for(pool / "paused")
        deploy.send_signal(signal.SIGTERM)
        _, err = deploy.communicate(timeout=60)
        assert deploy.returncode == 130, err
        assert not (pool / "paused").exists()
        # Nothing was stopped, so nothing is requeued: the work just carries on.
        assert _events(pool)[1:] == ["resume"]
        assert int((pool / "running" / "long").read_text()) == procs[0].pid
    finally:
        _cleanup(pool, procs)


def test_repeat_pause_keeps_an_expiring_pause_alive_until_resume(project_factory, tmp_path):
    pool = _pool(tmp_path)
    procs = [_start(pool, "slow", "third-pause")]
    try:
        adapter = _adapter(pool, repeat_pause=True)  # type: ignore[arg-type]
        p = project_factory(jobs={"adapters": [adapter], "lease_ttl": 3, "drain_timeout": 60})
        result, rec = p.deploy()
        assert result.outcome == "success", result.error
        events = _events(pool)
        # Repeated until the resume (the release may take a few more), never after it.
        words = [e.split()[0] for e in events]
        assert words[:3] == ["pause"] * 3 and words[-1] == "resume" and words.count("slow") == 1
        assert set(words) == {"pause", "slow", "resume"}
        assert not [e for e in adapter_events(rec, "job.stopped")]
        time.sleep(1.5)  # longer than the repeat interval (ttl/3 = 1 s): no pause after resume
        assert _events(pool) == events and not (pool / "paused").exists()
    finally:
        _cleanup(pool, procs)
