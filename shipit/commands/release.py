"""Builders for the Capistrano layout: facts, prepare, switch, remove-partial, switch-back.

Each builder returns ONE shell script so that a redeploy costs a fixed, small number of remote
commands per host (see docs/ARCHITECTURE.md "Remote commands per host").

Facts are printed as lines starting with FACT_PREFIX so that noise from login scripts cannot be
mistaken for them; names are printed only when they are release stamps we created ourselves, and
problems are reported by code + index, never by echoing user text back through the shell.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from datetime import datetime, timezone
from shlex import quote as q

from shipit.errors import ConfigError

FACT_PREFIX = "@@shipit "
BAD_MARKER = ".shipit-bad"
HISTORY_FILE = ".shipit/history.jsonl"


def release_name(now: datetime | None = None) -> str:
    """UTC stamp with microseconds: sortable and unique even within one second."""
    now = now or datetime.now(timezone.utc)
    return now.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S%f")


def shell_path(path: str) -> str:
    """A path as shell text: quoted, except that a leading `~/` means the login's $HOME (a quoted
    tilde would not expand, and deploy_to may be written `~/app`)."""
    if "\n" in path:
        raise ConfigError(f"path {path!r} contains a newline")
    if path.startswith("~/"):
        return f'"$HOME"/{q(path[2:])}'
    return q(path)


def _check_linked(path: str) -> str:
    norm = posixpath.normpath(path)
    if not path or path.startswith("/") or norm == "." or norm.startswith("..") or "/../" in f"/{norm}/":
        raise ConfigError(f"linked path {path!r} must be relative to the release and stay inside it")
    return norm


def facts_command(
    deploy_to: str,
    linked_files: Sequence[str] = (),
    linked_dirs: Sequence[str] = (),
    *,
    create: bool = True,
) -> str:
    """Check a host and report its releases. create=False touches nothing (dry-run, check, list).

    Output lines: `@@shipit absent UP STATE` (read-only mode: deploy_to is missing; its nearest
    existing parent is UP levels up and is `ok` (a directory deploy_to can be created in),
    `unwritable` or `notdir`), `@@shipit problem CODE [i]`, `@@shipit current NAME`,
    `@@shipit release NAME COMPLETE BAD REVISION`, `@@shipit end`.
    `@@shipit path ABS` gives deploy_to with `~` expanded (uploads need it: SFTP does not expand).
    A release is complete once REVISION exists: prepare writes it last.

    Whether a missing deploy_to can be created is found by creating and at once removing a probe
    directory in that parent: `test -w` cannot tell (root passes it even on /proc), and the
    probe leaves nothing behind. Nothing else is written in read-only mode.
    """
    files = [_check_linked(f) for f in linked_files]
    dirs = [_check_linked(x) for x in linked_dirs]
    lines = [f"d={shell_path(deploy_to)}", f"printf '{FACT_PREFIX}path %s\\n' \"$d\""]
    if create:
        # Linked dirs live in shared/ and are created for the user, like Capistrano does.
        targets = ["releases", "shared", ".shipit", *(f"shared/{x}" for x in dirs)]
        made = " ".join(f'"$d"/{q(t)}' for t in targets)
        lines.append(f"mkdir -p {made} 2>/dev/null && chmod 700 \"$d\"/.shipit || echo '{FACT_PREFIX}problem create'")
        lines.append(f"test -w \"$d\" || echo '{FACT_PREFIX}problem unwritable'")
    else:
        lines += [
            'if [ -d "$d" ]; then',
            f"  test -w \"$d\" || echo '{FACT_PREFIX}problem unwritable'",
            "else",
            '  p="$d"; up=0',
            '  while [ -n "$p" ] && [ ! -e "$p" ]; do p=${p%/*}; up=$((up+1)); done',
            '  p=${p:-/}; k=ok',
            '  if [ ! -d "$p" ]; then k=notdir',
            '  elif mkdir "$p/.shipit-probe-$$" 2>/dev/null; then rmdir "$p/.shipit-probe-$$"',
            "  else k=unwritable; fi",
            f'  echo "{FACT_PREFIX}absent $up $k"',
            "fi",
        ]
    for i, f in enumerate(files):
        lines.append(f"test -e \"$d\"/shared/{q(f)} || echo '{FACT_PREFIX}problem missing_file {i}'")
    lines += [
        f"c=$(readlink \"$d\"/current 2>/dev/null) && echo \"{FACT_PREFIX}current ${{c##*/}}\"",
        'for r in "$d"/releases/*/; do',
        '  [ -d "$r" ] || continue',
        '  r=${r%/}; n=${r##*/}; ok=0; bad=0; rev=-',
        '  if [ -f "$r"/REVISION ]; then ok=1; rev=$(head -n 1 "$r"/REVISION); fi',
        f'  [ ! -e "$r"/{BAD_MARKER} ] || bad=1',
        f'  echo "{FACT_PREFIX}release $n $ok $bad $rev"',
        "done",
        f"echo '{FACT_PREFIX}end'",
    ]
    return "\n".join(lines)


def archive_path(deploy_to: str, deploy_id: str) -> str:
    return f"{deploy_to}/.shipit/upload-{deploy_id}.tar.gz"


def prepare_command(
    deploy_to: str,
    release: str,
    archive: str,
    revision: str,
    linked_files: Sequence[str] = (),
    linked_dirs: Sequence[str] = (),
) -> str:
    """Create the release from the uploaded archive. mkdir without -p: a name collision fails.

    Shared links replace whatever the archive had at those paths. REVISION is written last, so a
    release interrupted half-way never looks complete (facts, rollback and cleanup rely on it).
    """
    lines = [
        "set -e",
        f"d={shell_path(deploy_to)}",
        f'r="$d"/releases/{q(release)}',
        'mkdir "$r"',
        f'tar -xzf {shell_path(archive)} -C "$r"',
        f"rm -f {shell_path(archive)}",
    ]
    for path, is_dir in [(_check_linked(f), False) for f in linked_files] + [
        (_check_linked(x), True) for x in linked_dirs
    ]:
        if is_dir:
            lines.append(f'mkdir -p "$d"/shared/{q(path)}')
        lines.append(f'rm -rf "$r"/{q(path)}')
        parent = posixpath.dirname(path)
        if parent:
            lines.append(f'mkdir -p "$r"/{q(parent)}')
        # Relative links keep working wherever deploy_to is seen from (bind mounts, containers).
        target = posixpath.relpath(f"shared/{path}", posixpath.join("releases", release, parent))
        lines.append(f'ln -s {q(target)} "$r"/{q(path)}')
    lines.append(f"printf '%s\\n' {q(revision)} > \"$r\"/REVISION")
    return "\n".join(lines)


def _append_history(record_json: str) -> str:
    # umask in a subshell: the history file is created 0600 without touching the release files.
    return f"(umask 077 && printf '%s\\n' {q(record_json)} >> \"$d\"/{HISTORY_FILE})"


def _point_current(release: str) -> list[str]:
    tmp = q(f"current.tmp-{release}")
    # A symlink then a rename: `current` is never missing or half-written (rename is atomic).
    return [f"rm -f {tmp}", f"ln -s releases/{q(release)} {tmp}", f"mv -T {tmp} current"]


def switch_command(
    deploy_to: str,
    release: str,
    *,
    keep_releases: int,
    revlog_line: str,
    record_json: str,
    keep: Sequence[str] = (),
) -> str:
    """Point `current` at the release, log it, record the deploy, keep the newest N releases.

    First prints `@@shipit previous NAME` (empty: no current): the release this switch replaces,
    read while the deploy holds the gate. That, not the facts read before the gate closed (another
    deploy may have switched and rolled back since), is what a rollback puts back.
    Cleanup never removes the new release, the previous one, nor anything in `keep`.
    Removed releases are reported as `@@shipit removed NAME`.
    """
    if keep_releases < 1:
        raise ConfigError("keep_releases must be at least 1")
    protected = "|".join(q(r) for r in [release, *keep])
    lines = [
        "set -e",
        f"d={shell_path(deploy_to)}",
        'cd "$d"',
        'p=$(readlink current 2>/dev/null) || p=""',
        f"printf '{FACT_PREFIX}previous %s\\n' \"${{p##*/}}\"",
        *_point_current(release),
        f"printf '%s\\n' {q(revlog_line)} >> revisions.log",
        _append_history(record_json),
        f"ls -1 releases | sort -r | tail -n +{keep_releases + 1} | while IFS= read -r old; do",
        f'  case "$old" in {protected}|"${{p##*/}}") ;; *) rm -rf "releases/$old" && echo "{FACT_PREFIX}removed $old" ;; esac',
        "done",
    ]
    return "\n".join(lines)


def switch_back_command(
    deploy_to: str,
    to_release: str | None,
    bad_release: str | None,
    *,
    revlog_line: str | None,
    record_json: str,
) -> str:
    """Put `current` back on `to_release` (or remove it when there was none), mark `bad_release`
    with the bad marker so rollback skips it, and append the superseding deploy record."""
    lines = ["set -e", f"d={shell_path(deploy_to)}", 'cd "$d"']
    lines += _point_current(to_release) if to_release else ["rm -f current"]
    if bad_release:
        lines.append(f"[ ! -d releases/{q(bad_release)} ] || touch releases/{q(bad_release)}/{BAD_MARKER}")
    if revlog_line:
        lines.append(f"printf '%s\\n' {q(revlog_line)} >> revisions.log")
    lines.append(_append_history(record_json))
    return "\n".join(lines)


def remove_partial_command(
    deploy_to: str, release: str | None, archive: str | None, *, record_json: str | None
) -> str:
    """Undo a release that never went live: its directory, the uploaded archive, plus the record."""
    lines = [f"d={shell_path(deploy_to)}"]
    if release:
        lines.append(f'rm -rf "$d"/releases/{q(release)}')
    if archive:
        lines.append(f"rm -f {shell_path(archive)}")
    if record_json:
        lines.append(f'[ ! -d "$d"/.shipit ] || {_append_history(record_json)}')
    return "\n".join(lines)


def history_read_command(deploy_to: str, limit: int) -> str:
    return f"tail -n {int(limit)} {shell_path(deploy_to)}/{HISTORY_FILE} 2>/dev/null || true"


def revlog_deployed(branch: str | None, revision: str, release: str, actor: str) -> str:
    """Capistrano's revisions.log wording, so existing tooling can read it."""
    if branch:
        return f"Branch {branch} (at {revision}) deployed as release {release} by {actor}"
    return f"Revision {revision} deployed as release {release} by {actor}"


def revlog_rolled_back(release: str, actor: str) -> str:
    return f"{actor} rolled back to release {release}"


def parse_facts(stdout: str) -> dict[str, object]:
    """Read facts_command output: {"absent", "parent_up", "parent_state", "problems":
    [(code, index)], "current", "releases": [{"name", "complete", "bad", "revision"}] oldest
    first, "path", "complete_output"}."""
    facts: dict[str, object] = {
        "absent": False, "parent_up": None, "parent_state": None, "problems": [], "current": None,
        "releases": [], "path": None,
    }
    problems: list[tuple[str, int | None]] = []
    releases: list[dict[str, object]] = []
    ended = False
    for line in stdout.splitlines():
        if not line.startswith(FACT_PREFIX):
            continue
        words = line[len(FACT_PREFIX) :].split(" ")
        kind = words[0]
        if kind == "absent":
            facts["absent"] = True
            if len(words) >= 3 and words[1].isdigit():
                # How many levels up the nearest existing parent is, and what it is like.
                facts["parent_up"], facts["parent_state"] = int(words[1]), words[2]
        elif kind == "problem":
            problems.append((words[1], int(words[2]) if len(words) > 2 else None))
        elif kind == "current" and len(words) > 1 and words[1]:
            facts["current"] = words[1]
        elif kind == "release" and len(words) >= 5:
            releases.append(
                {
                    "name": words[1],
                    "complete": words[2] == "1",
                    "bad": words[3] == "1",
                    "revision": " ".join(words[4:]) if words[2] == "1" else None,
                }
            )
        elif kind == "path":
            facts["path"] = " ".join(words[1:])
        elif kind == "end":
            ended = True
    releases.sort(key=lambda r: str(r["name"]))
    facts["problems"] = problems
    facts["releases"] = releases
    facts["complete_output"] = ended
    return facts
