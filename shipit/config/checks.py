"""Checks across keys that pydantic cannot make field by field: linked paths that would escape
shared/, job `after:` lists naming unknown jobs or going round in a circle (the restart
order after a deploy would be undefined), and hook `roles:` naming a role no host has (the
hook would silently never run)."""

from __future__ import annotations

import posixpath
from urllib.parse import urlsplit

from shipit.config.explain import closest, suggest
from shipit.config.model import (
    Config,
    HookSpec,
    HostEntry,
    JobDefinition,
    NotifyTarget,
    StageEntry,
)
from shipit.config.source_map import LineMap, Path, fmt_path, one_line
from shipit.errors import ConfigError


def _fail(lines: LineMap, path: Path, message: str) -> ConfigError:
    return ConfigError(one_line(f"{lines.where(path)}: {fmt_path(path)}: {message}"))


def check_linked(config: Config, lines: LineMap) -> None:
    """Linked files and dirs live in shared/: an absolute path or `..` would link (and on the
    first deploy create) something outside the application's directory."""
    for key in ("linked_files", "linked_dirs"):
        for index, written in enumerate(getattr(config, key)):
            path: Path = (key, index)
            clean = posixpath.normpath(written) if written else ""
            if not written or clean == ".":
                raise _fail(lines, path, "empty path")
            if written.startswith(("/", "~")):
                raise _fail(lines, path, f"must be relative to shared/, got {written!r}")
            if clean == ".." or clean.startswith("../"):
                raise _fail(lines, path, f"must stay inside shared/, got {written!r}")


def _definition_path(stage: StageEntry, stage_name: str, job: str) -> Path:
    if stage.jobs is not None and job in stage.jobs.definitions:
        return ("stages", stage_name, "jobs", "definitions", job)
    return ("jobs", "definitions", job)


def check_job_order(
    definitions: dict[str, JobDefinition], stage: StageEntry, stage_name: str, lines: LineMap
) -> None:
    names = list(definitions)
    for job, definition in definitions.items():
        for index, before in enumerate(definition.after):
            if before not in definitions:
                path = (*_definition_path(stage, stage_name, job), "after", index)
                raise _fail(lines, path, f"unknown job {before!r}{suggest(before, names)}")
    done: set[str] = set()
    for start in definitions:
        trail: list[str] = []
        _visit(start, definitions, trail, done, stage, stage_name, lines)


def _visit(
    job: str,
    definitions: dict[str, JobDefinition],
    trail: list[str],
    done: set[str],
    stage: StageEntry,
    stage_name: str,
    lines: LineMap,
) -> None:
    if job in done:
        return
    if job in trail:
        circle = [*trail[trail.index(job) :], job]
        path = (*_definition_path(stage, stage_name, circle[0]), "after")
        raise _fail(lines, path, f"jobs wait for each other in a circle: {' -> '.join(circle)}")
    trail.append(job)
    for before in definitions[job].after:
        _visit(before, definitions, trail, done, stage, stage_name, lines)
    trail.pop()
    done.add(job)


def stage_roles(stage: StageEntry) -> list[str]:
    """Every role a stage gives its hosts, on the hosts themselves or in its `roles:` map."""
    found = [r for h in stage.hosts if isinstance(h, HostEntry) for r in h.roles]
    return list(dict.fromkeys([*found, *stage.roles]))


def _check_roles(
    hooks: dict[str, list[HookSpec]], base: Path, known: list[str], whose: str, lines: LineMap
) -> None:
    listed = ", ".join(known) if known else "none defined"
    for point, steps in hooks.items():
        for index, spec in enumerate(steps):
            for r_index, role in enumerate(spec.roles):
                if role in known:
                    continue
                close = closest(role, known)
                hint = f"did you mean {close!r}? " if close else ""
                path = (*base, point, index, "roles", r_index)
                raise _fail(lines, path, f"no host {whose}has role {role!r} ({hint}roles: {listed})")


def check_hook_roles(config: Config, lines: LineMap) -> None:
    """A hook limited to roles that no host has would never run, whatever is deployed: a typo.
    Top-level hooks may name a role of any stage; a stage's own hooks one of that stage."""
    every: list[str] = []
    for stage in config.stages.values():
        every += stage_roles(stage)
    _check_roles(config.hooks, ("hooks",), list(dict.fromkeys(every)), "", lines)
    for name, stage in config.stages.items():
        _check_roles(
            stage.hooks, ("stages", name, "hooks"), stage_roles(stage), f"of stage {name!r} ", lines
        )


def _shown_url(lines: LineMap, path: Path, url: str, *, keep_host: bool) -> str:
    from shipit.config.secrets import shown_url

    if path in lines.written:
        return f"{lines.written[path]!r} (from the environment)"
    return repr(shown_url(url, keep_host=keep_host))


def _webhook_problem(url: str) -> str | None:
    """None for a usable webhook URL, else what to add to the message (may be empty)."""
    if "://" not in url:
        return " (it has no scheme)"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f" ({exc})"
    if parts.scheme not in ("http", "https"):
        return ""
    return None if parts.hostname else " (it has no host)"


def check_notify(targets: list[NotifyTarget], base: Path, lines: LineMap) -> None:
    """What can be told about a notify URL without the notification libraries: a webhook is an
    http(s) URL with a host, an apprise URL has a scheme (apprise itself checks the rest when a
    deploy starts)."""
    for index, target in enumerate(targets):
        if target.webhook is not None:
            path = (*base, index, "webhook")
            problem = _webhook_problem(target.webhook)
            if problem is not None:
                shown = _shown_url(lines, path, target.webhook, keep_host=True)
                raise _fail(lines, path, f"must be an http:// or https:// URL, got {shown}{problem}")
        if target.apprise is not None:
            path = (*base, index, "apprise")
            if "://" not in target.apprise or not target.apprise.split("://", 1)[0]:
                shown = _shown_url(lines, path, target.apprise, keep_host=False)
                raise _fail(
                    lines, path, f"must be an apprise URL such as slack://... or mailto://..., got {shown}"
                )
