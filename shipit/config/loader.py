"""Find and load shipit.yaml into a validated `Config`.

Every mistake becomes one `ConfigError` line naming the file as the user gave it, the line,
and the dotted key: `shipit.yaml:12: stages.prod.hosts[1].prot: unknown key (did you mean
'port'?)`. Interpolation: `${VAR}` and `${VAR:-default}` in string values come from the
environment (`$$` is a literal `$`; a lone `$NAME` is left alone for the remote shell).
Top-level keys starting with `x-` are ignored: a place for YAML anchors (`&defaults`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from shipit.config.checks import check_hook_roles
from shipit.config.explain import describe, explain
from shipit.config.model import HOOK_POINTS, Config
from shipit.config.source_map import LineMap, attach, fmt_path, one_line, read_yaml
from shipit.errors import ConfigError

CONFIG_NAME = "shipit.yaml"
CONFIG_ENV = "SHIPIT_CONFIG"


def find_config(start: Path | None = None, *, environ: Mapping[str, str] | None = None) -> Path:
    """`$SHIPIT_CONFIG` if set, else the nearest shipit.yaml in `start` (default: the current
    directory) or one of its parents, like git finds its repository."""
    env = os.environ if environ is None else environ
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    here = Path.cwd() if start is None else start
    base = here.absolute()
    for folder in (base, *base.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            # Show the short name when it is right here: that is what the user would type.
            return Path(CONFIG_NAME) if start is None and folder == base else candidate
    raise ConfigError(f"no {CONFIG_NAME} found in {here} or its parents; run `shipit init`")


def _read_text(path: Path, shown: str) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{shown}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{shown}: is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(one_line(f"{shown}: cannot read: {exc.strerror or exc}")) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{shown}:{line}: not valid UTF-8 text") from None


def _check_hook_points(data: dict[str, object], lines: LineMap) -> None:
    """Stage hooks are a plain mapping in the model; a misspelt hook point there would
    otherwise be silently ignored."""
    from shipit.config.explain import suggest

    stages = data.get("stages")
    if not isinstance(stages, dict):
        return
    for stage_name, stage in stages.items():
        hooks = stage.get("hooks") if isinstance(stage, dict) else None
        if not isinstance(hooks, dict):
            continue
        for point in hooks:
            if point not in HOOK_POINTS:
                path = ("stages", stage_name, "hooks", point)
                raise ConfigError(
                    one_line(
                        f"{lines.where(path)}: {fmt_path(path)}: unknown hook point"
                        f"{suggest(point, list(HOOK_POINTS))}"
                    )
                )


def load_config(path: Path | str, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read, interpolate and validate one shipit.yaml. Raises ConfigError (one line)."""
    shown = str(path)
    text = _read_text(Path(path), shown)
    data, lines = read_yaml(text, shown, os.environ if environ is None else environ)
    if data is None:
        raise ConfigError(f"{shown}: the file is empty; run `shipit init` for a starter")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{shown}:{lines.line(()) or 1}: the top level must be a mapping of settings"
            f" (application:, source:, stages: ...), got {describe(data)}"
        )
    # docker-compose's convention: top-level `x-...` keys hold YAML anchors to reuse elsewhere.
    data = {k: v for k, v in data.items() if not k.startswith("x-")}
    if "config_path" in data:
        raise ConfigError(f"{lines.where(('config_path',))}: config_path: unknown key")
    try:
        config = Config.model_validate({**data, "config_path": shown})
    except ValidationError as exc:
        raise ConfigError(explain(exc, Config, data, lines)) from None
    _check_hook_points(data, lines)
    check_hook_roles(config, lines)
    if not config.stages:
        raise ConfigError(f"{lines.where(('stages',))}: stages: define at least one stage")
    attach(config, lines)
    return config
