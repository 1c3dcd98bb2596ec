"""Source archives: git repos through a mirror cache, plain directories with excludes."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from shipit.config.model import SourceConfig
from shipit.errors import ConfigError, UsageError
from shipit.source import build_archive


def git(cwd: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x", "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def names(path: str) -> list[str]:
    with tarfile.open(path) as tar:
        return sorted(m.name.removeprefix("./") for m in tar.getmembers() if m.isfile())


def content(path: str, member: str) -> str:
    with tarfile.open(path) as tar:
        f = tar.extractfile(member)
        assert f
        return f.read().decode()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    (r / "app.py").write_text("v1\n")
    git(r, "add", ".")
    git(r, "commit", "-qm", "one")
    git(r, "tag", "v1")
    (r / "app.py").write_text("v2\n")
    git(r, "commit", "-qam", "two")
    git(r, "checkout", "-qb", "feature")
    (r / "feature.txt").write_text("f\n")
    git(r, "add", ".")
    git(r, "commit", "-qm", "three")
    git(r, "checkout", "-q", "main")
    return r


def test_repo_branch_tag_and_sha_resolve_to_full_shas(repo: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    src = SourceConfig(repo=str(repo))
    a = build_archive(src, project, out)
    assert a.revision == git(repo, "rev-parse", "main") and a.branch == "main"
    assert content(a.path, "app.py") == "v2\n"
    assert list((project / ".shipit" / "cache").glob("*.git"))  # the mirror lives next to shipit.yaml
    tagged = build_archive(src, project, out, revision="v1")
    assert tagged.revision == git(repo, "rev-parse", "v1^{commit}") and content(tagged.path, "app.py") == "v1\n"
    feature = build_archive(SourceConfig(repo=str(repo), branch="feature"), project, out)
    assert "feature.txt" in names(feature.path) and feature.branch == "feature"
    # A new commit upstream is seen on the next build: the mirror is fetched every time.
    (repo / "app.py").write_text("v3\n")
    git(repo, "commit", "-qam", "four")
    assert content(build_archive(src, project, out).path, "app.py") == "v3\n"


def test_unknown_revision_and_missing_repo_are_one_line_errors(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown revision or branch 'nope'"):
        build_archive(SourceConfig(repo=str(repo)), tmp_path, tmp_path, revision="nope")
    with pytest.raises(ConfigError, match="does not exist"):
        build_archive(SourceConfig(repo="no/such/repo"), tmp_path, tmp_path)


def test_dir_honours_excludes_and_hashes_content(tmp_path: Path) -> None:
    d = tmp_path / "site"
    (d / "pkg" / "__pycache__").mkdir(parents=True)
    (d / "pkg" / "__pycache__" / "x.pyc").write_text("x")
    (d / "pkg" / "mod.py").write_text("print(1)\n")
    (d / "notes.log").write_text("log\n")
    (d / ".shipit" / "cache").mkdir(parents=True)
    (d / ".shipit" / "cache" / "junk").write_text("j")
    out = tmp_path / "out"
    out.mkdir()
    src = SourceConfig(dir="site", exclude=["__pycache__", "*.log"])
    a = build_archive(src, tmp_path, out)
    assert names(a.path) == ["pkg/mod.py"]
    assert a.revision.startswith("content-")
    assert build_archive(src, tmp_path, out).revision == a.revision
    (d / "pkg" / "mod.py").write_text("print(2)\n")
    assert build_archive(src, tmp_path, out).revision != a.revision


def test_dir_in_a_git_work_tree_uses_head_and_dirty(repo: Path, tmp_path: Path) -> None:
    src = SourceConfig(dir=str(repo))
    a = build_archive(src, tmp_path, tmp_path)
    assert a.revision == git(repo, "rev-parse", "HEAD")
    (repo / "app.py").write_text("changed\n")
    assert build_archive(src, tmp_path, tmp_path).revision == git(repo, "rev-parse", "HEAD") + "-dirty"


def test_missing_dir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="source.dir: 'gone' is not a directory"):
        build_archive(SourceConfig(dir="gone"), tmp_path, tmp_path)
