"""Resolve one stage of a `Config` into the `StageConfig` the rest of shipit works with.

Precedence is top-level < stage < host. Stage `ssh:` and `jobs:` override field by field (only
the fields the stage writes); `jobs.definitions` merge by job name. Hooks run top-level steps
first, then the stage's, per hook point. A stage's `notify:` list replaces the top-level one.
Vars merge key by key (not deeply).

Paths: `deploy_to` must be absolute (or start with `~/`, the deploy user's home). A relative
`source.dir` or local `source.repo` path is taken relative to the directory holding
shipit.yaml, so the same file works from any working directory. A relative `jobs.path` is a
path on each host, inside `deploy_to`.
"""

from __future__ import annotations

import difflib
import os
import posixpath
import re
from typing import Any

from shipit.config.checks import check_job_order, check_linked, check_notify
from shipit.config.hostspec import Address, HostSyntaxError, check_port, check_user, parse_host
from shipit.config.model import (
    HOOK_POINTS,
    Config,
    HookSpec,
    HostEntry,
    HostSpec,
    JobsConfig,
    SSHConfig,
    StageConfig,
    StageEntry,
)
from shipit.config.source_map import LineMap, Path, fmt_path, lines_of, one_line
from shipit.errors import ConfigError, UsageError


def _fail(lines: LineMap, path: Path, message: str) -> ConfigError:
    return ConfigError(one_line(f"{lines.where(path)}: {fmt_path(path)}: {message}"))


def _unknown_stage(config: Config, name: str) -> ConfigError:
    names = list(config.stages)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(
        one_line(f"{config.config_path}: no stage {name!r} ({hint}stages: {', '.join(names)})")
    )


def _config_dir(config: Config) -> str:
    return os.path.dirname(os.path.abspath(config.config_path))


def _local_path(config: Config, path: str, *, expand_home: bool = True) -> str:
    # jobs.path may name a host's home (`~/...`), which only the host can expand.
    if path.startswith("~"):
        if not expand_home:
            return path
        path = os.path.expanduser(path)
    if os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(_config_dir(config), path))


def _is_local_repo(repo: str) -> bool:
    """A repository path rather than a URL (`https://...`, `file://...`) or scp-like
    `git@host:path`."""
    return "://" not in repo and not re.match(r"[\w.-]+@[\w.-]+:", repo)


def _deploy_to(config: Config, stage: StageEntry, name: str, lines: LineMap) -> str:
    written = stage.deploy_to if stage.deploy_to is not None else config.deploy_to
    path: Path = ("stages", name, "deploy_to") if stage.deploy_to is not None else ("deploy_to",)
    if not (written.startswith("/") or written.startswith("~/")):
        raise _fail(lines, path, f"must be an absolute path (or start with ~/), got {written!r}")
    if written.startswith("~/"):
        rest = posixpath.normpath(written[2:])
        # `~/` alone or `~/..` would put releases/ straight into (or above) the home directory.
        if rest in (".", "..") or rest.startswith("../"):
            raise _fail(
                lines, path, f"must name a directory inside the home directory, got {written!r}"
            )
        return f"~/{rest}"
    clean = posixpath.normpath(written)
    if clean in ("/", "//"):
        raise _fail(lines, path, "must not be the root directory")
    return clean


def _merge_fields(base: Any, override: Any) -> Any:
    """Only the fields the stage actually wrote replace the top-level ones."""
    if override is None:
        return base
    updates = {f: getattr(override, f) for f in override.model_fields_set}
    if isinstance(base, JobsConfig) and "definitions" in updates:
        updates["definitions"] = {**base.definitions, **override.definitions}
    return base.model_copy(update=updates)


def _address(entry: str | HostEntry, lines: LineMap, path: Path) -> Address:
    try:
        if isinstance(entry, str):
            return parse_host(entry)
        addr = parse_host(entry.host)
        if addr.local:
            return addr
        user = entry.user if entry.user is not None else addr.user
        if entry.user is not None and addr.user is not None and entry.user != addr.user:
            raise HostSyntaxError(
                f"user given twice ({addr.user!r} in host, {entry.user!r} in user)"
            )
        if user is not None:
            check_user(user)
        port = addr.port
        if entry.port is not None:
            if addr.port is not None and entry.port != addr.port:
                raise HostSyntaxError(
                    f"port given twice ({addr.port} in host, {entry.port} in port)"
                )
            port = check_port(entry.port)
        return Address(hostname=addr.hostname, user=user, port=port)
    except HostSyntaxError as exc:
        raise _fail(lines, path, str(exc)) from None


def _check_ssh_defaults(stage: StageEntry, name: str, ssh: SSHConfig, lines: LineMap) -> None:
    """ssh.user / ssh.port end up in every host without its own: check them like a host's."""
    for key, check in (("user", check_user), ("port", check_port)):
        value = getattr(ssh, key)
        if value is None:
            continue
        try:
            check(value)
        except HostSyntaxError as exc:
            in_stage = stage.ssh is not None and key in stage.ssh.model_fields_set
            where: Path = ("stages", name, "ssh", key) if in_stage else ("ssh", key)
            raise _fail(lines, where, str(exc)) from None


def _hosts(
    config: Config, stage: StageEntry, name: str, ssh: SSHConfig, lines: LineMap
) -> tuple[HostSpec, ...]:
    base_vars = {**config.vars, **stage.vars}
    _check_ssh_defaults(stage, name, ssh, lines)
    specs: list[HostSpec] = []
    seen: dict[tuple[Any, ...], int] = {}
    for index, entry in enumerate(stage.hosts):
        path: Path = ("stages", name, "hosts", index)
        addr = _address(entry, lines, path)
        user = addr.user if addr.local or addr.user else ssh.user
        port = addr.port if addr.local or addr.port is not None else ssh.port
        identity = ("local",) if addr.local else (user, addr.hostname.lower(), port or 22)
        if identity in seen:
            first = stage.hosts[seen[identity]]
            first_name = first if isinstance(first, str) else first.host
            first_line = lines.line(("stages", name, "hosts", seen[identity]))
            on_line = f" on line {first_line}" if first_line else ""
            raise _fail(
                lines,
                path,
                f"host {addr.name!r} is listed twice (first as {first_name!r}{on_line})",
            )
        seen[identity] = index
        entry_roles = list(entry.roles) if isinstance(entry, HostEntry) else []
        entry_vars = entry.vars if isinstance(entry, HostEntry) else {}
        specs.append(
            HostSpec(
                name=addr.name,
                hostname=addr.hostname,
                user=None if addr.local else user,
                port=None if addr.local else port,
                local=addr.local,
                roles=tuple(dict.fromkeys(entry_roles)),
                vars={**base_vars, **entry_vars},
            )
        )
    return _with_stage_roles(specs, stage, name, lines)


def _match_host(specs: list[HostSpec], written: str) -> list[int]:
    exact = [i for i, h in enumerate(specs) if h.name == written]
    if exact:
        return exact
    return [i for i, h in enumerate(specs) if h.hostname == written]


def _with_stage_roles(
    specs: list[HostSpec], stage: StageEntry, name: str, lines: LineMap
) -> tuple[HostSpec, ...]:
    roles: list[list[str]] = [list(h.roles) for h in specs]
    for role, members in stage.roles.items():
        for index, written in enumerate(members):
            path: Path = ("stages", name, "roles", role, index)
            matches = _match_host(specs, written)
            known = ", ".join(h.name for h in specs)
            if not matches:
                raise _fail(
                    lines, path, f"role {role!r} names unknown host {written!r} (hosts: {known})"
                )
            if len(matches) > 1:
                raise _fail(
                    lines, path, f"{written!r} matches several hosts; write it as one of: {known}"
                )
            if role not in roles[matches[0]]:
                roles[matches[0]].append(role)
    return tuple(
        h.model_copy(update={"roles": tuple(r)}) for h, r in zip(specs, roles, strict=True)
    )


def _positive(value: int, lines: LineMap, path: Path) -> int:
    if value < 1:
        raise _fail(lines, path, f"must be at least 1, got {value}")
    return value


def _hooks(config: Config, stage: StageEntry) -> dict[str, tuple[HookSpec, ...]]:
    return {
        point: (*config.hooks.get(point, ()), *stage.hooks.get(point, ())) for point in HOOK_POINTS
    }


def resolve_stage(config: Config, name: str) -> StageConfig:
    """Everything one deploy of stage `name` needs. Raises ConfigError naming file:line."""
    stage = config.stages.get(name)
    if stage is None:
        raise _unknown_stage(config, name)
    lines = lines_of(config, config.config_path)
    ssh = _merge_fields(config.ssh, stage.ssh)
    jobs = _merge_fields(config.jobs, stage.jobs)
    deploy_to = _deploy_to(config, stage, name, lines)
    if jobs.path is not None and not jobs.path.startswith(("/", "~")):
        # jobs.path is a path on each host: relative means inside deploy_to there.
        jobs = jobs.model_copy(update={"path": f"{deploy_to.rstrip('/')}/{jobs.path}"})
    source = config.source
    if stage.branch is not None:
        source = source.model_copy(update={"branch": stage.branch})
    if source.repo is not None and _is_local_repo(source.repo):
        source = source.model_copy(update={"repo": _local_path(config, source.repo)})
    if source.dir is not None:
        source = source.model_copy(update={"dir": _local_path(config, source.dir)})
    keep = config.keep_releases
    if stage.keep_releases is not None:
        keep = _positive(stage.keep_releases, lines, ("stages", name, "keep_releases"))
    parallelism = config.parallelism
    if stage.parallelism is not None:
        parallelism = _positive(stage.parallelism, lines, ("stages", name, "parallelism"))
    check_linked(config, lines)
    check_job_order(jobs.definitions, stage, name, lines)
    _check_adapters(config, stage, name, jobs, lines)
    _check_store_dsn(config.jobs, stage, name, jobs, lines)
    notify_base: Path = ("stages", name, "notify") if stage.notify is not None else ("notify",)
    notify = stage.notify if stage.notify is not None else config.notify
    check_notify(notify, notify_base, lines)
    return StageConfig(
        name=name,
        application=config.application,
        source=source,
        deploy_to=deploy_to,
        keep_releases=keep,
        linked_files=tuple(config.linked_files),
        linked_dirs=tuple(config.linked_dirs),
        parallelism=parallelism,
        hosts=_hosts(config, stage, name, ssh, lines),
        vars={**config.vars, **stage.vars},
        hooks=_hooks(config, stage),
        ssh=ssh,
        jobs=jobs,
        shipit_command=config.shipit_command,
        secrets=tuple(config.secrets),
        config_path=config.config_path,
        # A stage's notify list replaces the top-level one (an empty list silences the stage).
        notify=tuple(notify),
        cron=tuple(config.cron),
    )


def _check_store_dsn(
    top_jobs: JobsConfig, stage: StageEntry, name: str, jobs: JobsConfig, lines: LineMap
) -> None:
    """A central store without its DSN would fail the deploy half-way (after pre_deploy); say
    so now, in one line, like a `${VAR}` that is not set."""
    if jobs.store != "postgres":
        return
    environ = os.environ if lines.environ is None else lines.environ
    if environ.get(jobs.dsn_env):
        return
    # Point at the key that named the variable if one did, else at the one that chose postgres.
    path: Path = ("jobs", "store")
    for key in ("store", "dsn_env"):
        if key in top_jobs.model_fields_set:
            path = ("jobs", key)
    for key in ("store", "dsn_env"):
        if stage.jobs is not None and key in stage.jobs.model_fields_set:
            path = ("stages", name, "jobs", key)
    raise _fail(
        lines, path,
        f"the postgres job store needs its DSN in the environment variable {jobs.dsn_env}"
        f" (jobs.dsn_env), which is not set",
    )


def _check_adapters(
    config: Config, stage: StageEntry, name: str, jobs: JobsConfig, lines: LineMap
) -> None:
    """Adapter names must be unique (events and recorded items refer to them); cron entries
    must be well formed lines (a newline would smuggle extra crontab lines in)."""
    from shipit.adapters.cron import cron_entry_problem

    base: Path = ("stages", name, "jobs") if stage.jobs and "adapters" in stage.jobs.model_fields_set else ("jobs",)
    seen: set[str] = set()
    for index, adapter in enumerate(jobs.adapters):
        label = adapter.name or adapter.type
        if label in seen:
            raise _fail(lines, (*base, "adapters", index, "name"), f"adapter name {label!r} is used twice")
        seen.add(label)
    names: set[str] = set()
    for index, entry in enumerate(config.cron):
        problem = cron_entry_problem(entry)
        if problem is not None:
            raise _fail(lines, ("cron", index, problem[0]), problem[1])
        if entry.name in names:
            raise _fail(lines, ("cron", index, "name"), f"cron entry name {entry.name!r} is used twice")
        names.add(entry.name)


def filter_hosts(
    stage: StageConfig, hosts: list[str] | None, roles: list[str] | None
) -> StageConfig:
    """Keep the hosts named by `--hosts` (name or hostname) that have one of `--roles`."""
    keep = list(stage.hosts)
    if hosts:
        names = ", ".join(h.name for h in stage.hosts)
        wanted: set[int] = set()
        for written in hosts:
            matches = [i for i, h in enumerate(stage.hosts) if written in (h.name, h.hostname)]
            if not matches:
                raise UsageError(
                    one_line(f"stage {stage.name!r} has no host {written!r} (hosts: {names})")
                )
            wanted.update(matches)
        keep = [h for i, h in enumerate(stage.hosts) if i in wanted]
    if roles:
        known = list(dict.fromkeys(r for h in stage.hosts for r in h.roles))
        for role in roles:
            if role not in known:
                listed = ", ".join(known) if known else "none defined"
                raise UsageError(
                    one_line(f"stage {stage.name!r} has no role {role!r} (roles: {listed})")
                )
        keep = [h for h in keep if set(h.roles) & set(roles)]
    if not keep:
        asked = " ".join(
            part
            for part in (
                f"--hosts {','.join(hosts)}" if hosts else "",
                f"--roles {','.join(roles)}" if roles else "",
            )
            if part
        )
        raise UsageError(one_line(f"no host of stage {stage.name!r} matches {asked}"))
    return stage.model_copy(update={"hosts": tuple(keep)})
