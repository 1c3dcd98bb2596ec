"""`shipit check` on the local host: what it says about a deploy_to that does not exist yet."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipit import runner
from shipit.config.loader import load_config
from shipit.events import EventBus


def stage_for(tmp_path: Path, deploy_to: str, linked: str = "[]"):  # type: ignore[no-untyped-def]
    (tmp_path / "src").mkdir(exist_ok=True)
    path = tmp_path / "shipit.yaml"
    path.write_text(
        f"application: a\nsource: {{dir: src}}\ndeploy_to: {deploy_to}\nlinked_files: {linked}\n"
        "jobs: {store: file}\nstages: {s: {hosts: [local]}}\n"
    )
    return load_config(path, environ={}).stage("s")


def one(stage) -> runner.HostCheck:  # type: ignore[no-untyped-def]
    (result,) = runner.check(stage, EventBus())
    return result


def test_a_missing_deploy_to_the_first_deploy_can_create_is_ok_and_says_so(tmp_path: Path) -> None:
    target = tmp_path / "apps" / "a"
    result = one(stage_for(tmp_path, str(target)))
    assert (result.ok, result.problems) == (True, [])
    assert result.notes == [f"{target} does not exist yet; the first deploy creates it (in {tmp_path})"]
    assert not (tmp_path / "apps").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shipit.yaml", "src"]


@pytest.mark.parametrize(
    ("deploy_to", "problem"),
    [
        ("/proc/nope/app", "/proc/nope/app does not exist and cannot be created (parent /proc is not writable)"),
        ("{tmp}/file/app", "{tmp}/file/app does not exist and cannot be created ({tmp}/file is not a directory)"),
        ("{tmp}/file", "{tmp}/file exists but is not a directory"),
    ],
    ids=["unwritable-parent", "parent-is-a-file", "deploy_to-is-a-file"],
)
def test_a_deploy_to_that_cannot_be_created_is_a_problem(tmp_path: Path, deploy_to: str, problem: str) -> None:
    (tmp_path / "file").write_text("x")
    result = one(stage_for(tmp_path, deploy_to.format(tmp=tmp_path)))
    assert (result.ok, result.problems, result.notes) == (False, [problem.format(tmp=tmp_path)], [])


def test_an_existing_deploy_to_has_no_note_and_missing_linked_files_are_still_problems(tmp_path: Path) -> None:
    target = tmp_path / "app"
    (target / "shared").mkdir(parents=True)
    result = one(stage_for(tmp_path, str(target), linked="[.env]"))
    assert (result.ok, result.notes) == (False, [])
    assert result.problems == [f"linked file .env is missing in {target}/shared"]
