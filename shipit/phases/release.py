"""release: upload + prepare on every host, then (only if every host is ready) switch them all.

All-or-nothing: a host failing before the switch means no host is switched (the runner's
recovery removes the partial releases). In rollback mode the "release" is an existing one and
the switch marks the release rolled back from as bad.
"""

from __future__ import annotations

from shlex import quote as q

from shipit.commands.release import (
    FACT_PREFIX,
    archive_path,
    prepare_command,
    revlog_deployed,
    revlog_rolled_back,
    switch_back_command,
    switch_command,
)
from shipit.errors import CommandFailed
from shipit.history import make_record, record_json
from shipit.hosts.base import CommandResult, Host
from shipit.phases.common import critical, emit_command, engine_state, parallel, run
from shipit.phases.context import DeployContext


def _host_current(ctx: DeployContext, host: Host) -> str | None:
    return ctx.facts.get(host.name, {}).get("current")


def upload_path(ctx: DeployContext, host: Host) -> str:
    """Where the archive goes on this host: absolute, because SFTP does not expand `~`."""
    base = ctx.facts.get(host.name, {}).get("path") or ctx.stage.deploy_to
    return archive_path(base, ctx.deploy_id)


def _report_removed(ctx: DeployContext, host: Host, res: CommandResult | None) -> None:
    if res is None:
        return
    for line in res.stdout.splitlines():
        if line.startswith(f"{FACT_PREFIX}removed "):
            ctx.bus.emit("release.removed", host=host.name, phase="release", release=line.split(" ", 2)[2])


def prepare(ctx: DeployContext) -> None:
    st = engine_state(ctx)
    stage = ctx.stage
    assert ctx.release and ctx.archive and ctx.revision

    def one(host: Host) -> None:
        remote = upload_path(ctx, host)
        command = prepare_command(
            stage.deploy_to, ctx.release or "", remote, ctx.revision or "", stage.linked_files, stage.linked_dirs
        )
        with critical(ctx):
            # Recorded before anything lands, so that recovery cleans up even half an upload.
            st.prepared.add(host.name)
            emit_command(ctx, host.name, "release", f"put {q(ctx.archive or '')} {q(remote)}", upload=True)
            if not ctx.dry_run:
                host.put(ctx.archive or "", remote)
            run(ctx, host, "release", command)
        if not ctx.dry_run:
            ctx.bus.emit("release.prepared", host=host.name, phase="release", release=ctx.release)

    parallel(ctx, "release", one)


def _record_previous(ctx: DeployContext, host: Host, res: CommandResult) -> None:
    for line in res.stdout.splitlines():
        if line.startswith(f"{FACT_PREFIX}previous"):
            name = line[len(f"{FACT_PREFIX}previous"):].strip()
            engine_state(ctx).switched_from[host.name] = name or None
            return


def switch(ctx: DeployContext) -> None:
    stage = ctx.stage
    assert ctx.release and ctx.revision
    st = engine_state(ctx)
    record = record_json(make_record(ctx, "success"))
    revlog = revlog_deployed(st.branch, ctx.revision, ctx.release, ctx.actor)

    def one(host: Host) -> None:
        current = _host_current(ctx, host)
        command = switch_command(
            stage.deploy_to,
            ctx.release or "",
            keep_releases=stage.keep_releases,
            revlog_line=revlog,
            record_json=record,
            keep=[current] if current else [],
        )
        with critical(ctx):
            res = run(ctx, host, "release", command, check=False)
        if res is None:  # dry run
            return
        # Recorded even when a later line failed: `current` may have moved already.
        _record_previous(ctx, host, res)
        if not res.ok:
            raise CommandFailed(host.name, command, res.exit_code, res.stdout + res.stderr)
        ctx.bus.emit("release.switched", host=host.name, phase="release", release=ctx.release)
        _report_removed(ctx, host, res)

    if not ctx.dry_run:
        # Set before the first host switches: from here on, recovery must switch every host back.
        ctx.switched = True
    parallel(ctx, "release", one)


def switch_to_existing(ctx: DeployContext) -> None:
    """Rollback mode: point every host at ctx.release and mark what it leaves as bad."""
    assert ctx.release
    record = record_json(make_record(ctx, "success"))
    revlog = revlog_rolled_back(ctx.release, ctx.actor)

    def one(host: Host) -> None:
        current = _host_current(ctx, host)
        command = switch_back_command(
            ctx.stage.deploy_to,
            ctx.release,
            current if current != ctx.release else None,
            revlog_line=revlog,
            record_json=record,
        )
        with critical(ctx):
            run(ctx, host, "release", command)
        if not ctx.dry_run:
            ctx.bus.emit("release.rolled_back", host=host.name, phase="release", release=ctx.release, bad=current)

    if not ctx.dry_run:
        ctx.switched = True
    parallel(ctx, "release", one)


def release(ctx: DeployContext) -> None:
    if engine_state(ctx).mode == "rollback":
        switch_to_existing(ctx)
        return
    prepare(ctx)
    switch(ctx)
