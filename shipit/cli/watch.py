"""`shipit status STAGE --watch`: the gate, the runs and the current deploy's phase, refreshed.

On a terminal the view is redrawn in place (rich Live); otherwise each refresh is printed as a
plain snapshot (or one JSON line with --json), so CI logs and pipes get readable history.
Ctrl-C ends the watch with exit 0: stopping to look is not a failure.

The phase comes from the deploy's own log (`.shipit/logs/<stage>-<deploy id>.log` next to
shipit.yaml), found through the deploy id on the lease: a deploy running on another machine
shows as "phase unknown (running elsewhere)".
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from shipit.config.model import PHASES
from shipit.errors import ShipitError


def deploy_phase(config_path: str, stage: str, deploy_id: str) -> str | None:
    """The phase the deploy `deploy_id` last entered, from its log file on this machine."""
    from shipit.output.logfile import log_dir_for, safe_name

    if not deploy_id:
        return None
    path = log_dir_for(config_path) / f"{safe_name(stage)}-{safe_name(deploy_id)}.log"
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for text in reversed(lines):
        parts = text.split(None, 2)
        if len(parts) < 3:
            continue
        if parts[1] in ("deploy.finished", "summary"):
            return "finished"
        if parts[1] == "phase.started":
            return next((p for p in PHASES if p in parts[2]), None)
    return "starting"


def snapshot(st: Any) -> dict[str, Any]:
    """One look at every store; a store that fails is shown with its error, not fatal."""
    results = st.each("status", {"readonly": True})
    out: dict[str, Any] = {"at": time.time(), "stores": {}}
    for target, res in results.items():
        where = "store" if target == "*" else target
        if isinstance(res, ShipitError):
            out["stores"][where] = {"error": str(res)}
            continue
        gate = res.get("gate") or {}
        entry = dict(res)
        if gate.get("closed") and gate.get("deploy_id"):
            phase = deploy_phase(st.stage.config_path, st.stage.name, str(gate["deploy_id"]))
            entry["deploy"] = {"id": gate["deploy_id"], "holder": gate.get("holder"),
                               "phase": phase or "unknown (running elsewhere)"}
        out["stores"][where] = entry
    return out


def render_text(snap: dict[str, Any], gate_line: Callable[..., str],
                run_line: Callable[[dict[str, Any]], str]) -> str:
    from shipit.jobs.drain import iso

    lines = [f"--- {iso(snap['at'])}"]
    for where, res in snap["stores"].items():
        if "error" in res:
            lines.append(f"{where}: unavailable: {res['error']}")
            continue
        lines.append(f"{where}: gate {gate_line(res['gate'], res.get('now'))}")
        if res.get("deploy"):
            d = res["deploy"]
            lines.append(f"  deploy {d['id']} by {d['holder']}: phase {d['phase']}")
        if res.get("current"):
            lines.append(f"  current release {res['current']}")
        runs = res.get("runs") or []
        lines += ["  " + run_line(r) for r in runs] or ["  no jobs running"]
    return "\n".join(lines)


def watch(st: Any, *, interval: float, count: int | None, as_json: bool, tty: bool,
          gate_line: Callable[..., str], run_line: Callable[[dict[str, Any]], str]) -> None:
    def frames() -> Any:
        n = 0
        while True:
            yield snapshot(st)
            n += 1
            if count is not None and n >= count:
                return
            time.sleep(interval)

    try:
        if tty and not as_json:
            from rich.console import Console
            from rich.live import Live
            from rich.text import Text

            with Live(console=Console(), auto_refresh=False, transient=False) as live:
                for snap in frames():
                    live.update(Text(render_text(snap, gate_line, run_line)), refresh=True)
            return
        for snap in frames():
            if as_json:
                click.echo(json.dumps(snap, default=str, sort_keys=True))
            else:
                click.echo(render_text(snap, gate_line, run_line))
    except KeyboardInterrupt:
        return
