"""Build the source archive: ONE tar.gz per deploy, built locally, uploaded to every host.

`repo:` keeps a bare mirror in `.shipit/cache/` next to shipit.yaml, fetches it, resolves the
wanted ref to a full SHA and runs `git archive`. `dir:` tars a directory honouring `exclude`;
its revision is the git HEAD (+ "-dirty") when the directory is in a git work tree, else a hash
of the content, so that revisions.log and history always say what was deployed.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import os
import re
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from shipit.config.model import SourceConfig
from shipit.errors import ConfigError, UsageError

# Speed matters more than size: the archive crosses a LAN or loopback, once per host.
_GZIP_LEVEL = 1


@dataclass(frozen=True)
class Archive:
    path: str
    revision: str
    branch: str | None  # the branch deployed, for revisions.log (None for a SHA or a dir)
    kind: str  # "repo" | "dir"


def _git(args: list[str], cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=False,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"},
        )
    except FileNotFoundError:
        raise UsageError("git is not installed on this machine (needed for source.repo)") from None


def _is_url(repo: str) -> bool:
    return "://" in repo or re.match(r"^[\w.-]+@[\w.-]+:", repo) is not None


def _cache_dir(repo: str, base_dir: Path) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", repo.rstrip("/").rsplit("/", 1)[-1])[:40]
    digest = hashlib.sha256(repo.encode()).hexdigest()[:12]
    return base_dir / ".shipit" / "cache" / f"{slug}-{digest}.git"


def _mirror(repo: str, base_dir: Path) -> Path:
    url = repo if _is_url(repo) else str((base_dir / repo).resolve())
    if not _is_url(repo) and not Path(url).exists():
        raise ConfigError(f"source.repo: {repo!r} does not exist")
    cache = _cache_dir(url, base_dir)
    cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Two deploys from one checkout must not fetch into the same mirror at once.
    with open(f"{cache}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (cache / "HEAD").exists():
            res = _git(["fetch", "--prune", "--force", "origin", "+refs/*:refs/*"], cwd=str(cache))
        else:
            res = _git(["clone", "--mirror", "--quiet", url, str(cache)])
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["git failed"])[-1]
            raise ConfigError(f"source.repo: cannot fetch {repo!r}: {last}")
    return cache


def _resolve(cache: Path, ref: str, repo: str) -> str:
    for candidate in (f"refs/heads/{ref}", f"refs/tags/{ref}", ref):
        res = _git(["rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}"], cwd=str(cache))
        if res.returncode == 0 and res.stdout.strip():
            return res.stdout.strip()
    raise UsageError(f"unknown revision or branch {ref!r} in {repo}")


def _excluded(rel: str, name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(rel, p) for p in patterns)


def _walk(root: Path, patterns: list[str]) -> list[str]:
    """Paths (relative, sorted) to put in the archive; excluded directories are not entered."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for d in sorted(dirnames):
            rel = f"{rel_dir}/{d}" if rel_dir else d
            # .shipit/ at the top is shipit's own local state (the mirror cache), never code.
            if (rel == ".shipit") or _excluded(rel, d, patterns):
                continue
            if os.path.islink(os.path.join(dirpath, d)):
                out.append(rel)  # archived as a link, not followed
                continue
            keep.append(d)
            out.append(rel)
        dirnames[:] = keep
        for f in sorted(filenames):
            rel = f"{rel_dir}/{f}" if rel_dir else f
            if not _excluded(rel, f, patterns):
                out.append(rel)
    return sorted(out)


def _dir_revision(root: Path, files: list[str]) -> str:
    head = _git(["rev-parse", "HEAD"], cwd=str(root))
    if head.returncode == 0 and head.stdout.strip():
        status = _git(["status", "--porcelain", "--", "."], cwd=str(root))
        dirty = status.returncode == 0 and status.stdout.strip() != ""
        return head.stdout.strip() + ("-dirty" if dirty else "")
    digest = hashlib.sha256()
    for rel in files:
        path = root / rel
        digest.update(rel.encode() + b"\0")
        if path.is_file() and not path.is_symlink():
            digest.update(path.read_bytes())
        elif path.is_symlink():
            digest.update(os.readlink(path).encode())
        digest.update(b"\0")
    return "content-" + digest.hexdigest()[:16]


def build_archive(
    source: SourceConfig, base_dir: str | Path, out_dir: str | Path, revision: str | None = None
) -> Archive:
    """Build the archive into out_dir. base_dir is the directory holding shipit.yaml: relative
    `repo:`/`dir:` paths and the mirror cache are relative to it."""
    base = Path(base_dir).resolve()
    out = Path(out_dir) / "source.tar.gz"
    if source.repo:
        ref = revision or source.revision or source.branch
        cache = _mirror(source.repo, base)
        sha = _resolve(cache, ref, source.repo)
        res = _git(["archive", "--format=tar.gz", f"-{_GZIP_LEVEL}", "-o", str(out), sha], cwd=str(cache))
        if res.returncode != 0:
            raise UsageError(f"git archive of {sha} failed: {res.stderr.strip()}")
        branch = None if (revision or source.revision) and ref not in _branches(cache) else ref
        return Archive(str(out), sha, branch, "repo")
    assert source.dir
    root = (base / source.dir).resolve()
    if not root.is_dir():
        raise ConfigError(f"source.dir: {source.dir!r} is not a directory (looked in {root})")
    if revision:
        raise UsageError("--revision needs source.repo; source.dir deploys the directory as it is")
    files = _walk(root, list(source.exclude))
    with tarfile.open(out, "w:gz", compresslevel=_GZIP_LEVEL) as tar:
        for rel in files:
            tar.add(root / rel, arcname=rel, recursive=False)
    return Archive(str(out), _dir_revision(root, files), None, "dir")


def _branches(cache: Path) -> set[str]:
    res = _git(["for-each-ref", "--format=%(refname:short)", "refs/heads"], cwd=str(cache))
    return set(res.stdout.split())
