"""The command builders (shipit/commands/*) keep user strings inert, proven by running them.

Each builder's script is run by a real `sh` against a sandbox whose paths and names carry shell
payloads. Every payload would create a file named `pwned` (somewhere under the sandbox) if any
shell ever evaluated it; after the scripts ran, there must be none, and the names the scripts
created must be exactly the user's names.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from shipit.commands.hooks import hook_command
from shipit.commands.release import (
    facts_command,
    history_read_command,
    parse_facts,
    prepare_command,
    remove_partial_command,
    revlog_deployed,
    switch_back_command,
    switch_command,
)
from shipit.errors import ConfigError

# Every entry runs `touch pwned` if a shell evaluates it (as a word, a command or in a glob).
PAYLOADS = [
    "$(touch pwned)", "`touch pwned`", "x;touch pwned", "x&&touch pwned", "x||touch pwned;",
    "x|touch pwned", "'$(touch pwned)'", '"$(touch pwned)"', "$(touch${IFS}pwned)", "a b c",
    "*", "?", "[a-z]", "~", "é ñ 🚀", "-rf", "$((1))", "x>pwned", "<(touch pwned)",
]
NAMES = [p for p in PAYLOADS if "/" not in p]


def sh(script: str, cwd: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script], cwd=cwd, input=stdin, capture_output=True,
                          text=True, timeout=30, check=False)


def no_marker(root: Path) -> None:
    hits = [p for p in root.rglob("*") if p.name == "pwned" or p.name.startswith("pwned")]
    assert hits == [], hits


def archive(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("payload", NAMES)
def test_release_lifecycle_with_a_hostile_deploy_to_and_linked_paths(payload: str, tmp_path: Path) -> None:
    work = tmp_path / "work"  # where the scripts start: a `touch pwned` would land here or below
    work.mkdir()
    deploy_to = tmp_path / payload / f"app {payload}"
    linked_file, linked_dir = f"config/{payload}.env", f"data/{payload}"
    facts = sh(facts_command(str(deploy_to), [linked_file], [linked_dir]), work)
    assert facts.returncode == 0, facts.stderr
    parsed = parse_facts(facts.stdout)
    assert parsed["path"] == str(deploy_to) and parsed["problems"] == [("missing_file", 0)]
    (deploy_to / "shared" / "config").mkdir()
    (deploy_to / "shared" / linked_file).write_text("shared\n")
    release = "20260101000000000001"
    upload = archive(tmp_path / f"up {payload}.tgz", {"app.py": "x = 1\n", linked_file: "archive\n"})
    revision = f"rev {payload}"
    prep = sh(prepare_command(str(deploy_to), release, str(upload), revision, [linked_file], [linked_dir]), work)
    assert prep.returncode == 0, prep.stderr
    rel = deploy_to / "releases" / release
    assert (rel / linked_file).read_text() == "shared\n" and (rel / linked_dir).is_symlink()
    assert (rel / "REVISION").read_text() == revision + "\n"
    record = json.dumps({"actor": payload, "revision": revision})
    switch = sh(switch_command(str(deploy_to), release, keep_releases=1,
                               revlog_line=revlog_deployed(payload, revision, release, payload),
                               record_json=record, keep=[payload]), work)
    assert switch.returncode == 0, switch.stderr
    assert (deploy_to / "current").resolve() == rel.resolve()
    assert (deploy_to / "revisions.log").read_text() == (
        f"Branch {payload} (at {revision}) deployed as release {release} by {payload}\n")
    history = sh(history_read_command(str(deploy_to), 5), work)
    assert json.loads(history.stdout.splitlines()[-1]) == json.loads(record)
    back = sh(switch_back_command(str(deploy_to), None, release, revlog_line=payload,
                                  record_json=record), work)
    assert back.returncode == 0, back.stderr
    assert (rel / ".shipit-bad").exists() and not (deploy_to / "current").exists()
    gone = sh(remove_partial_command(str(deploy_to), release, str(upload), record_json=record), work)
    assert gone.returncode == 0, gone.stderr
    assert not rel.exists() and not upload.exists()
    no_marker(tmp_path)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_hook_environment_values_reach_the_hook_as_data(payload: str, tmp_path: Path) -> None:
    env = {"SHIPIT_STAGE": payload, "SHIPIT_RELEASE": payload, "SHIPIT_APPLICATION": payload,
           "SHIPIT_DEPLOY_TO": payload, "SHIPIT_ACTOR": payload}
    deploy_to = tmp_path / "d"
    deploy_to.mkdir()
    script = hook_command('printf "%s|" "$SHIPIT_STAGE" "$SHIPIT_RELEASE" "$SHIPIT_APPLICATION"'
                          ' "$SHIPIT_DEPLOY_TO" "$SHIPIT_ACTOR"', env, str(deploy_to), None)
    res = sh(script, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"{payload}|" * 5
    no_marker(tmp_path)


@pytest.mark.parametrize("bad", ["/srv/a\ntouch pwned", "/srv/\n"])
def test_a_newline_in_a_path_is_refused_before_any_shell_sees_it(bad: str) -> None:
    with pytest.raises(ConfigError, match="newline"):
        facts_command(bad)
    with pytest.raises(ConfigError, match="newline"):
        prepare_command(bad, "r", "/tmp/a.tgz", "rev")


@pytest.mark.parametrize("linked", ["../escape", "/abs", "a/../../b", ".", ""])
def test_linked_paths_that_leave_the_release_are_refused(linked: str) -> None:
    with pytest.raises(ConfigError, match="linked path"):
        facts_command("/srv/app", [linked])
