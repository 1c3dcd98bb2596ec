"""`shipit init`: write the commented starter shipit.yaml."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from shipit.errors import ConfigError


def starter_text() -> str:
    return (files("shipit") / "templates" / "shipit.yaml").read_text(encoding="utf-8")


def write_starter(path: Path, force: bool = False) -> Path:
    """Write the starter to `path`; an existing file is kept unless `force`."""
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists; use --force to overwrite it")
    try:
        path.write_text(starter_text(), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror or exc}") from None
    return path
