"""pre_deploy: one facts command per host (which also lays out deploy_to), and the archive.

Everything that can be found wrong before the gate closes is found here: an unreachable host, an
unwritable deploy_to, a missing linked file, an unknown revision. The archive is built locally
while the hosts answer, once per deploy.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shipit.commands.release import facts_command, parse_facts, release_name
from shipit.errors import CommandFailed, DeployFailed, HostError
from shipit.hosts.base import Host
from shipit.hosts.fanout import FanOutError
from shipit.phases.common import emit_command, engine_state, parallel
from shipit.phases.context import DeployContext
from shipit.source import Archive, build_archive


def _problem_text(ctx: DeployContext, code: str, index: int | None) -> str:
    stage = ctx.stage
    if code == "missing_file" and index is not None:
        name = stage.linked_files[index]
        return f"linked file {name} is missing: create {stage.deploy_to}/shared/{name}"
    if code == "unwritable":
        return f"{stage.deploy_to} is not writable"
    if code == "create":
        return f"cannot create {stage.deploy_to}/releases, shared and .shipit"
    return f"problem: {code}"


def gather_facts(ctx: DeployContext, host: Host, *, create: bool) -> dict[str, Any]:
    """Run the facts command on one host; raise DeployFailed naming every problem found."""
    stage = ctx.stage
    command = facts_command(stage.deploy_to, stage.linked_files, stage.linked_dirs, create=create)
    emit_command(ctx, host.name, "pre_deploy", command)
    res = host.run(command, check=False)
    facts = parse_facts(res.stdout)
    if not res.ok or not facts["complete_output"]:
        raise CommandFailed(host.name, "facts (pre_deploy check)", res.exit_code, res.stdout + res.stderr)
    problems = [_problem_text(ctx, c, i) for c, i in facts["problems"]]  # type: ignore[union-attr]
    if problems:
        raise DeployFailed(f"[{host.name}] " + "; ".join(problems))
    return facts


def _build(ctx: DeployContext) -> Archive:
    st = engine_state(ctx)
    if st.tmpdir is None:
        st.tmpdir = tempfile.mkdtemp(prefix="shipit-")
    return build_archive(ctx.stage.source, st.base_dir, st.tmpdir, st.requested_revision)


def pre_deploy(ctx: DeployContext) -> None:
    st = engine_state(ctx)
    building = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="archive") as pool:
        if st.mode == "deploy":
            building = pool.submit(_build, ctx)
        try:
            # A dry run only reads: the facts command's read-only form creates nothing.
            ctx.facts = parallel(ctx, "pre_deploy", lambda h: gather_facts(ctx, h, create=not ctx.dry_run))
        except FanOutError as exc:
            ctx.facts = dict(exc.results)
            st.unreachable.update(n for n, e in exc.errors.items() if isinstance(e, HostError))
            if building:
                building.cancel()
            raise
        if building:
            archive = building.result()
            ctx.archive, ctx.revision, st.branch = archive.path, archive.revision, archive.branch
    currents = Counter(f.get("current") for f in ctx.facts.values() if f.get("current"))
    ctx.previous_release = currents.most_common(1)[0][0] if currents else None
    if st.mode == "deploy":
        ctx.release = release_name()
    else:
        from shipit.phases.rollback import choose_rollback_target

        ctx.release = choose_rollback_target(ctx, st.rollback_to)
        ctx.revision = _revision_of(ctx, ctx.release)


def _revision_of(ctx: DeployContext, release: str) -> str | None:
    for facts in ctx.facts.values():
        for rel in facts["releases"]:
            if rel["name"] == release:
                return rel["revision"]
    return None
