"""docs/configuration.md documents every shipit.yaml key (README promises it): the keys are
walked from the pydantic models, so a new field without docs fails here, and so does a
documented key the models no longer have."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from shipit.config.explain import _members
from shipit.config.model import Config

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
# What the docs write for a key the user names: a stage, a job, a hook point.
PLACEHOLDER = {"hooks": "POINT"}
INTERNAL = {"config_path"}  # set by the loader; writing it is an error


def _nested(tp: typing.Any, field: str) -> list[tuple[type[BaseModel], str]]:
    found: list[tuple[type[BaseModel], str]] = []
    for member in _members(tp):
        origin = typing.get_origin(member)
        if isinstance(member, type) and issubclass(member, BaseModel):
            found.append((member, ""))
        elif origin in (list, tuple):
            found += [(m, "[]" + s) for m, s in _nested(typing.get_args(member)[0], field)]
        elif origin is dict:
            name = PLACEHOLDER.get(field, "NAME")
            found += [(m, f".{name}" + s) for m, s in _nested(typing.get_args(member)[1], field)]
    return found


def model_keys() -> set[str]:
    """Dotted paths of every key, each model's fields spelled out where it first appears
    (`stages.NAME.ssh` is the `ssh` model again: the key itself, not its fields twice)."""
    keys: set[str] = set()
    seen: set[type[BaseModel]] = {Config}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            if name in INTERNAL:
                continue
            path = f"{prefix}{name}"
            keys.add(path)
            for sub, suffix in _nested(field.annotation, name):
                if sub in seen:
                    continue
                seen.add(sub)
                walk(sub, f"{path}{suffix}.")

    walk(Config, "")
    return keys


def documented_keys() -> set[str]:
    """The first cell of every table row that is one backticked key."""
    rows = re.findall(r"^\| `([a-z_][\w.\[\]A-Z]*)` \|", DOC.read_text(), flags=re.M)
    return set(rows)


def test_every_model_key_is_documented_in_configuration_md() -> None:
    missing = sorted(model_keys() - documented_keys())
    assert missing == [], f"docs/configuration.md lacks: {', '.join(missing)}"


def test_configuration_md_lists_no_key_the_models_do_not_have() -> None:
    stale = sorted(documented_keys() - model_keys())
    assert stale == [], f"docs/configuration.md documents unknown keys: {', '.join(stale)}"


def test_the_walk_sees_nested_keys() -> None:
    keys = model_keys()
    assert {"ssh.config_file", "jobs.adapters[].queues", "jobs.adapters[].timers",
            "jobs.definitions.NAME.after", "hooks.POINT[].roles", "stages.NAME.hosts[].roles",
            "notify[].webhook", "cron[].schedule", "stages.NAME.ssh"} <= keys
    assert "jobs.env_allow" not in keys and "jobs.definitions.NAME.command" not in keys
