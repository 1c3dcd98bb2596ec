"""`shipit` as a user runs it: a real process deploying to the `local` host in a temp dir."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SECRET = "tok-7Hq2-never-shown"

CONFIG = """\
application: app
source:
  dir: src
deploy_to: {deploy_to}
shipit_command: {python} -m shipit
vars:
  api_token: {secret}
secrets: [api_token]
jobs:
  store: file
  lease_ttl: 5
hooks:
  after_release:
    - run: echo "token is {secret}"
{extra}
stages:
  demo:
    hosts: [local]
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text("print('v1')\n")
    write_config(tmp_path)
    return tmp_path


def write_config(project: Path, extra: str = "") -> None:
    (project / "shipit.yaml").write_text(
        CONFIG.format(
            deploy_to=project / "deploy", python=sys.executable, secret=SECRET, extra=extra
        )
    )


def env(**more: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("SHIPIT_CONFIG", "CI")}
    e.update(more)
    return e


def shipit(project: Path, *args: str, **more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shipit", *args],
        cwd=project,
        env=env(**more),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def test_deploy_json_ends_with_the_summary_and_hides_secrets(project: Path) -> None:
    proc = shipit(project, "deploy", "demo", "--json")
    assert proc.returncode == 0, proc.stderr
    objs = [json.loads(line) for line in proc.stdout.splitlines()]  # nothing but JSON
    assert all("kind" in o for o in objs[:-1])
    assert objs[0]["kind"] == "deploy.started"
    summary = objs[-1]["summary"]
    assert summary["outcome"] == "success" and summary["exit_code"] == 0
    assert summary["hosts"] == ["local"]
    current = project / "deploy" / "current"
    assert current.resolve().name == summary["release"]
    assert (current / "app.py").read_text() == "print('v1')\n"
    # The hook's command and output carried the secret: masked on stdout and in the log file.
    # (The engine and the renderers may use masks of different lengths: any run of stars.)
    masked = re.compile(r"token is \*{4,}")
    assert any(masked.fullmatch(o.get("message", "")) for o in objs)
    log = Path(summary["log"])
    assert log.parent == project / ".shipit" / "logs"
    assert log.name == f"demo-{summary['deploy_id']}.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700
    assert masked.search(log.read_text())
    for text in (proc.stdout, proc.stderr, log.read_text()):
        assert SECRET not in text

    # The read-only commands see that deploy.
    releases = json.loads(shipit(project, "releases", "demo", "--json").stdout)
    assert [r["name"] for r in releases["local"] if r["current"]] == [summary["release"]]
    history = shipit(project, "history", "demo", "--json")
    assert history.returncode == 0
    assert [h["deploy_id"] for h in json.loads(history.stdout)][:1] == [summary["deploy_id"]]
    check = shipit(project, "check", "demo")
    assert check.returncode == 0, check.stdout + check.stderr
    assert summary["release"] in check.stdout


def test_plain_output_off_a_tty_and_dry_run_changes_nothing(project: Path) -> None:
    proc = shipit(project, "deploy", "demo", "--dry-run")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("dry run: deploying directory src to demo (1 host), deploy ")
    assert "\x1b" not in proc.stdout
    assert any(line.startswith("[local] pre_deploy: $ ") for line in lines)
    assert any(line.startswith("summary: dry_run") for line in lines)
    assert lines[-1].startswith("log: ")
    assert not (project / "deploy" / "current").exists()
    assert SECRET not in proc.stdout


def read_until(fd: int, needle: bytes, limit: float = 60.0) -> bytes:
    """Read a pty until `needle` shows up (bounded, so a hang fails instead of blocking)."""
    seen = b""
    while needle not in seen:
        ready, _, _ = select.select([fd], [], [], limit)
        assert ready, f"no {needle!r} in {seen[-500:]!r}"
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    return seen


def test_confirmation_on_a_tty_and_no_means_nothing_deployed(project: Path) -> None:
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shipit", "deploy", "demo"],
        cwd=project,
        env=env(TERM="xterm"),
        stdin=follower,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    try:
        read_until(leader, f"Deploy {project / 'src'} to demo (local)? [y/N]".encode())
        os.write(leader, b"n\n")
        rest = read_until(leader, b"aborted")
        assert proc.wait(timeout=60) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    assert b"shipit: error: aborted: nothing was changed" in rest
    assert not (project / "deploy" / "current").exists()


def test_sigterm_during_a_deploy_cleans_up_and_exits_130(project: Path) -> None:
    write_config(project, extra="  before_release:\n    - run: echo waiting; sleep 60")
    proc = subprocess.Popen(
        [sys.executable, "-m", "shipit", "deploy", "demo", "--json"],
        cwd=project,
        env=env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if json.loads(line).get("message") == "waiting":
                break
        proc.send_signal(signal.SIGTERM)
        rest = proc.stdout.read()
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = json.loads(rest.splitlines()[-1])["summary"]
    assert summary["outcome"] == "interrupted"
    assert summary["exit_code"] == 130
    assert not (project / "deploy" / "current").exists()


def run_in_pty(project: Path, *args: str, rows: int, cols: int = 80, **more: str) -> tuple[int, str]:
    """`shipit ARGS` on a terminal of rows x cols; returns the exit code and what it showed."""
    import fcntl
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "shipit", *args], cwd=project,
        env=env(TERM="xterm", TZ="UTC", **more), stdin=follower, stdout=follower, stderr=follower,
    )
    os.close(follower)
    try:
        seen = read_until(leader, b"\0never\0")
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    return code, seen.decode(errors="replace").replace("\r\n", "\n")


HISTORY = [
    {"deploy_id": f"20261201T0{i}0000000000Z-abc{i}", "kind": "deploy", "actor": "ann@ci",
     "started": 1796112000.0 + 600 * i, "finished": 1796112003.0 + 600 * i, "seq": 2,
     "revision": f"{i}" * 40, "release": f"2026120100{i}000000000", "hosts": ["local"],
     "outcome": "success",
     "durations": {"pre_deploy": 0.1, "drain_jobs": 2.3, "release": 0.4, "restart_jobs": 0.2}}
    for i in range(1, 8)
]
HISTORY_80 = ["when              who     revision  hosts  outcome  took"] + [
    f"2026-12-01 {8 + (i // 6):02d}:{(i * 10) % 60:02d}  ann@ci  {str(i) * 8}  1      success  3.0s (drain 2.3s)"
    for i in range(7, 0, -1)
]


def test_history_pages_on_a_short_terminal_never_in_a_pipe(project: Path) -> None:
    (project / "deploy" / ".shipit").mkdir(parents=True)
    (project / "deploy" / ".shipit" / "history.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in HISTORY)
    )
    paged = project / "paged.txt"
    pager = f"sh -c 'cat > {paged}'"
    # 8 lines on a 6-row terminal: through $PAGER (it gets the 80-column table, colours removed).
    code, shown = run_in_pty(project, "history", "demo", rows=6, PAGER=pager)
    assert code == 0, shown
    assert [line.rstrip() for line in paged.read_text().splitlines()] == HISTORY_80
    assert "ann@ci" not in shown
    paged.unlink()
    # --no-pager, or a screen tall enough: printed as is.
    code, shown = run_in_pty(project, "history", "demo", "--no-pager", rows=6, PAGER=pager)
    assert code == 0 and not paged.exists()
    assert [re.sub(r"\x1b\[[0-9;]*m", "", line).rstrip() for line in shown.splitlines()] == HISTORY_80
    code, shown = run_in_pty(project, "history", "demo", rows=40, PAGER=pager)
    assert code == 0 and not paged.exists() and "ann@ci" in shown
    # A pipe and --json never page.
    piped = shipit(project, "history", "demo", "--offset", "5", PAGER=pager, TZ="UTC")
    assert piped.returncode == 0 and not paged.exists()
    assert [r.split()[2] for r in piped.stdout.splitlines()[1:]] == [
        HISTORY[1]["deploy_id"], HISTORY[0]["deploy_id"]]
    code, shown = run_in_pty(project, "history", "demo", "--json", rows=6, PAGER=pager)
    assert code == 0 and not paged.exists()
    assert [r["deploy_id"] for r in json.loads(shown)] == [r["deploy_id"] for r in HISTORY[::-1]]


def test_jobs_list_pages_and_offsets(project: Path) -> None:
    assert shipit(project, "deploy", "demo").returncode == 0
    store = f"file:{project / 'deploy' / 'shared' / 'shipit'}"
    for _ in range(6):
        ran = shipit(project, "job", "run", "--name", "tick", "--store", store, "--", "true")
        assert ran.returncode == 0, ran.stderr
    listed = shipit(project, "jobs", "list", "demo")
    lines = listed.stdout.splitlines()
    assert len(lines) == 6 and all("  tick  finished  " in line for line in lines)
    older = shipit(project, "jobs", "list", "demo", "-n", "2", "--offset", "4")
    assert older.stdout.splitlines() == lines[4:]
    paged = project / "paged.txt"
    code, shown = run_in_pty(project, "jobs", "list", "demo", rows=4,
                             PAGER=f"sh -c 'cat > {paged}'")
    assert code == 0 and paged.read_text().splitlines() == lines
    assert "tick" not in shown


def test_headers_name_what_is_deployed_and_a_failed_hook_says_failed(project: Path) -> None:
    first = shipit(project, "deploy", "demo")
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.splitlines()[0].startswith("deploying directory src to demo (1 host), deploy ")
    write_config(project, extra="    - run: echo broken >&2; exit 3")
    failed = shipit(project, "deploy", "demo")
    assert failed.returncode == 1
    hook_lines = [line for line in failed.stdout.splitlines() if line.startswith(("after_release:", "[local] after_release:"))]
    assert hook_lines == [
        "after_release: hook after_release (hosts) running",
        "[local] after_release: token is ********",
        "after_release: hook after_release (hosts) finished",
        "after_release: hook after_release (hosts) running",
        "[local] after_release: FAILED: [local] command failed with exit code 3: echo broken >&2; exit 3",
        "[local] after_release:   broken",
        "after_release: hook after_release (hosts) FAILED",
    ]
    write_config(project)
    second = shipit(project, "deploy", "demo")
    assert second.returncode == 0
    back = shipit(project, "rollback", "demo", "--yes")
    assert back.returncode == 0, back.stdout + back.stderr
    lines = back.stdout.splitlines()
    assert lines[0].startswith("rolling back demo to the previous release (1 host), deploy ")
    release = (project / "deploy" / "current").resolve().name
    assert any(re.fullmatch(rf"rollback \S+ success, release {release}", line) for line in lines)
    to = shipit(project, "rollback", "demo", "--yes", "--to", release)
    assert to.stdout.splitlines()[0].startswith(f"rolling back demo to release {release} (1 host), ")


def test_jobs_show_hides_the_checkpoint_unless_asked_and_prints_iso_times(project: Path) -> None:
    assert shipit(project, "deploy", "demo").returncode == 0
    store = f"file:{project / 'deploy' / 'shared' / 'shipit'}"
    saved = "token-like-checkpoint-data"
    job = f"{sys.executable} -m shipit job checkpoint '{{\"next\": 3, \"note\": \"{saved}\"}}'"
    ran = shipit(project, "job", "run", "--name", "ck", "--store", store, "--", "sh", "-c", job)
    assert ran.returncode == 0, ran.stderr
    run_id = json.loads(shipit(project, "jobs", "list", "demo", "--json").stdout)[0]["id"]
    text = shipit(project, "jobs", "show", "demo", run_id).stdout
    fields = dict(line.split(None, 1) for line in text.splitlines())
    assert fields["checkpoint"] == "<saved>"
    assert [k for k, v in fields.items() if saved in v] == ["command"]  # only the job's own argv
    for key in ("created_at", "started_at", "finished_at", "checkpoint_at"):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", fields[key]), (key, fields[key])
    assert fields["continues"] == "-" and fields["env"] == "-"
    assert fields["command"] == f"sh -c {shlex_quote(job)}"
    as_json = json.loads(shipit(project, "jobs", "show", "demo", run_id, "--json").stdout)
    assert as_json["checkpoint"] == "<saved>"  # the same as `jobs list --json` and the text
    with_state = shipit(project, "jobs", "show", "demo", run_id, "--state").stdout
    assert f'checkpoint         {{"next": 3, "note": "{saved}"}}' in with_state.splitlines()
    full = json.loads(shipit(project, "jobs", "show", "demo", run_id, "--json", "--state").stdout)
    assert full["checkpoint"] == {"next": 3, "note": saved}


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)
