"""Turning an event into what a person reads (one line) and what a webhook receives (JSON).

Event data shapes differ a little between backends and phases, so every field is read with
fallbacks and nothing here may raise on a missing or oddly typed key.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from shipit.events import Event

# Big values (checkpoint state, environments) do not belong in a chat message or a webhook:
# they may hold user data, and some endpoints reject large bodies.
_DROPPED_KEYS = frozenset({"env"})
_MAX_STRING = 2000


def _str(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _run(event: Event) -> dict[str, Any]:
    for key in ("run", "old_run"):
        run = event.data.get(key)
        if isinstance(run, dict):
            return run
    return {}


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def job_facts(event: Event) -> dict[str, Any]:
    """Stable keys for job events whatever shape the emitter used."""
    data, run = event.data, _run(event)
    facts: dict[str, Any] = {
        "job": _str(data.get("job")) or _str(data.get("name")) or _str(run.get("job")),
        # run_info() (jobs.drain) names it run_id, Run.to_dict() id.
        "run_id": _str(data.get("run_id")) or _str(run.get("id")) or _str(run.get("run_id")),
        "attempt": data.get("attempt", run.get("attempt")),
    }
    elapsed = _num(data.get("elapsed"))
    started = _num(run.get("started_at"))
    if elapsed is None and started is not None:
        end = _num(run.get("finished_at")) or event.ts
        elapsed = max(0.0, end - started)
    facts["elapsed"] = elapsed
    facts["checkpoint_saved"] = _checkpoint_saved(data, run)
    if event.kind == "job.restarted":
        new_run = data.get("new_run") if isinstance(data.get("new_run"), dict) else {}
        new_id = _str(data.get("new_run_id")) or _str(new_run.get("id"))
        if new_id is None and run and data.get("run_id") is None:
            new_id = _str(run.get("id"))  # the event's run is the new one
        # What deploys and reconcile emit: run_id is the STOPPED run, and the new run has no id
        # yet (its supervisor creates it once the gate is open): it continues run_id.
        facts["new_run_id"] = new_id
        facts["continues"] = (
            _str(data.get("continues")) or _str(run.get("continues"))
            or (facts["run_id"] if facts["run_id"] != new_id else None)
        )
        if new_run.get("attempt") is not None:
            facts["attempt"] = new_run.get("attempt")
    if event.kind == "job.given_up":
        facts["restarts"] = data.get("restarts", run.get("restarts"))
        facts["max_restarts"] = data.get("max_restarts")
    return facts


def _checkpoint_saved(data: dict[str, Any], run: dict[str, Any]) -> bool | None:
    for key in ("checkpoint_saved", "checkpointed"):
        if isinstance(data.get(key), bool):
            return bool(data[key])
    if "checkpoint" in data:
        value = data["checkpoint"]
        return value if isinstance(value, bool) else value is not None
    if run:
        if run.get("state") == "checkpointed":
            return True
        return run.get("checkpoint") is not None or run.get("checkpoint_at") is not None
    return None


def host_of(event: Event) -> str | None:
    return event.host or _str(event.data.get("host")) or _str(_run(event).get("host"))


def summary(event: Event, source: dict[str, Any]) -> str:
    """One line a person understands without knowing shipit's event names."""
    data = event.data
    app = _str(source.get("application")) or "app"
    stage = _str(source.get("stage")) or _str(data.get("stage")) or "?"
    host = host_of(event)
    on_host = f" on {host}" if host else ""
    kind = event.kind

    if kind == "deploy.started":
        rev = _str(data.get("revision"))
        hosts = data.get("hosts")
        count = (
            f" ({len(hosts)} host{'s' if len(hosts) != 1 else ''})"
            if isinstance(hosts, (list, tuple))
            else ""
        )
        actor = _str(source.get("actor"))
        by = f" by {actor}" if actor else ""
        if _is_rollback(event, source):
            to = _str(data.get("rollback_to"))
            target = f"release {to}" if to else "the previous release"
            return f"Rolling back {app} on {stage} to {target}{count}{by}"
        return f"Deploying {app}{' ' + rev[:12] if rev else ''} to {stage}{count}{by}"
    if kind == "deploy.finished":
        if _is_rollback(event, source):
            return _rollback_finished(event, app, stage)
        return _finished(event, app, stage)
    if kind in ("gate.closed", "gate.reopened", "gate.forced"):
        return f"{_gate(event, source, on_host)} [{app} {stage}]"
    if kind.startswith("job."):
        return _job(event, on_host)
    text = event.message.strip().splitlines()[0] if event.message.strip() else ""
    return f"{kind}{on_host}{': ' + text if text else ''}"


# What a gate event says when a command run by hand (source "mode") closed or opened the gate.
_MANUAL_GATE = {
    ("lock", "gate.closed"): "Deploy lock taken",
    ("lock", "gate.reopened"): "Deploy lock released",
    ("pause", "gate.closed"): "Jobs paused",
    ("pause", "gate.reopened"): "Jobs resumed",
}


def _first_line(value: Any, limit: int = 200) -> str | None:
    text = _str(value)
    if text is None or not text.strip():
        return None
    line = text.strip().splitlines()[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _gate(event: Event, source: dict[str, Any], on_host: str) -> str:
    data, kind = event.data, event.kind
    epoch = data.get("epoch")
    holder = _str(data.get("holder"))
    by = f" by {holder}" if holder else ""
    tail = f" (epoch {epoch})" if epoch is not None else ""
    reason = _first_line(data.get("reason"))
    why = f": {reason}" if reason else ""
    if kind == "gate.forced":
        # action is the audit trail's: force-close (taken from its holder) or force-open.
        action = _str(data.get("action")) or ""
        how = {"force-close": " closed", "force-open": " open"}.get(action, "")
        text = f"Job gate FORCED{how}{on_host}{by}{tail}"
        if how == " closed":
            text += why
        return text + _forced_from(data)
    manual = _MANUAL_GATE.get((_str(source.get("mode")) or "", kind))
    if manual:
        return f"{manual}{on_host}{by}{tail}{why if kind == 'gate.closed' else ''}"
    if kind == "gate.reopened":
        expired = " after its lease expired" if data.get("expired") is True else ""
        return f"Job gate reopened{on_host}{expired}{tail}"
    return f"Job gate closed{on_host}{by}{tail}"


def _forced_from(data: dict[str, Any]) -> str:
    """Whom a forced close/open overrode: `; it was held by ann@ci (lock-1a2b: migration)`."""
    previous = _str(data.get("previous_holder"))
    if previous is None:
        return ""
    if data.get("unreadable") is True:
        return "; it replaced an unreadable gate"
    bits = [b for b in (_str(data.get("previous_deploy_id")),) if b]
    reason = _first_line(data.get("previous_reason"), 120)
    detail = ", ".join(bits)
    if reason:
        detail = f"{detail}: {reason}" if detail else reason
    if data.get("previous_expired") is True:
        detail = f"{detail}, lease expired" if detail else "lease expired"
    return f"; it was held by {previous}{' (' + detail + ')' if detail else ''}"


def _is_rollback(event: Event, source: dict[str, Any]) -> bool:
    """`shipit rollback` (deploy.started / deploy.finished say so, else the notifier's source)."""
    return (_str(event.data.get("mode")) or _str(source.get("mode"))) == "rollback"


def _took_and_why(event: Event, outcome: str) -> tuple[str, str]:
    data = event.data
    took = ""
    durations = data.get("durations")
    if isinstance(durations, dict):
        total = sum(v for v in (_num(x) for x in durations.values()) if v is not None)
        if total:
            took = f" in {duration(total)}"
    error = _str(data.get("error")) or (_str(event.message) if outcome != "success" else None)
    why = f": {error.strip().splitlines()[0]}" if error and error.strip() else ""
    return took, why


def _rollback_finished(event: Event, app: str, stage: str) -> str:
    outcome = _str(event.data.get("outcome")) or "finished"
    release = _str(event.data.get("release"))
    took, why = _took_and_why(event, outcome)
    if outcome == "success":
        return f"Rolled back {app} on {stage}{' to release ' + release if release else ''}{took}"
    if outcome == "rolled_back":
        return f"Rollback of {app} on {stage} FAILED and was undone{took}{why}"
    if outcome == "interrupted":
        return f"Rollback of {app} on {stage} was interrupted{took}{why}"
    if outcome == "failed":
        return f"Rollback of {app} on {stage} FAILED{took}{why}"
    return f"Rollback of {app} on {stage} finished: {outcome}{took}{why}"


def _finished(event: Event, app: str, stage: str) -> str:
    data = event.data
    outcome = _str(data.get("outcome")) or "finished"
    release = _str(data.get("release"))
    took, why = _took_and_why(event, outcome)
    if outcome == "success":
        return f"Deployed {app} to {stage}{took}{' (release ' + release + ')' if release else ''}"
    if outcome == "rolled_back":
        return f"Deploy of {app} to {stage} FAILED and was rolled back{took}{why}"
    if outcome == "interrupted":
        return f"Deploy of {app} to {stage} was interrupted{took}{why}"
    if outcome == "failed":
        return f"Deploy of {app} to {stage} FAILED{took}{why}"
    return f"Deploy of {app} to {stage} finished: {outcome}{took}{why}"


def _job(event: Event, on_host: str) -> str:
    facts = job_facts(event)
    name = facts["job"] or "job"
    run_id = facts["run_id"]
    kind = event.kind
    if kind in ("job.stopped", "job.interrupted"):
        verb = "stopped" if kind == "job.stopped" else "interrupted"
        after = f" after {duration(facts['elapsed'])}" if facts["elapsed"] is not None else ""
        saved = facts["checkpoint_saved"]
        state = {True: ", checkpoint saved", False: ", no checkpoint"}.get(saved, "")
        return f"Job {name}{on_host} {verb}{after}{state}"
    if kind == "job.restarted":
        bits = []
        if facts.get("attempt") is not None:
            bits.append(f"attempt {facts['attempt']}")
        if facts.get("new_run_id"):
            bits.append(f"run {facts['new_run_id']}")
        elif facts.get("continues"):
            bits.append(f"continuing run {facts['continues']}")
        if event.data.get("respawned") is True:
            bits.append("its first restart was lost")
        return f"Job {name} restarted{on_host}{' (' + ', '.join(bits) + ')' if bits else ''}"
    if kind == "job.given_up":
        restarts = facts.get("restarts")
        limit = facts.get("max_restarts")
        after = f" after {restarts} restarts" if restarts is not None else ""
        why = _first_line(event.message) or (
            f"it reached max_restarts ({limit})" if limit is not None and not after else ""
        )
        return f"Job {name}{on_host} given up{after}{': ' + why if why else ''}"
    if kind == "job.restart_failed":
        why = _first_line(event.message or event.data.get("error"))
        run = f" (run {run_id})" if run_id else ""
        return f"Job {name}{on_host} could NOT be restarted{run}{': ' + why if why else ''}"
    if kind == "job.restart_respawned":
        # The reason (event.message) is a paragraph: the audit trail keeps it.
        run = f" of run {run_id}" if run_id else ""
        return f"Job {name}{on_host}: the restart{run} was lost, starting it again"
    verb = kind.split(".", 1)[1].replace("_", " ")
    return f"Job {name}{on_host} {verb}{' (run ' + run_id + ')' if run_id else ''}"


def severity(event: Event) -> str:
    """info | success | warning | failure: lets chat targets colour the message."""
    if event.kind == "deploy.finished":
        outcome = event.data.get("outcome")
        return {"success": "success", "interrupted": "warning"}.get(str(outcome), "failure")
    if event.kind in ("gate.forced", "job.given_up", "job.interrupted", "job.restart_failed"):
        return "warning"
    return "info"


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k in _DROPPED_KEYS:
                continue
            if k == "checkpoint":
                # Whether state was saved matters to a reader; the state itself does not.
                out[k] = v if isinstance(v, bool) else v is not None
                continue
            out[str(k)] = _clean(v)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_clean(v) for v in value]
    if isinstance(value, str) and len(value) > _MAX_STRING:
        return value[:_MAX_STRING] + "…"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def payload(event: Event, source: dict[str, Any]) -> dict[str, Any]:
    """The webhook body (before secret masking, which the notifier applies to all of it)."""
    data = _clean(event.data)
    if event.kind.startswith("job."):
        for key, value in job_facts(event).items():
            data.setdefault(key, value)
    return {
        "event": event.kind,
        "text": summary(event, source),
        "severity": severity(event),
        "stage": _str(source.get("stage")) or _str(event.data.get("stage")),
        "application": _str(source.get("application")),
        "deploy_id": _str(source.get("deploy_id")) or _str(event.data.get("deploy_id")),
        # deploy | rollback, or the command run by hand: lock, pause, reconcile.
        "mode": _str(source.get("mode"))
        or (_str(event.data.get("mode")) if event.kind.startswith("deploy.") else None),
        "host": host_of(event),
        "ts": datetime.fromtimestamp(event.ts, tz=timezone.utc).isoformat(timespec="milliseconds"),
        "data": data,
    }
