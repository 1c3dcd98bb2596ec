"""Exact command text for the release builders; user strings must stay inert in a real shell."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from shipit.commands.hooks import hook_command
from shipit.commands.release import (
    facts_command,
    parse_facts,
    prepare_command,
    release_name,
    remove_partial_command,
    revlog_deployed,
    revlog_rolled_back,
    switch_back_command,
    switch_command,
)
from shipit.errors import ConfigError

NASTY = "it's $(touch pwned) `touch pwned`\nnext"
NASTY_PATH = "it's $(touch pwned) `touch pwned` x"  # paths cannot hold newlines


def sh(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, cwd=cwd, check=False)


def inert(where: Path) -> bool:
    """Nothing from NASTY ran: no file named pwned anywhere below `where`."""
    return not list(where.rglob("pwned"))


def test_release_name_is_a_utc_stamp_with_microseconds() -> None:
    when = datetime(2026, 11, 22, 5, 12, 30, 123456, tzinfo=timezone.utc)
    assert release_name(when) == "20261122051230123456"


def test_facts_command_exact() -> None:
    assert facts_command("/srv/my app", ["config/db.yml"], ["log"]) == "\n".join(
        [
            "d='/srv/my app'",
            "printf '@@shipit path %s\\n' \"$d\"",
            "mkdir -p \"$d\"/releases \"$d\"/shared \"$d\"/.shipit \"$d\"/shared/log 2>/dev/null && chmod 700 \"$d\"/.shipit || echo '@@shipit problem create'",
            "test -w \"$d\" || echo '@@shipit problem unwritable'",
            "test -e \"$d\"/shared/config/db.yml || echo '@@shipit problem missing_file 0'",
            'c=$(readlink "$d"/current 2>/dev/null) && echo "@@shipit current ${c##*/}"',
            'for r in "$d"/releases/*/; do',
            '  [ -d "$r" ] || continue',
            "  r=${r%/}; n=${r##*/}; ok=0; bad=0; rev=-",
            '  if [ -f "$r"/REVISION ]; then ok=1; rev=$(head -n 1 "$r"/REVISION); fi',
            '  [ ! -e "$r"/.shipit-bad ] || bad=1',
            '  echo "@@shipit release $n $ok $bad $rev"',
            "done",
            "echo '@@shipit end'",
        ]
    )


def test_facts_read_only_form_exact() -> None:
    assert facts_command("/srv/my app", ["config/db.yml"], ["log"], create=False) == "\n".join(
        [
            "d='/srv/my app'",
            "printf '@@shipit path %s\\n' \"$d\"",
            'if [ -d "$d" ]; then',
            "  test -w \"$d\" || echo '@@shipit problem unwritable'",
            "else",
            '  p="$d"; up=0',
            '  while [ -n "$p" ] && [ ! -e "$p" ]; do p=${p%/*}; up=$((up+1)); done',
            "  p=${p:-/}; k=ok",
            '  if [ ! -d "$p" ]; then k=notdir',
            '  elif mkdir "$p/.shipit-probe-$$" 2>/dev/null; then rmdir "$p/.shipit-probe-$$"',
            "  else k=unwritable; fi",
            '  echo "@@shipit absent $up $k"',
            "fi",
            "test -e \"$d\"/shared/config/db.yml || echo '@@shipit problem missing_file 0'",
            'c=$(readlink "$d"/current 2>/dev/null) && echo "@@shipit current ${c##*/}"',
            'for r in "$d"/releases/*/; do',
            '  [ -d "$r" ] || continue',
            "  r=${r%/}; n=${r##*/}; ok=0; bad=0; rev=-",
            '  if [ -f "$r"/REVISION ]; then ok=1; rev=$(head -n 1 "$r"/REVISION); fi',
            '  [ ! -e "$r"/.shipit-bad ] || bad=1',
            '  echo "@@shipit release $n $ok $bad $rev"',
            "done",
            "echo '@@shipit end'",
        ]
    )


def test_facts_read_only_form_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "app"
    out = sh(facts_command(str(target), ["a.env"], ["log"], create=False), tmp_path)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # the probe directory is gone again
    facts = parse_facts(out.stdout)
    assert facts["absent"] and facts["complete_output"]
    assert (facts["parent_up"], facts["parent_state"]) == (1, "ok")
    assert facts["problems"] == [("missing_file", 0)]


def _absent(path: Path | str, cwd: Path) -> tuple[object, object, object]:
    facts = parse_facts(sh(facts_command(str(path), create=False), cwd).stdout)
    assert facts["complete_output"]
    return facts["absent"], facts["parent_up"], facts["parent_state"]


def test_facts_read_only_form_tells_whether_a_missing_deploy_to_can_be_created(tmp_path: Path) -> None:
    assert _absent(tmp_path / NASTY_PATH / "a" / "b", tmp_path) == (True, 3, "ok")
    (tmp_path / "file").write_text("x")
    assert _absent(tmp_path / "file" / "app", tmp_path) == (True, 1, "notdir")
    assert _absent(tmp_path / "file", tmp_path) == (True, 0, "notdir")
    # root passes `test -w` on /proc, yet nothing can be made there: the probe tells.
    assert _absent("/proc/nope/app", tmp_path) == (True, 2, "unwritable")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    assert inert(tmp_path)
    existing = tmp_path / "there"
    existing.mkdir()
    assert _absent(existing, tmp_path) == (False, None, None)


def _unprivileged_sh(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`sh -c script` as an ordinary user: as root (CI), the shell runs as nobody through
    setpriv, since root writes into a 0500 directory anyway and the probe would see no problem."""
    if os.geteuid() != 0:
        return sh(script, cwd)
    who = pwd.getpwnam("nobody")
    return subprocess.run(["setpriv", f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}", "--clear-groups",
                           "sh", "-c", script], capture_output=True, text=True, cwd=cwd, check=False)


def test_facts_read_only_form_reports_an_unwritable_parent_and_deploy_to(tmp_path: Path) -> None:
    # pytest's tmp_path is private to root; the tree lives where nobody can reach it, and is
    # nobody's own, so the 0500 modes are what stops the writes.
    base = Path(tempfile.mkdtemp(prefix="shipit-facts-"))
    try:
        base.chmod(0o755)
        locked = base / "locked"
        (locked / "app").mkdir(parents=True)
        if os.geteuid() == 0:
            who = pwd.getpwnam("nobody")
            for path in (locked, locked / "app"):
                os.chown(path, who.pw_uid, who.pw_gid)
        locked.chmod(0o500)
        (locked / "app").chmod(0o500)
        probe = parse_facts(_unprivileged_sh(facts_command(str(locked / "new"), create=False), base).stdout)
        assert probe["complete_output"]
        assert (probe["absent"], probe["parent_up"], probe["parent_state"]) == (True, 1, "unwritable")
        facts = parse_facts(_unprivileged_sh(facts_command(str(locked / "app"), create=False), base).stdout)
        assert facts["problems"] == [("unwritable", None)]
        assert not (locked / "new").exists()
    finally:
        for path in (base / "locked", base / "locked" / "app"):
            if path.exists():
                path.chmod(0o700)
        shutil.rmtree(base)


def test_facts_reports_layout_and_problems(tmp_path: Path) -> None:
    target = tmp_path / NASTY_PATH
    script = facts_command(str(target), ["missing.env", NASTY], [NASTY + "dir"])
    facts = parse_facts(sh(script, tmp_path).stdout)
    assert facts["problems"] == [("missing_file", 0), ("missing_file", 1)]
    assert (target / "shared" / (NASTY + "dir")).is_dir()
    assert oct((target / ".shipit").stat().st_mode & 0o777) == "0o700"
    assert inert(tmp_path)
    # Releases: one complete (with REVISION), one partial, one bad; current points at the first.
    rel = target / "releases"
    (rel / "20260101000000000001").mkdir()
    (rel / "20260101000000000001" / "REVISION").write_text("abc123\n")
    (rel / "20260101000000000002").mkdir()
    (rel / "20260101000000000003").mkdir()
    (rel / "20260101000000000003" / "REVISION").write_text("def456\n")
    (rel / "20260101000000000003" / ".shipit-bad").touch()
    (target / "current").symlink_to("releases/20260101000000000001")
    facts = parse_facts(sh(script, tmp_path).stdout)
    assert facts["path"] == str(target)
    assert facts["current"] == "20260101000000000001"
    assert facts["releases"] == [
        {"name": "20260101000000000001", "complete": True, "bad": False, "revision": "abc123"},
        {"name": "20260101000000000002", "complete": False, "bad": False, "revision": None},
        {"name": "20260101000000000003", "complete": True, "bad": True, "revision": "def456"},
    ]


def test_prepare_command_exact() -> None:
    assert prepare_command(
        "/srv/app", "20261122051230123456", "/srv/app/.shipit/upload-x.tar.gz", "abc",
        ["config/my db.yml"], ["log"],
    ) == "\n".join(
        [
            "set -e",
            "d=/srv/app",
            'r="$d"/releases/20261122051230123456',
            'mkdir "$r"',
            'tar -xzf /srv/app/.shipit/upload-x.tar.gz -C "$r"',
            "rm -f /srv/app/.shipit/upload-x.tar.gz",
            "rm -rf \"$r\"/'config/my db.yml'",
            'mkdir -p "$r"/config',
            "ln -s '../../../shared/config/my db.yml' \"$r\"/'config/my db.yml'",
            'mkdir -p "$d"/shared/log',
            'rm -rf "$r"/log',
            'ln -s ../../shared/log "$r"/log',
            "printf '%s\\n' abc > \"$r\"/REVISION",
        ]
    )


@pytest.mark.parametrize("bad", ["/etc/passwd", "../up", "a/../../b", "", "."])
def test_linked_paths_must_stay_inside_the_release(bad: str) -> None:
    with pytest.raises(ConfigError):
        prepare_command("/srv/app", "r", "/a.tgz", "abc", [bad])


def test_prepare_replaces_archive_content_with_shared_links_and_fails_on_collision(tmp_path: Path) -> None:
    d = tmp_path / "app"
    (d / "shared" / "conf").mkdir(parents=True)
    (d / "shared" / "conf" / NASTY).write_text("shared secret\n")
    (d / "releases").mkdir()
    src = tmp_path / "src"
    (src / "conf").mkdir(parents=True)
    (src / "conf" / NASTY).write_text("from archive\n")
    (src / "log").mkdir()
    archive = tmp_path / "a.tgz"
    subprocess.run(["tar", "-czf", str(archive), "-C", str(src), "."], check=True)
    script = prepare_command(str(d), "R1", str(archive), NASTY, [f"conf/{NASTY}"], ["log"])
    res = sh(script, tmp_path)
    assert res.returncode == 0, res.stderr
    rel = d / "releases" / "R1"
    assert (rel / "conf" / NASTY).read_text() == "shared secret\n"
    assert (rel / "log").is_symlink() and (d / "shared" / "log").is_dir()
    assert (rel / "REVISION").read_text() == NASTY + "\n"
    assert not archive.exists()
    assert inert(tmp_path)
    subprocess.run(["tar", "-czf", str(archive), "-C", str(src), "."], check=True)
    assert sh(script, tmp_path).returncode != 0  # same name again: mkdir without -p refuses


def test_switch_command_exact() -> None:
    assert switch_command(
        "/srv/app", "R3", keep_releases=2, revlog_line="Branch main (at abc) deployed as release R3 by me",
        record_json='{"o":"it\'s"}', keep=["R1"],
    ) == "\n".join(
        [
            "set -e",
            "d=/srv/app",
            'cd "$d"',
            'p=$(readlink current 2>/dev/null) || p=""',
            "printf '@@shipit previous %s\\n' \"${p##*/}\"",
            "rm -f current.tmp-R3",
            "ln -s releases/R3 current.tmp-R3",
            "mv -T current.tmp-R3 current",
            "printf '%s\\n' 'Branch main (at abc) deployed as release R3 by me' >> revisions.log",
            "(umask 077 && printf '%s\\n' '{\"o\":\"it'\"'\"'s\"}' >> \"$d\"/.shipit/history.jsonl)",
            "ls -1 releases | sort -r | tail -n +3 | while IFS= read -r old; do",
            '  case "$old" in R3|R1|"${p##*/}") ;; *) rm -rf "releases/$old" && echo "@@shipit removed $old" ;; esac',
            "done",
        ]
    )


def test_switch_keeps_n_newest_and_the_rollback_target(tmp_path: Path) -> None:
    d = tmp_path / "app"
    for name in ["R1", "R2", "R3", "R4"]:
        (d / "releases" / name).mkdir(parents=True)
    (d / ".shipit").mkdir()
    (d / "current").symlink_to("releases/R1")
    res = sh(switch_command(str(d), "R4", keep_releases=2, revlog_line=NASTY, record_json="{}", keep=["R1"]), tmp_path)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (d / "releases").iterdir()) == ["R1", "R3", "R4"]
    assert "@@shipit removed R2" in res.stdout
    assert res.stdout.splitlines()[0] == "@@shipit previous R1"
    assert str((d / "current").readlink()) == "releases/R4"
    assert (d / "revisions.log").read_text() == NASTY + "\n"
    assert oct((d / ".shipit" / "history.jsonl").stat().st_mode & 0o777) == "0o600"
    assert inert(tmp_path)


def test_switch_keeps_the_release_it_replaces_whatever_the_facts_said(tmp_path: Path) -> None:
    d = tmp_path / "app"
    for name in ["R1", "R2", "R3", "R4"]:
        (d / "releases" / name).mkdir(parents=True)
    (d / ".shipit").mkdir()
    (d / "current").symlink_to("releases/R2")  # another deploy moved it since the facts (R3)
    res = sh(switch_command(str(d), "R4", keep_releases=1, revlog_line="x", record_json="{}", keep=["R3"]), tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == "@@shipit previous R2"
    assert sorted(p.name for p in (d / "releases").iterdir()) == ["R2", "R3", "R4"]


def test_switch_back_exact_and_without_a_previous_release() -> None:
    assert switch_back_command("/srv/app", "R1", "R2", revlog_line="me rolled back to release R1", record_json="{}") == "\n".join(
        [
            "set -e",
            "d=/srv/app",
            'cd "$d"',
            "rm -f current.tmp-R1",
            "ln -s releases/R1 current.tmp-R1",
            "mv -T current.tmp-R1 current",
            "[ ! -d releases/R2 ] || touch releases/R2/.shipit-bad",
            "printf '%s\\n' 'me rolled back to release R1' >> revisions.log",
            "(umask 077 && printf '%s\\n' '{}' >> \"$d\"/.shipit/history.jsonl)",
        ]
    )
    assert switch_back_command("/srv/app", None, "R2", revlog_line=None, record_json="{}").splitlines()[3] == "rm -f current"


def test_remove_partial_exact() -> None:
    assert remove_partial_command("/srv/app", "R2", "/srv/app/.shipit/u.tar.gz", record_json="{}") == "\n".join(
        [
            "d=/srv/app",
            'rm -rf "$d"/releases/R2',
            "rm -f /srv/app/.shipit/u.tar.gz",
            "[ ! -d \"$d\"/.shipit ] || (umask 077 && printf '%s\\n' '{}' >> \"$d\"/.shipit/history.jsonl)",
        ]
    )


def test_revisions_log_lines_use_capistrano_wording() -> None:
    assert revlog_deployed("main", "abc", "R1", "ann") == "Branch main (at abc) deployed as release R1 by ann"
    assert revlog_deployed(None, "abc", "R1", "ann") == "Revision abc deployed as release R1 by ann"
    assert revlog_rolled_back("R1", "ann") == "ann rolled back to release R1"


def test_hook_command_exact_and_inert(tmp_path: Path) -> None:
    cmd = hook_command("echo \"$SHIPIT_STAGE\" > out", {"SHIPIT_STAGE": NASTY}, "/srv/app", "/srv/app/releases/R1")
    assert cmd == (
        "{ cd /srv/app/releases/R1 || cd /srv/app || :; } 2>/dev/null && env SHIPIT_STAGE="
        "'it'\"'\"'s $(touch pwned) `touch pwned`\nnext' sh -c 'echo \"$SHIPIT_STAGE\" > out'"
    )
    real = hook_command("echo \"$SHIPIT_STAGE\" > out; pwd >> out", {"SHIPIT_STAGE": NASTY}, str(tmp_path), str(tmp_path / "missing"))
    assert sh(real, tmp_path).returncode == 0
    assert (tmp_path / "out").read_text() == f"{NASTY}\n{tmp_path}\n"
    assert inert(tmp_path)


def test_home_relative_deploy_to_expands_on_the_host(tmp_path: Path) -> None:
    script = facts_command("~/my app", [], [])
    assert script.splitlines()[0] == 'd="$HOME"/\'my app\''
    res = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}, check=False)
    assert parse_facts(res.stdout)["path"] == f"{tmp_path}/my app"
    assert (tmp_path / "my app" / "releases").is_dir()
    with pytest.raises(ConfigError):
        facts_command("/srv/a\nb")
