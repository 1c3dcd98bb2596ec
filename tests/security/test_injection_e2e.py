"""End to end: hostile names and paths through whole deploys never run as shell.

A project whose application name, stage name, deploy_to, linked file/dir, hook environment and
job (name, key, arguments, cwd, recorded env) all carry payloads that would create a `pwned`
file if any shell evaluated them. Deployed with the real CLI to the `local` host, with a job
stopped by the deploy and restarted by the host agent; and deployed to a real sshd host. Then:
no `pwned` anywhere, and every value arrived byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from shipit.gate.base import Run
from shipit.gate.file import FileStore
from tests.harness.sshd import TestHost, write_shipit_yaml

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SHIPIT = [sys.executable, "-m", "shipit"]
P = "$(touch pwned)`touch pwned`;touch pwned&&x|| 'q' \"d\" * é"
STAGE = "prod;touch pwned $(touch pwned)"
APP = "app `touch pwned` $(touch pwned)"
HOOK = 'printf "%s\\n" "$SHIPIT_STAGE" "$SHIPIT_APPLICATION" "$SHIPIT_DEPLOY_TO" > "$HOOK_OUT"'
# A job that writes what it got (argv, cwd, env) per attempt and runs until it is stopped.
JOB = textwrap.dedent(
    """
    import json, os, signal, sys, time
    out = os.environ["FUZZ_OUT"] + "." + os.environ["SHIPIT_ATTEMPT"]
    with open(out, "w") as fh:
        json.dump({"argv": sys.argv[1:], "cwd": os.getcwd(), "v": os.environ.get("FUZZ_V"),
                   "job": os.environ["SHIPIT_JOB"]}, fh)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    while True:
        time.sleep(0.05)
    """
)


def no_marker(*roots: Path) -> None:
    for root in roots:
        hits = [p for p in root.rglob("pwned*")]
        assert hits == [], hits


def wait_for(pred, what: str, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_local_deploy_with_hostile_names_and_a_job_restarted_by_the_agent(tmp_path: Path) -> None:
    root = tmp_path / "project"
    (root / "src").mkdir(parents=True)
    (root / "src" / "job.py").write_text(JOB)
    deploy_to = tmp_path / P / f"to {P}"
    linked = f"config/{P}.env"
    cfg = {
        "application": APP,
        "source": {"dir": "src"},
        "deploy_to": str(deploy_to).replace("$", "$$"),  # `$$` is a literal `$` in shipit.yaml
        "linked_files": [linked],
        "linked_dirs": [f"data {P}"],
        "shipit_command": f"{sys.executable} -m shipit",
        "jobs": {"store": "file", "lease_ttl": 5, "drain_timeout": 0.3, "grace": 5},
        "hooks": {"after_release": [{"run": HOOK}]},
        "stages": {STAGE: {"hosts": ["local"]}},
    }
    (root / "shipit.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True))
    hook_out = tmp_path / "hook out"
    env = {**os.environ, "HOOK_OUT": str(hook_out), "CI": "true"}
    env.pop("SHIPIT_STORE", None)
    (deploy_to / "shared" / "config").mkdir(parents=True)
    (deploy_to / "shared" / linked).write_text("shared\n")

    def shipit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*SHIPIT, *args], cwd=root, capture_output=True, text=True,
                              env=env, timeout=120, check=False)

    first = shipit("deploy", STAGE)
    assert first.returncode == 0, first.stderr
    assert hook_out.read_text() == f"{STAGE}\n{APP}\n{deploy_to}\n"
    assert (deploy_to / "current" / linked).read_text() == "shared\n"

    store_dir = deploy_to / "shared" / "shipit"
    out = tmp_path / f"job {P}"
    args = [P, "--", "-rf", "a\nb", "$HOME", "*"]
    job_env = {**env, "FUZZ_OUT": str(out), "FUZZ_V": P}
    job = subprocess.Popen(
        [*SHIPIT, "job", "run", "--store", f"file:{store_dir}", f"--name={P}", f"--key={P}",
         "--env", "FUZZ_V,FUZZ_OUT", "--host", "local", "--cwd", str(deploy_to / "current"),
         "--grace", "5", "--", sys.executable, "job.py", *args],
        cwd=tmp_path, env=job_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for(lambda: Path(f"{out}.1").exists(), "the job to start")
        second = shipit("deploy", STAGE)
        assert second.returncode == 0, second.stderr
        # The agent restarted it (`shipit job run --continues`), with everything it had.
        seen = json.loads(wait_for(lambda: Path(f"{out}.2").exists() and Path(f"{out}.2").read_text(),
                                   "the restarted job"))
        assert seen["argv"] == args and seen["v"] == P and seen["job"] == P
        assert seen["cwd"] == os.path.realpath(deploy_to / "current")
        assert json.loads(Path(f"{out}.1").read_text())["argv"] == args
        store = FileStore(str(store_dir))
        try:
            runs = store.list_runs()
            first_run = next(r for r in runs if r.attempt == 1)
            restarted = next(r for r in runs if r.continues == first_run.id)
            assert isinstance(restarted, Run) and restarted.key == P and restarted.job == P
            assert restarted.command == first_run.command and restarted.env["FUZZ_V"] == P
            for r in runs:
                if r.pid and r.state == "running":
                    os.kill(r.pid, signal.SIGTERM)
        finally:
            store.close()
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=10)
    no_marker(tmp_path, Path.cwd())


def test_ssh_deploy_with_hostile_deploy_to_linked_paths_and_hook_env(
    ssh_hosts3: list[TestHost], tmp_path: Path
) -> None:
    host = ssh_hosts3[0]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text("x = 1\n")
    deploy_to = tmp_path / P / f"to {P}"
    linked = f"config/{P}.env"
    hook_out = tmp_path / "hook out"
    hook = HOOK.replace('"$HOOK_OUT"', f"'{hook_out}'")
    cfg = write_shipit_yaml(
        tmp_path / "shipit.yaml", [host], deploy_to=str(deploy_to).replace("$", "$$"),
        source={"dir": str(tmp_path / "src")}, stage=STAGE, application=APP,
        linked_files=[linked], linked_dirs=[f"data {P}"], jobs={"store": "sqlite", "lease_ttl": 5},
        hooks={"before_release": [{"run": hook}]},
    )
    (deploy_to / "shared" / "config").mkdir(parents=True)
    (deploy_to / "shared" / linked).write_text("shared\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPIT_")}
    proc = subprocess.run([*SHIPIT, "--config", str(cfg), "deploy", STAGE], cwd=tmp_path,
                          capture_output=True, text=True, env={**env, "CI": "true"}, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert (deploy_to / "current" / linked).read_text() == "shared\n"
    assert hook_out.read_text() == f"{STAGE}\n{APP}\n{deploy_to}\n"
    status = subprocess.run([*SHIPIT, "--config", str(cfg), "status", STAGE], cwd=tmp_path,
                            capture_output=True, text=True, env=env, timeout=60, check=False)
    assert status.returncode == 0, status.stderr
    no_marker(tmp_path)
