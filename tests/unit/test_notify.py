"""Notification pieces that need no server: which targets, which events, what the text says,
what is masked, and which target mistakes are refused before a deploy starts."""

from __future__ import annotations

from typing import Any

import pytest

from shipit.config.model import Config, NotifyTarget
from shipit.errors import ConfigError
from shipit.events import Event, EventBus
from shipit.notify import DEFAULT_EVENTS, Notifier, origin_for, targets_for, wants
from shipit.notify.message import payload, summary
from shipit.notify.redact import Masker, redact_url
from shipit.notify.targets import label

SOURCE = {"stage": "prod", "application": "shop"}
TOP = {"webhook": "https://hooks.example.com/top"}
STAGE = {"apprise": "ntfy://ntfy.sh/shop-deploys"}


def config(**stages: dict[str, Any]) -> Config:
    return Config.model_validate(
        {
            "application": "shop",
            "source": {"dir": "."},
            "deploy_to": "/srv/shop",
            "notify": [TOP],
            "stages": stages,
        }
    )


def test_a_stage_list_replaces_the_top_level_one_and_an_empty_one_silences() -> None:
    cfg = config(
        prod={"hosts": ["web1"], "notify": [STAGE]},
        staging={"hosts": ["web2"]},
        dev={"hosts": ["local"], "notify": []},
    )
    assert [t.apprise for t in targets_for(cfg, "prod")] == [STAGE["apprise"]]
    assert [t.webhook for t in targets_for(cfg, "staging")] == [TOP["webhook"]]
    assert targets_for(cfg, "dev") == ()
    with pytest.raises(ConfigError, match="unknown stage 'qa'"):
        targets_for(cfg, "qa")


def test_a_bad_target_is_named_by_the_key_it_is_written_under() -> None:
    cfg = config(prod={"hosts": ["web1"], "notify": [{"webhook": "ftp://x.example/k"}]})
    with pytest.raises(ConfigError) as info:
        Notifier(
            targets_for(cfg, "prod"), secrets=[], source=SOURCE, origin=origin_for(cfg, "prod")
        )
    assert str(info.value).startswith("shipit.yaml: stages.prod.notify[0] (webhook ftp://")


def ev(kind: str, host: str | None = None, message: str = "", **data: Any) -> Event:
    return Event(kind=kind, ts=2000.0, host=host, message=message, data=data)


def test_the_default_set_is_the_facts_not_the_chatter() -> None:
    target = NotifyTarget(webhook="https://h.example/x")
    assert all(wants(target, ev(kind)) for kind in DEFAULT_EVENTS)
    for kind in ("host.command", "host.output", "gate.renewed", "job.running", "log"):
        assert not wants(target, ev(kind))


def test_filters_take_kinds_globs_and_deploy_outcomes() -> None:
    target = NotifyTarget(webhook="https://h.example/x", events=["gate.*", "deploy.rolled_back"])
    assert wants(target, ev("gate.renewed"))
    assert wants(target, ev("deploy.finished", outcome="rolled_back"))
    assert not wants(target, ev("deploy.finished", outcome="success"))
    assert not wants(target, ev("deploy.started"))
    assert not wants(target, ev("job.stopped"))


@pytest.mark.parametrize(
    ("event", "text"),
    [
        (
            ev("job.stopped", host="w1", job="report", elapsed=12, checkpoint=None),
            "Job report on w1 stopped after 12.0s, no checkpoint",
        ),
        (
            ev(
                "job.interrupted",
                run={"job": "crunch", "host": "w2", "started_at": 1000.0, "checkpoint_at": 1500.0},
            ),
            "Job crunch on w2 interrupted after 16m 40s, checkpoint saved",
        ),
        (ev("job.stopped"), "Job job stopped"),
        (
            ev("job.restarted", host="w1", run={"job": "crunch", "id": "r-3", "attempt": 3}),
            "Job crunch restarted on w1 (attempt 3, run r-3)",
        ),
        (ev("job.given_up", job="sync", message="exit 1\nmore"), "Job sync given up: exit 1"),
        (
            ev("gate.forced", host="w1", holder="bob", epoch=4),
            "Job gate FORCED on w1 by bob (epoch 4) [shop prod]",
        ),
        (ev("deploy.finished", outcome="interrupted"), "Deploy of shop to prod was interrupted"),
        (ev("deploy.finished"), "Deploy of shop to prod finished: finished"),
        (ev("deploy.started", hosts="not-a-list", revision=None), "Deploying shop to prod"),
        (
            ev("release.switched", host="w1", message="current -> 2026"),
            "release.switched on w1: current -> 2026",
        ),
    ],
)
def test_summaries_read_well_whatever_shape_the_data_has(event: Event, text: str) -> None:
    assert summary(event, SOURCE) == text


ROLLBACK = {**SOURCE, "mode": "rollback"}


@pytest.mark.parametrize(
    ("event", "source", "text"),
    [
        (
            ev("deploy.started", hosts=["w1", "w2"], mode="rollback"),
            {**SOURCE, "actor": "ann@ci"},
            "Rolling back shop on prod to the previous release (2 hosts) by ann@ci",
        ),
        (
            ev("deploy.started", hosts=["w1"], mode="rollback", rollback_to="20261122051230"),
            SOURCE,
            "Rolling back shop on prod to release 20261122051230 (1 host)",
        ),
        (
            ev("deploy.finished", outcome="success", release="20261122051230",
               durations={"release": 1.0, "restart_jobs": 0.5}, mode="rollback"),
            SOURCE,
            "Rolled back shop on prod to release 20261122051230 in 1.5s",
        ),
        # deploy.finished without a mode: the notifier's source says it is a rollback.
        (ev("deploy.finished", outcome="success", release="R1"), ROLLBACK,
         "Rolled back shop on prod to release R1"),
        (ev("deploy.finished", outcome="failed", error="[w1] no earlier good release"), ROLLBACK,
         "Rollback of shop on prod FAILED: [w1] no earlier good release"),
        (ev("deploy.finished", outcome="rolled_back", error="hook failed"), ROLLBACK,
         "Rollback of shop on prod FAILED and was undone: hook failed"),
        (ev("deploy.finished", outcome="interrupted"), ROLLBACK,
         "Rollback of shop on prod was interrupted"),
        # A plain deploy still says deploy.
        (ev("deploy.finished", outcome="success", release="R2", mode="deploy"), ROLLBACK,
         "Deployed shop to prod (release R2)"),
    ],
)
def test_a_manual_rollback_is_announced_as_a_rollback(
    event: Event, source: dict[str, Any], text: str
) -> None:
    assert summary(event, source) == text


def test_payload_keeps_whether_a_checkpoint_exists_but_not_its_content() -> None:
    body = payload(
        ev(
            "job.stopped",
            host="w1",
            run={"job": "x", "checkpoint": {"rows": [1, 2]}, "env": {"A": "1"}},
            blob=object(),
        ),
        SOURCE,
    )
    assert body["data"]["run"] == {"job": "x", "checkpoint": True}
    assert body["data"]["checkpoint_saved"] is True
    assert isinstance(body["data"]["blob"], str)
    assert body["ts"] == "1970-01-01T00:33:20.000+00:00"


def test_masking_reaches_nested_values_keys_and_url_encoded_forms() -> None:
    m = Masker(["p@ss word", "p@ss", ""])
    assert m.data(
        {
            "a": ["x p@ss word y"],
            "p@ss": 1,
            "u": "https://h/?k=p%40ss%20word",
            "q": "k=p%40ss+word",
            "n": 3,
            "b": None,
        }
    ) == {"a": ["x **** y"], "****": 1, "u": "https://h/?k=****", "q": "k=****", "n": 3, "b": None}


def test_urls_are_named_without_their_tokens() -> None:
    assert redact_url("https://u:pw@hooks.slack.com:8443/services/T0/B0/XYZ?t=1") == (
        "https://hooks.slack.com:8443/…"
    )
    assert label(NotifyTarget(apprise="slack://TokenA/TokenB/TokenC/#ops")) == "apprise slack://…"
    assert (
        label(NotifyTarget(webhook="http://127.0.0.1:9/x?key=k")) == "webhook http://127.0.0.1:9/…"
    )


@pytest.mark.parametrize(
    ("target", "error", "token"),
    [
        (
            NotifyTarget(webhook="ftp://files.example/T0K"),
            r"notify\[0\].*http:// or https://",
            "T0K",
        ),
        (NotifyTarget(webhook="hooks.example.com/T0K"), r"http:// or https://", "T0K"),
        (
            NotifyTarget(apprise="nosuchservice://T0K"),
            r"apprise does not understand this nosuchservice://",
            "T0K",
        ),
    ],
)
def test_a_target_shipit_cannot_use_is_refused_up_front(
    target: NotifyTarget, error: str, token: str
) -> None:
    with pytest.raises(ConfigError, match=error) as info:
        Notifier([target], secrets=[], source=SOURCE)
    assert token not in str(info.value)


def test_without_targets_the_notifier_is_inert() -> None:
    bus = EventBus()
    notifier = Notifier([], secrets=[], source=SOURCE).attach(bus)
    bus.emit("deploy.started", deploy_id="d")
    assert notifier.close(0.1) is True
    assert notifier.failures == [] and notifier.delivered == 0


# -- manual commands (shipit lock / jobs pause / resume / reconcile) and the restart events --------

LOCK = {**SOURCE, "mode": "lock"}
PAUSE = {**SOURCE, "mode": "pause"}
RECONCILE = {**SOURCE, "mode": "reconcile"}


@pytest.mark.parametrize(
    ("event", "source", "text"),
    [
        (ev("gate.closed", host="w1", epoch=7, holder="ann@ci", reason="db migration\nmore"),
         LOCK, "Deploy lock taken on w1 by ann@ci (epoch 7): db migration [shop prod]"),
        (ev("gate.reopened", host="w1", epoch=7, holder="ann@ci"), LOCK,
         "Deploy lock released on w1 by ann@ci (epoch 7) [shop prod]"),
        (ev("gate.closed", host="w1", epoch=7, holder="ann@ci", reason="backfill"), PAUSE,
         "Jobs paused on w1 by ann@ci (epoch 7): backfill [shop prod]"),
        (ev("gate.reopened", epoch=7, holder="ann@ci"), PAUSE,
         "Jobs resumed by ann@ci (epoch 7) [shop prod]"),
        # A deploy's reopen does not name its own deploy as "by".
        (ev("gate.reopened", host="w1", epoch=7, holder="ann@ci"), SOURCE,
         "Job gate reopened on w1 (epoch 7) [shop prod]"),
        (ev("gate.reopened", host="w1", epoch=7, holder="ann@ci", expired=True), RECONCILE,
         "Job gate reopened on w1 after its lease expired (epoch 7) [shop prod]"),
        (ev("gate.forced", host="w1", epoch=8, holder="bob", action="force-close",
            reason="hotfix", previous_holder="ann@ci", previous_deploy_id="lock-1a2b",
            previous_reason="db migration", previous_expired=False), LOCK,
         "Job gate FORCED closed on w1 by bob (epoch 8): hotfix; it was held by ann@ci "
         "(lock-1a2b: db migration) [shop prod]"),
        (ev("gate.forced", host="w1", epoch=8, holder="bob", action="force-open",
            previous_holder="ann@ci", previous_deploy_id="d-9", previous_reason=None,
            previous_expired=True), PAUSE,
         "Job gate FORCED open on w1 by bob (epoch 8); it was held by ann@ci "
         "(d-9, lease expired) [shop prod]"),
        (ev("gate.forced", host="w1", epoch=3, holder="bob", action="force-open",
            previous_holder="?", previous_reason="unreadable gate", unreadable=True), PAUSE,
         "Job gate FORCED open on w1 by bob (epoch 3); it replaced an unreadable gate [shop prod]"),
        # What jobs.restart emits: run_id is the stopped run; the new run has no id yet.
        (ev("job.restarted", host="w1", job="crunch", run_id="r-1", attempt=2, pid=42,
            log="/x/r-1.next.log"), RECONCILE,
         "Job crunch restarted on w1 (attempt 2, continuing run r-1)"),
        (ev("job.restarted", host="w1", job="crunch", run_id="r-1", attempt=3, respawned=True),
         RECONCILE,
         "Job crunch restarted on w1 (attempt 3, continuing run r-1, its first restart was lost)"),
        (ev("job.given_up", host="w2", run={"run_id": "r-5", "job": "sync", "attempt": 6},
            max_restarts=5), RECONCILE, "Job sync on w2 given up: it reached max_restarts (5)"),
        (ev("job.restart_failed", host="w1", run={"run_id": "r-1", "job": "crunch"},
            message="run r-1 (crunch) not restarted, its saved state cannot be decrypted\nx"),
         RECONCILE,
         "Job crunch on w1 could NOT be restarted (run r-1): run r-1 (crunch) not restarted, "
         "its saved state cannot be decrypted"),
        (ev("job.restart_respawned", host="w1", run={"run_id": "r-1", "job": "crunch"},
            respawns=1, message="run r-1: its restart, claimed 9.0s earlier ..."), RECONCILE,
         "Job crunch on w1: the restart of run r-1 was lost, starting it again"),
    ],
)
def test_events_of_manual_commands_read_well(
    event: Event, source: dict[str, Any], text: str
) -> None:
    assert summary(event, source) == text
    assert "\n" not in payload(event, source)["text"]


def test_restart_facts_never_pass_the_stopped_run_off_as_the_new_one() -> None:
    body = payload(ev("job.restarted", host="w1", job="crunch", run_id="r-1", attempt=2), RECONCILE)
    assert body["data"]["new_run_id"] is None and body["data"]["continues"] == "r-1"
    assert body["data"]["attempt"] == 2 and body["mode"] == "reconcile"
    # An emitter that knows the new run says so.
    known = payload(ev("job.restarted", job="c", run_id="r-1", new_run_id="r-2"), SOURCE)
    assert (known["data"]["new_run_id"], known["data"]["continues"]) == ("r-2", "r-1")


def test_forced_gates_and_failed_restarts_are_warnings_in_the_default_set() -> None:
    target = NotifyTarget(webhook="https://h.example/x")
    for kind in ("gate.forced", "job.restart_failed", "job.given_up"):
        assert wants(target, ev(kind))
        assert payload(ev(kind), LOCK)["severity"] == "warning"
    assert not wants(target, ev("job.restart_respawned"))  # a job.restarted follows it
    assert payload(ev("gate.closed"), LOCK)["mode"] == "lock"
    assert payload(ev("deploy.started", mode="rollback"), SOURCE)["mode"] == "rollback"
