"""rollback: put the stage back in a consistent state after a failure, and restart the jobs.

Before the switch: remove every partial release (and the uploaded archive). After the switch:
point every host back at the release it had, and mark the new one bad so that `shipit rollback`
skips it. Then recover_jobs: reopen the gate and restart recorded jobs on the live code. This
runs on the failure path, so it never raises: it reports and returns the errors it met.
"""

from __future__ import annotations

from shipit.commands.release import (
    remove_partial_command,
    revlog_rolled_back,
    switch_back_command,
)
from shipit.config.source_map import one_line
from shipit.errors import DeployFailed, ShipitError, UsageError
from shipit.history import make_record, record_json
from shipit.hosts.base import Host
from shipit.hosts.fanout import FanOutError
from shipit.phases.common import engine_state, mask, parallel, run, wait_idle
from shipit.phases.context import DeployContext
from shipit.phases.release import upload_path
from shipit.phases.restart_jobs import recover_jobs

# How long recovery waits for a prepare/switch still running in a thread after a Ctrl-C.
CRITICAL_WAIT = 60.0


def choose_rollback_target(ctx: DeployContext, to: str | None) -> str:
    """The release to roll back to, the same on every host: `to`, or each host's newest complete,
    non-bad release older than its current one."""
    chosen: dict[str, str | None] = {}
    for name, facts in ctx.facts.items():
        releases = [r for r in facts["releases"] if r["complete"]]
        names = {r["name"] for r in releases}
        if to:
            if to not in names:
                # A wrong --to is the user's input, not a failed deploy: exit 2, nothing changed.
                raise UsageError(_no_such_release(ctx, name, to, facts["releases"]))
            chosen[name] = to
            continue
        current = facts.get("current")
        older = [r["name"] for r in releases if not r["bad"] and (current is None or r["name"] < current)]
        chosen[name] = older[-1] if older else None
    missing = [n for n, r in chosen.items() if r is None]
    if missing:
        raise DeployFailed(f"[{missing[0]}] no earlier good release to roll back to")
    targets = set(chosen.values())
    if len(targets) > 1:
        detail = ", ".join(f"{n}: {r}" for n, r in chosen.items())
        raise DeployFailed(f"hosts disagree on the release to roll back to ({detail}); use --to RELEASE")
    return str(targets.pop())


def _no_such_release(ctx: DeployContext, host: str, to: str, releases: list[dict]) -> str:
    complete = [str(r["name"]) for r in releases if r["complete"]]
    listed = ", ".join(complete) if complete else "none"
    where = f"{ctx.stage.deploy_to}/releases"
    if any(r["name"] == to for r in releases):
        what = f"release {to} is incomplete (no REVISION: it never finished) in {where}"
    else:
        what = f"release {to} does not exist in {where}"
    return one_line(f"[{host}] {what} (releases: {listed})")


def rollback(ctx: DeployContext, *, outcome: str = "failed", error: str | None = None) -> list[str]:
    """Recover the stage; returns the problems met (empty when the stage is consistent)."""
    st = engine_state(ctx)
    problems: list[str] = []
    if not wait_idle(ctx, CRITICAL_WAIT):
        problems.append("a host step was still running when recovery started")
    # The record is written by the switch-back itself: on a host where that fails, no record.
    written = "rolled_back" if ctx.switched and outcome == "failed" else outcome
    record = record_json(make_record(ctx, written, error))
    reachable = [h for h in ctx.hosts if h.name not in st.unreachable and h.name in ctx.facts]

    def back(host: Host) -> None:
        # What the switch replaced on this host; the pre_deploy facts where it never ran.
        to = st.switched_from.get(host.name, ctx.facts[host.name].get("current"))
        bad = ctx.release if st.mode == "deploy" else None
        command = switch_back_command(
            ctx.stage.deploy_to,
            to,
            bad,
            revlog_line=revlog_rolled_back(to, ctx.actor) if to else None,
            record_json=record,
        )
        run(ctx, host, "rollback", command)
        ctx.bus.emit("release.rolled_back", host=host.name, phase="rollback", release=to, bad=bad)

    def clean(host: Host) -> None:
        prepared = host.name in st.prepared
        command = remove_partial_command(
            ctx.stage.deploy_to,
            ctx.release if prepared else None,
            upload_path(ctx, host) if prepared else None,
            record_json=record,
        )
        run(ctx, host, "rollback", command)
        if prepared:
            ctx.bus.emit("release.removed", host=host.name, phase="rollback", release=ctx.release)

    if not ctx.dry_run and reachable:
        try:
            parallel(ctx, "rollback", back if ctx.switched else clean, reachable)
        except FanOutError as exc:
            problems.append(str(exc))
    try:
        recover_jobs(ctx)
    except ShipitError as exc:
        problems.append(mask(ctx, str(exc)))
    except Exception as exc:  # the failure path must finish and report, whatever broke
        problems.append(f"job recovery failed: {exc!r}")
    return problems
