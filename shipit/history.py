"""Deploy records: one JSON line per record in `{deploy_to}/.shipit/history.jsonl` on every host.

Records are appended inside commands the deploy runs anyway (the switch appends "success", the
failure path appends the superseding outcome), so history costs no extra remote command. A
deploy may therefore have several lines; readers merge by deploy_id and the last one wins.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from shipit.phases.common import engine_state, mask
from shipit.phases.context import DeployContext


def make_record(ctx: DeployContext, outcome: str, error: str | None = None) -> dict[str, Any]:
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
    }


def record_json(record: dict[str, Any]) -> str:
    # One line, whatever the values contain: json escapes newlines inside strings.
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def merge(lines_per_host: Iterable[str], limit: int) -> list[dict[str, Any]]:
    """Merge history text from every host: by deploy_id, the latest `finished` wins (a later
    line in one file wins a tie). Newest deploy first."""
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
            if old is None or (rec.get("finished") or 0) >= (old.get("finished") or 0):
                merged[rec["deploy_id"]] = rec
    ordered = sorted(merged.values(), key=lambda r: (r.get("started") or 0, r["deploy_id"]), reverse=True)
    return ordered[:limit]
