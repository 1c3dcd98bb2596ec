"""`shipit job run` against real stores, real processes and real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shipit.gate.base import CHECKPOINTED, FAILED, FINISHED, INTERRUPTED, RUNNING
from shipit.gate.url import open_store
from tests.jobs.runtime_kit import (
    EXAMPLES,
    SHIPIT,
    JobStore,
    close_gate,
    dump_env_command,
    job_env,
    lines_of,
    load,
    only_run,
    read_line,
    start,
    stop_run,
    wait_pid_gone,
    wait_until,
)


def test_exit_code_passes_through_and_outcome_is_recorded(job_store: JobStore) -> None:
    env = job_env(job_store.env)
    failing = start(job_store.url, ["sh", "-c", "exit 7"], env=env)
    assert failing.wait(timeout=30) == 7
    ok = start(job_store.url, ["true"], env=env)
    assert ok.wait(timeout=30) == 0
    with job_store.open() as store:
        by_job = {r.job: r for r in store.list_runs()}
    assert by_job["sh"].state == FAILED and by_job["sh"].exit_code == 7
    assert by_job["true"].state == FINISHED and by_job["true"].exit_code == 0


def test_run_records_command_cwd_and_only_allow_listed_env(
    job_store: JobStore, tmp_path: Path
) -> None:
    seen = tmp_path / "env.json"
    env = job_env(job_store.env, API_TOKEN="t0k", REGION="eu", SHIPIT_ENV_ALLOW="REGION",
                  NOT_LISTED="x")
    cmd = dump_env_command(seen)
    proc = start(job_store.url, cmd, "--name", "envdump", "--key", "k1", "--env", "API_TOKEN",
                 "--cwd", str(tmp_path), env=env)
    assert proc.wait(timeout=30) == 0
    with job_store.open() as store:
        run = only_run(store)
    assert run.job == "envdump" and run.key == "k1" and run.host == "h1"
    assert run.command == tuple(cmd)
    assert run.cwd == str(tmp_path)
    assert run.env == {"API_TOKEN": "t0k", "REGION": "eu"}
    child = load(seen)
    assert child["SHIPIT_RUN_ID"] == run.id
    assert child["SHIPIT_JOB"] == "envdump" and child["SHIPIT_ATTEMPT"] == "1"
    assert child["SHIPIT_STORE"] == job_store.url
    assert "SHIPIT_RESUME_STATE" not in child


def _release(root: Path, name: str) -> Path:
    rel = root / "releases" / name
    rel.mkdir(parents=True)
    (rel / "job.sh").write_text(f'echo "{name} $(basename "$(pwd -P)")" >> "$OUT"\n')
    return rel


def _switch(root: Path, release: Path) -> None:
    tmp = root / "current.tmp"
    tmp.symlink_to(release)
    os.replace(tmp, root / "current")  # atomic, like the deploy's switch


def test_closed_gate_waits_names_holder_then_runs_the_release_live_after_reopen(
    job_store: JobStore, tmp_path: Path
) -> None:
    app = tmp_path / "app"
    old, new = _release(app, "r1"), _release(app, "r2")
    _switch(app, old)
    out = tmp_path / "out.txt"
    with job_store.open() as store:
        lease = close_gate(store)
        proc = start(job_store.url, ["sh", "job.sh"], "--cwd", str(app / "current"),
                     env=job_env(job_store.env, OUT=str(out)))
        line = read_line(proc.stderr)  # printed once the claim found the gate closed
        assert "alice@ci" in line and "d-42" in line and "deploying v2" in line
        assert "until" in line and "since" in line
        assert store.list_runs() == []
        _switch(app, new)
        store.open_gate(lease.epoch, actor="alice@ci")
        assert proc.wait(timeout=30) == 0
        run = only_run(store)
    assert out.read_text() == "r2 r2\n"
    assert run.cwd == str(app / "current")  # recorded unresolved, so restarts follow `current`
    assert proc.stderr.read() == ""  # the holder line was the only one


def test_gate_closed_past_max_wait_exits_75_and_records_nothing(
    job_store: JobStore, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    with job_store.open() as store:
        close_gate(store)
        proc = start(job_store.url, ["touch", str(marker)], "--max-wait", "0.3",
                     env=job_env(job_store.env))
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 75
        assert store.list_runs() == []
    assert not marker.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "alice@ci" in lines[0]
    assert lines[1].startswith("shipit: error:") and "gave up" in lines[1]


def test_expired_lease_counts_as_open(job_store: JobStore) -> None:
    with job_store.open() as store:
        close_gate(store, ttl=0.5)  # a deploy that died: nobody renews the lease
        proc = start(job_store.url, ["true"], "--max-wait", "30", env=job_env(job_store.env))
        assert proc.wait(timeout=30) == 0
        assert only_run(store).state == FINISHED


def _crunch(total: int, out: Path) -> list[str]:
    return [sys.executable, str(EXAMPLES / "crunch.py"), str(total), str(out)]


def test_stop_request_makes_the_stateful_job_checkpoint(
    job_store: JobStore, tmp_path: Path
) -> None:
    out = tmp_path / "items.txt"
    proc = start(job_store.url, _crunch(100000, out), "--grace", "20",
                 env=job_env(job_store.env, CRUNCH_DELAY="0.01"))
    assert "starting at 1" in read_line(proc.stdout)
    with job_store.open() as store:
        run = only_run(store)
        assert run.pid == proc.pid  # the deploy signals the supervisor, never the job
        lease = close_gate(store)
        stop_run(store, run, lease)
        assert proc.wait(timeout=30) == 0
        run = store.get_run(run.id)
    assert run.state == CHECKPOINTED
    done = lines_of(out)
    assert run.checkpoint == {"next": len(done) + 1}
    assert done == list(range(1, len(done) + 1))


def test_job_ignoring_term_is_killed_after_grace_and_interrupted(job_store: JobStore) -> None:
    stubborn = ["sh", "-c", 'trap "" TERM; echo ready; while :; do sleep 0.05; done']
    proc = start(job_store.url, stubborn, "--grace", "0.3", env=job_env(job_store.env))
    assert read_line(proc.stdout) == "ready\n"
    with job_store.open() as store:
        run = only_run(store)
        stop_run(store, run, close_gate(store))
        assert proc.wait(timeout=30) == 128 + signal.SIGKILL
        run = store.get_run(run.id)
        assert run.state == INTERRUPTED
        assert "killed" in (run.message or "")
        assert not store.is_alive(run)


def test_sigkilled_supervisor_takes_its_job_with_it(job_store: JobStore) -> None:
    proc = start(job_store.url, ["sh", "-c", "echo $$; exec sleep 60"],
                 env=job_env(job_store.env))
    child = int(read_line(proc.stdout))
    with job_store.open() as store:
        run = only_run(store)
        assert store.is_alive(run) or job_store.kind == "postgres"
        proc.kill()
        proc.wait(timeout=30)
        assert wait_pid_gone(child), "the job outlived its SIGKILLed supervisor"
        assert store.get_run(run.id).state == RUNNING  # nobody recorded an outcome
        if job_store.kind != "postgres":
            assert not store.is_alive(store.get_run(run.id))
    if job_store.kind == "postgres":
        # Liveness there is heartbeat age: with a short staleness window, the silence shows.
        with job_store.open(heartbeat_stale=0.5) as strict:
            assert wait_until(lambda: not strict.is_alive(strict.get_run(run.id)))


def test_continue_hands_over_state_and_items_run_exactly_once(
    job_store: JobStore, tmp_path: Path
) -> None:
    out, total = tmp_path / "items.txt", 60
    env = job_env(job_store.env, CRUNCH_DELAY="0.01")
    first = start(job_store.url, _crunch(total, out), "--name", "crunch", env=env)
    read_line(first.stdout)
    with job_store.open() as store:
        run = only_run(store)
        lease = close_gate(store)
        stop_run(store, run, lease)
        assert first.wait(timeout=30) == 0
        stopped = store.get_run(run.id)
        assert stopped.state == CHECKPOINTED
        store.open_gate(lease.epoch, actor="alice@ci")
        # What the deploy's restart runs: no command, everything comes from the stopped run.
        second = start(job_store.url, [], "--continues", run.id, env=env)
        assert f"starting at {stopped.checkpoint['next']}" in read_line(second.stdout)
        assert second.wait(timeout=60) == 0
        new = store.list_runs()[0]
    assert new.continues == run.id and new.attempt == 2 and new.restarts == 1
    assert new.command == stopped.command and new.job == "crunch"
    assert new.state == FINISHED
    assert lines_of(out) == list(range(1, total + 1))


def test_shell_job_checkpoints_through_the_cli_and_resumes(
    job_store: JobStore, tmp_path: Path
) -> None:
    out, total = tmp_path / "count.txt", 12
    env = job_env(job_store.env, COUNT_DELAY="0.05")
    cmd = ["sh", str(EXAMPLES / "count.sh"), str(total), str(out)]
    first = start(job_store.url, cmd, "--grace", "20", env=env)
    assert read_line(first.stdout) == "count: starting at 1\n"
    with job_store.open() as store:
        run = only_run(store)
        lease = close_gate(store)
        stop_run(store, run, lease)
        assert first.wait(timeout=30) == 0
        stopped = store.get_run(run.id)
        assert stopped.state == CHECKPOINTED
        assert stopped.checkpoint == len(lines_of(out)) + 1
        store.open_gate(lease.epoch, actor="alice@ci")
        second = start(job_store.url, [], "--continues", run.id, env=env)
        assert read_line(second.stdout) == f"count: starting at {stopped.checkpoint}\n"
        assert second.wait(timeout=60) == 0
        assert store.list_runs()[0].progress_done == total
    assert lines_of(out) == list(range(1, total + 1))


def test_continuation_stopped_before_its_own_checkpoint_keeps_the_state(
    job_store: JobStore,
) -> None:
    waiter = ["sh", "-c", 'echo "got $SHIPIT_RESUME_STATE"; exec sleep 60']
    with job_store.open() as store:
        first = start(job_store.url, ["sh", "-c", "echo go; exec sleep 60"],
                      env=job_env(job_store.env))
        read_line(first.stdout)
        run = only_run(store)
        store.save_checkpoint(run.id, {"cursor": "abc"})
        lease = close_gate(store)
        stop_run(store, run, lease)
        first.wait(timeout=30)
        store.open_gate(lease.epoch, actor="t")
        second = start(job_store.url, waiter, "--continues", run.id, env=job_env(job_store.env))
        assert read_line(second.stdout) == 'got {"cursor": "abc"}\n'
        run2 = store.list_runs()[0]
        lease = close_gate(store)
        stop_run(store, run2, lease)
        second.wait(timeout=30)
        run2 = store.get_run(run2.id)
    assert run2.state == INTERRUPTED  # it never checkpointed itself...
    assert run2.checkpoint == {"cursor": "abc"}  # ...but the next run still gets the state


def test_unreachable_store_fails_closed(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    proc = subprocess.run(
        [*SHIPIT, "job", "run", "--store", f"sqlite:{blocker}/jobs.db", "--", "touch", str(marker)],
        capture_output=True, text=True, timeout=30, env=job_env({}),
    )
    assert proc.returncode == 5
    assert proc.stderr.startswith("shipit: error:") and proc.stderr.count("\n") == 1
    assert not marker.exists()


def test_unreachable_postgres_fails_closed(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    dsn = "postgresql://shipit:s3cret@127.0.0.1:1/shipit?connect_timeout=2"
    proc = subprocess.run(
        [*SHIPIT, "job", "run", "--store", "postgres", "--", "touch", str(marker)],
        capture_output=True, text=True, timeout=30, env=job_env({"SHIPIT_DSN": dsn}),
    )
    assert proc.returncode == 5
    assert "s3cret" not in proc.stderr and proc.stderr.count("\n") == 1
    assert not marker.exists()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["job", "run", "--", "true"], "no job store"),
        (["job", "run", "--store", "sqlite:/tmp/x.db"], "no command"),
        (["job", "run", "--grace", "soon", "--", "true"], "number of seconds"),
        (["job", "run", "--store", "bogus:/x", "--", "true"], "unknown job store"),
        (["job", "checkpoint", "{}"], "SHIPIT_RUN_ID"),
    ],
)
def test_usage_mistakes_are_one_line_exit_2(argv: list[str], needle: str) -> None:
    proc = subprocess.run([*SHIPIT, *argv], capture_output=True, text=True, timeout=30,
                          env=job_env({}))
    assert proc.returncode == 2
    assert proc.stderr.startswith("shipit: error:") and proc.stderr.count("\n") == 1
    assert needle in proc.stderr


def test_command_not_found_is_127_and_recorded_failed(tmp_path: Path) -> None:
    url = f"sqlite:{tmp_path}/s/jobs.db"
    open_store(url).close()  # as the first deploy leaves it
    proc = subprocess.run([*SHIPIT, "job", "run", "--store", url, "--", "no-such-cmd-xyz"],
                          capture_output=True, text=True, timeout=30, env=job_env({}))
    assert proc.returncode == 127
    assert "no-such-cmd-xyz" in proc.stderr and proc.stderr.count("\n") == 1
    with open_store(url) as store:
        assert only_run(store).state == FAILED


def test_job_fast_path_imports_nothing_heavy(tmp_path: Path) -> None:
    open_store(f"sqlite:{tmp_path}/s/jobs.db").close()
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "shipit", "job", "run",
         "--store", f"sqlite:{tmp_path}/s/jobs.db", "--", "true"],
        capture_output=True, text=True, timeout=30, env=job_env({}),
    )
    assert proc.returncode == 0
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    heavy = {"click", "rich", "pydantic", "fabric", "paramiko", "invoke", "psycopg", "yaml"}
    assert not heavy & {name.split(".")[0] for name in imported}


def test_second_run_of_a_busy_key_does_not_start(job_store: JobStore, tmp_path: Path) -> None:
    marker = tmp_path / "second-ran"
    env = job_env(job_store.env)
    first = start(job_store.url, ["sh", "-c", "echo up; exec sleep 60"], "--key", "nightly", env=env)
    read_line(first.stdout)
    try:
        second = start(job_store.url, ["touch", str(marker)], "--key", "nightly", env=env)
        _, err = second.communicate(timeout=30)
        assert second.returncode == 75
        assert "nightly" in err and err.count("\n") == 1
        assert not marker.exists()
    finally:
        first.terminate()
        first.wait(timeout=30)
