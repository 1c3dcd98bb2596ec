"""Deploy records: one JSON line per record in `{deploy_to}/.shipit/history.jsonl` on every host.

Records are appended inside commands the deploy runs anyway, so history costs no extra remote
command where an agent runs: the switch appends a provisional "success" (the release is live),
the agent restart of restart_jobs appends the final record (every phase's duration, the real
end), and the failure path appends the superseding outcome. A deploy may therefore have several
lines; readers merge by deploy_id and the record of the latest step wins (`seq`).

Lean on purpose: the host agent imports this module to write the final record.
"""

from __future__ import annotations

import json
import os
import threading
import time

TYPE_CHECKING = False  # the agent imports this: no typing, pydantic or engine modules at run time
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from shipit.hosts.base import Host
    from shipit.phases.context import DeployContext

HISTORY_FILE = ".shipit/history.jsonl"  # the same as shipit.commands.release.HISTORY_FILE

# Which step wrote a record: a later step supersedes an earlier one whatever the clocks say.
SEQ_SWITCH, SEQ_FINAL, SEQ_FAILURE = 1, 2, 3
FINAL_PHASE = "restart_jobs"


def make_record(
    ctx: DeployContext, outcome: str, error: str | None = None, *, seq: int | None = None
) -> dict[str, Any]:
    from shipit.phases.common import engine_state, mask

    st = engine_state(ctx)
    return {
        "deploy_id": ctx.deploy_id,
        "kind": st.mode,
        "stage": ctx.stage.name,
        "application": ctx.stage.application,
        "actor": ctx.actor,
        "started": round(st.started, 3),
        "finished": round(time.time(), 3),
        "revision": ctx.revision,
        "branch": st.branch,
        "release": ctx.release,
        "previous_release": ctx.previous_release,
        "hosts": [h.name for h in ctx.hosts],
        "outcome": outcome,
        "durations": {k: round(v, 3) for k, v in ctx.durations.items()},
        "error": mask(ctx, error) if error else None,
        "seq": seq if seq is not None else (SEQ_SWITCH if outcome == "success" else SEQ_FAILURE),
    }


def record_json(record: dict[str, Any]) -> str:
    # One line, whatever the values contain: json escapes newlines inside strings.
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def _rank(rec: dict[str, Any]) -> tuple[int, float]:
    seq = rec.get("seq")
    if not isinstance(seq, int):  # records written before `seq` existed
        seq = SEQ_SWITCH if rec.get("outcome") == "success" else SEQ_FAILURE
    finished = rec.get("finished")
    return seq, float(finished) if isinstance(finished, (int, float)) else 0.0


def merge(lines_per_host: Iterable[str], limit: int, offset: int = 0) -> list[dict[str, Any]]:
    """Merge history text from every host: by deploy_id, the record of the latest step wins
    (`seq`), then the latest `finished` (a later line in one file wins a tie). Newest deploy
    first, skipping the newest `offset`."""
    merged: dict[str, dict[str, Any]] = {}
    for text in lines_per_host:
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a torn line from a killed writer: skip it, keep the rest
            if not isinstance(rec, dict) or "deploy_id" not in rec:
                continue
            old = merged.get(rec["deploy_id"])
            if old is None or _rank(rec) >= _rank(old):
                merged[rec["deploy_id"]] = rec
    ordered = sorted(merged.values(), key=lambda r: (r.get("started") or 0, r["deploy_id"]), reverse=True)
    return ordered[offset:offset + limit]


# -- the final record ------------------------------------------------------------------------------
#
# restart_jobs is the last phase, and on per-host stores it already runs one agent command on
# every host: that command carries the final record (`agent_option`) and the agent appends it
# once its restarts are done (`append_final`). A host the phase does not call (a central store
# only calls the hosts that have runs to restart) gets the record in one plain append
# (`write_uncalled`), so every host's file ends up with the same complete record.


class _Final:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.handed: set[str] = set()


_finals: dict[str, _Final] = {}
_finals_lock = threading.Lock()


def _final(ctx: DeployContext) -> _Final:
    with _finals_lock:
        return _finals.setdefault(ctx.deploy_id, _Final())


def _phase_elapsed(ctx: DeployContext) -> float:
    from shipit.phases.common import engine_state

    start = engine_state(ctx).phase_started.get(FINAL_PHASE)
    return 0.0 if start is None else max(0.0, time.monotonic() - start)


def final_record(ctx: DeployContext) -> dict[str, Any]:
    """The success record as of now: durations so far plus restart_jobs up to this moment."""
    rec = make_record(ctx, "success", seq=SEQ_FINAL)
    rec["durations"][FINAL_PHASE] = round(_phase_elapsed(ctx), 3)
    return rec


def agent_option(ctx: DeployContext, host: Host, phase: str) -> dict[str, Any]:
    """Options to add to the agent restart of restart_jobs so that it writes the final record;
    nothing for any other restart (recovery, reconcile) or a dry run."""
    if phase != FINAL_PHASE or ctx.dry_run:
        return {}
    final = _final(ctx)
    with final.lock:
        final.handed.add(host.name)
    return {"history": final_record(ctx)}


def write_uncalled(ctx: DeployContext) -> None:
    """After a successful restart: append the final record on the hosts no agent call carried it
    to. A host that cannot be written keeps the switch's record; the deploy goes on."""
    from shipit.commands.release import remove_partial_command
    from shipit.hosts.fanout import FanOutError
    from shipit.phases.common import parallel, run

    if ctx.dry_run:
        return
    handed = _final(ctx).handed
    rest = [h for h in ctx.hosts if h.name not in handed]
    if not rest:
        return
    line = record_json(final_record(ctx))
    # The "remove partial" builder with nothing to remove is exactly the record append.
    command = remove_partial_command(ctx.stage.deploy_to, None, None, record_json=line)
    try:
        parallel(ctx, FINAL_PHASE, lambda h: run(ctx, h, FINAL_PHASE, command), rest)
    except FanOutError as exc:
        for name, err in exc.errors.items():
            ctx.bus.emit("log", host=name, phase=FINAL_PHASE, level="warning",
                         message=f"could not write the deploy record: {err}")


def forget_final(ctx: DeployContext) -> None:
    with _finals_lock:
        _finals.pop(ctx.deploy_id, None)


def _process_age(fallback_start: float) -> float:
    """Seconds since this process started (Linux: from /proc, so the interpreter's start-up
    counts), else since `fallback_start` (a monotonic time)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - started
        if 0 <= age < 3600:
            return age
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    return max(0.0, time.monotonic() - fallback_start)


def append_final(record: dict[str, Any], deploy_to: str, op_start: float) -> str:
    """On the host (agent restart): the record handed over, completed with the time this agent
    took (counted on the deployer's clock: started + durations stay consistent, and a record
    written later by the deployer always sorts after it), appended 0600. Returns the path."""
    age = _process_age(op_start)
    rec = dict(record)
    durations = dict(rec.get("durations") or {})
    durations[FINAL_PHASE] = round(float(durations.get(FINAL_PHASE) or 0.0) + age, 3)
    rec["durations"] = durations
    rec["finished"] = round(float(rec.get("finished") or time.time()) + age, 3)
    path = os.path.join(os.path.expanduser(deploy_to), HISTORY_FILE)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (record_json(rec) + "\n").encode())
    finally:
        os.close(fd)
    return path
