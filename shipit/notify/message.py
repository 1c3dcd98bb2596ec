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
        "run_id": _str(data.get("run_id")) or _str(run.get("id")),
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
        facts["new_run_id"] = (
            _str(data.get("new_run_id")) or _str(new_run.get("id")) or facts["run_id"]
        )
        facts["continues"] = _str(data.get("continues")) or _str(run.get("continues"))
        if new_run.get("attempt") is not None:
            facts["attempt"] = new_run.get("attempt")
    if event.kind == "job.given_up":
        facts["restarts"] = data.get("restarts", run.get("restarts"))
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
        verb = {"gate.closed": "closed", "gate.reopened": "reopened", "gate.forced": "FORCED"}[kind]
        epoch = data.get("epoch")
        holder = _str(data.get("holder"))
        tail = f" (epoch {epoch})" if epoch is not None else ""
        by = f" by {holder}" if holder and kind != "gate.reopened" else ""
        return f"Job gate {verb}{on_host}{by}{tail} [{app} {stage}]"
    if kind.startswith("job."):
        return _job(event, on_host)
    text = event.message.strip().splitlines()[0] if event.message.strip() else ""
    return f"{kind}{on_host}{': ' + text if text else ''}"


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
        return f"Job {name} restarted{on_host}{' (' + ', '.join(bits) + ')' if bits else ''}"
    if kind == "job.given_up":
        restarts = facts.get("restarts")
        after = f" after {restarts} restarts" if restarts is not None else ""
        why = event.message.strip().splitlines()[0] if event.message.strip() else ""
        return f"Job {name}{on_host} given up{after}{': ' + why if why else ''}"
    verb = kind.split(".", 1)[1].replace("_", " ")
    return f"Job {name}{on_host} {verb}{' (run ' + run_id + ')' if run_id else ''}"


def severity(event: Event) -> str:
    """info | success | warning | failure: lets chat targets colour the message."""
    if event.kind == "deploy.finished":
        outcome = event.data.get("outcome")
        return {"success": "success", "interrupted": "warning"}.get(str(outcome), "failure")
    if event.kind in ("gate.forced", "job.given_up", "job.interrupted"):
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
        "host": host_of(event),
        "ts": datetime.fromtimestamp(event.ts, tz=timezone.utc).isoformat(timespec="milliseconds"),
        "data": data,
    }
