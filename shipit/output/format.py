"""One-line human descriptions of events, shared by the plain, live and log-file renderers so
that a CI log and a terminal tell the same story in the same words."""

from __future__ import annotations

from typing import Any

from shipit.events import Event

# The deploy phases, in order, as shown by every renderer.
PHASES = ("pre_deploy", "drain_jobs", "release", "restart_jobs")

_JOB_VERBS = {
    "job.running": "running",
    "job.stop_requested": "asked to stop",
    "job.stopped": "stopped",
    "job.finished": "finished",
    "job.interrupted": "interrupted",
    "job.restarted": "restarted",
    "job.restart_respawned": "restart re-spawned",
    "job.given_up": "given up (too many restarts)",
}


def seconds(value: Any) -> str:
    try:
        s = float(value)
    except (TypeError, ValueError):
        return "?"
    if s < 60:
        return f"{s:.1f}s"
    minutes, rest = divmod(int(s), 60)
    return f"{minutes}m{rest:02d}s"


def iso_time(ts: float) -> str:
    """UTC, milliseconds: `2026-11-22T05:12:41.503Z` (the log file's format)."""
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def show_value(key: str, value: Any) -> str:
    """One field of a record (a job run) as text: `*_at` times in ISO 8601 UTC, a command as
    shell words, lists comma-separated, structures as JSON, nothing as `-`."""
    import json
    import shlex

    if value is None or value == [] or value == "":
        return "-"
    if key.endswith("_at") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return iso_time(value)
    if key == "command" and isinstance(value, list):
        return shlex.join(map(str, value))
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def job_name(data: dict[str, Any]) -> str:
    run = data.get("run")
    if isinstance(run, dict):
        return str(run.get("job") or run.get("id") or "?")
    return str(data.get("job") or data.get("run_id") or "?")


def started_what(d: dict[str, Any]) -> str:
    """`deploying branch main to prod`, `rolling back prod to the previous release`, ..."""
    stage = d.get("stage", "?")
    if d.get("mode") == "rollback":
        to = d.get("rollback_to")
        text = f"rolling back {stage} to {f'release {to}' if to else 'the previous release'}"
    else:
        if d.get("revision"):
            what = f"revision {d['revision']}"
        elif d.get("branch"):
            what = f"branch {d['branch']}"
        elif d.get("source_dir"):
            what = f"directory {d['source_dir']}"
        else:
            what = "HEAD"
        text = f"deploying {what} to {stage}"
    return f"dry run: {text}" if d.get("dry_run") else text


def describe(event: Event) -> str:
    """The message part of a plain line: no host/phase prefix, no colour."""
    d = event.data
    kind = event.kind
    if kind == "deploy.started":
        hosts = d.get("hosts") or []
        count = f"{len(hosts)} host{'s' * (len(hosts) != 1)}"
        return f"{started_what(d)} ({count}), deploy {d.get('deploy_id', '?')}"
    if kind == "deploy.finished":
        what = "rollback" if d.get("mode") == "rollback" else "deploy"
        text = f"{what} {d.get('deploy_id', '?')} {d.get('outcome', '?')}"
        if d.get("release"):
            text += f", release {d['release']}"
        if d.get("error"):
            text += f": {d['error']}"
        return text
    if kind == "phase.started":
        return "started"
    if kind == "phase.finished":
        state = "done" if d.get("ok", True) else "FAILED"
        return f"{state} in {seconds(d.get('duration'))}" if "duration" in d else state
    if kind == "host.command":
        return f"$ {d.get('command', event.message)}"
    if kind == "host.output":
        return event.message
    if kind == "host.failed":
        return f"FAILED: {event.message}"
    if kind in ("hook.started", "hook.finished"):
        where = f" ({d['where']})" if d.get("where") else ""
        if kind == "hook.started":
            verb = "running"
        else:
            verb = "FAILED" if d.get("ok") is False else "finished"
        return f"hook {d.get('hook', '?')}{where} {verb}"
    if kind.startswith("gate."):
        verb = kind.split(".", 1)[1]
        text = f"gate {verb}"
        if d.get("epoch") is not None:
            text += f" (epoch {d['epoch']})"
        if kind == "gate.forced":
            # holder: who forced it; previous_holder: whom it was taken from (cli/jobs.py).
            if d.get("holder"):
                text += f" by {d['holder']}"
            if d.get("previous_holder"):
                text += f", was held by {d['previous_holder']}"
        return text + (f": {event.message}" if event.message else "")
    if kind in _JOB_VERBS:
        text = f"job {job_name(d)} {_JOB_VERBS[kind]}"
        run = d.get("run") if isinstance(d.get("run"), dict) else {}
        if kind == "job.running" and run.get("pid"):
            text += f" (pid {run['pid']})"
        return text + (f": {event.message}" if event.message else "")
    if kind.startswith("release."):
        rel = d.get("release") or ""
        verb = {
            "release.prepared": "prepared",
            "release.switched": "switched to",
            "release.rolled_back": "rolled back to",
            "release.removed": "removed",
        }.get(kind, kind.split(".", 1)[1].replace("_", " "))
        if kind == "release.rolled_back" and not rel:
            verb = "rolled back: no earlier release, current removed"
        text = f"{verb} {rel}".strip() if rel else verb
        return text + (f": {event.message}" if event.message else "")
    if kind == "log":
        level = str(d.get("level", "info"))
        return event.message if level in ("info", "debug") else f"{level}: {event.message}"
    return f"{kind}: {event.message}" if event.message else kind


def prefix(event: Event) -> str:
    parts = []
    if event.host:
        parts.append(f"[{event.host}]")
    if event.phase:
        parts.append(f"{event.phase}:")
    return " ".join(parts)


def line(event: Event) -> str:
    head = prefix(event)
    body = describe(event)
    return f"{head} {body}" if head else body
