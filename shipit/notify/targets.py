"""Which targets a stage notifies, and which events each target wants."""

from __future__ import annotations

from fnmatch import fnmatchcase

from shipit.config.model import Config, NotifyTarget
from shipit.errors import ConfigError
from shipit.events import Event
from shipit.notify.redact import redact_url

# What a target gets when its `events` list is empty: the facts a person on call acts on,
# not the chatter (commands, output lines, renewals).
DEFAULT_EVENTS: frozenset[str] = frozenset(
    {
        "deploy.started",
        "deploy.finished",
        "gate.closed",
        "gate.reopened",
        "gate.forced",
        "job.stopped",
        "job.interrupted",
        "job.restarted",
        "job.restart_failed",
        "job.given_up",
    }
)

# deploy.finished carries its outcome in data; these names let a target ask for failures only.
OUTCOME_ALIASES = ("success", "failed", "rolled_back", "interrupted")


def targets_for(config: Config, stage_name: str) -> tuple[NotifyTarget, ...]:
    """The targets of one stage: the stage's own list when it has one (even an empty one, which
    silences the stage), otherwise the top-level list."""
    stage = config.stages.get(stage_name)
    if stage is None:
        raise ConfigError(f"{config.config_path}: unknown stage {stage_name!r}")
    if stage.notify is not None:
        return tuple(stage.notify)
    return tuple(config.notify)


def origin_for(config: Config, stage_name: str) -> str:
    """Where a stage's targets are written, for error messages (`shipit.yaml: stages.prod.notify`)."""
    stage = config.stages.get(stage_name)
    key = (
        f"stages.{stage_name}.notify"
        if stage is not None and stage.notify is not None
        else "notify"
    )
    return f"{config.config_path}: {key}"


def wants(target: NotifyTarget, event: Event) -> bool:
    """Does this target want this event? Filters accept exact kinds, globs (`job.*`) and
    `deploy.<outcome>` (e.g. `deploy.failed`) for a deploy.finished with that outcome."""
    if not target.events:
        return event.kind in DEFAULT_EVENTS
    outcome_kind = None
    if event.kind == "deploy.finished":
        outcome = event.data.get("outcome")
        if isinstance(outcome, str):
            outcome_kind = f"deploy.{outcome}"
    for pattern in target.events:
        if fnmatchcase(event.kind, pattern):
            return True
        if outcome_kind is not None and pattern == outcome_kind:
            return True
    return False


def label(target: NotifyTarget) -> str:
    """How errors and logs name a target without revealing the tokens in its URL."""
    if target.webhook:
        return f"webhook {redact_url(target.webhook)}"
    return f"apprise {redact_url(target.apprise or '', keep_host=False)}"
