"""Adapter types by their `type:` in shipit.yaml, and building a stage's adapters.

An adapter module registers a factory `(config, stage) -> Adapter`:

    from shipit.adapters.registry import register
    register("rq", lambda cfg, stage: RQAdapter.from_config(cfg, stage))

and adds its pydantic config class to `shipit.config.model.AdapterConfig`. Built-in modules
are imported lazily here so `shipit job run` (the lean fast path) never pays for them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from shipit.adapters.base import Adapter
from shipit.config.model import StageConfig
from shipit.errors import ConfigError

Factory = Callable[[Any, StageConfig], Adapter]

_FACTORIES: dict[str, Factory] = {}
# type -> module that registers it when imported
_MODULES = {
    "cron": "shipit.adapters.cron",
    "systemd": "shipit.adapters.systemd",
    "command": "shipit.adapters.command",
    "rq": "shipit.adapters.rq",
    "celery": "shipit.adapters.celery",
}


def register(type_name: str, factory: Factory) -> None:
    _FACTORIES[type_name] = factory


def factory_for(type_name: str) -> Factory:
    if type_name not in _FACTORIES and type_name in _MODULES:
        try:
            importlib.import_module(_MODULES[type_name])
        except ImportError as exc:
            raise ConfigError(f"jobs.adapters: type {type_name!r} cannot be loaded: {exc}") from None
    try:
        return _FACTORIES[type_name]
    except KeyError:
        known = ", ".join(sorted(set(_FACTORIES) | set(_MODULES)))
        raise ConfigError(f"jobs.adapters: unknown adapter type {type_name!r} (known: {known})") from None


def build_adapters(stage: StageConfig) -> list[Adapter]:
    """The stage's adapters in config order (pause in this order, resume in reverse)."""
    return [factory_for(cfg.type)(cfg, stage) for cfg in stage.jobs.adapters]


def common_options(cfg: Any) -> dict[str, Any]:
    """The AdapterBase fields as Adapter.__init__ keyword arguments."""
    return {
        "roles": tuple(cfg.roles), "drain_policy": cfg.drain_policy,
        "drain_timeout": cfg.drain_timeout, "grace": cfg.grace,
    }
