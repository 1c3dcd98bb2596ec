"""What the click commands share: the session state, loading a stage, secrets, confirmation,
and SIGTERM handling while a deploy runs."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

from shipit.errors import ShipitError

if TYPE_CHECKING:  # pydantic models load lazily: `shipit --help` should not pay for them
    from pathlib import Path

    from shipit.config.model import StageConfig


@dataclass
class Session:
    """Per-invocation state. It outlives the click context so that `run()` can still mask an
    error message (or honour -v) after click has unwound."""

    config: str | None = None
    verbose: bool = False
    secrets: list[str] = field(default_factory=list)


SESSION = Session()


def reset_session() -> Session:
    # In place: other modules hold a reference to SESSION.
    SESSION.config = None
    SESSION.verbose = False
    SESSION.secrets = []
    return SESSION


def config_path() -> Path:
    from pathlib import Path  # with the config: `shipit --version` needs neither

    from shipit.config.loader import find_config

    if SESSION.config:
        return Path(SESSION.config)
    return find_config()


def split_csv(value: str | None) -> list[str] | None:
    if not value:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def load_stage(
    name: str, *, hosts: list[str] | None = None, roles: list[str] | None = None
) -> StageConfig:
    """Find and load shipit.yaml, resolve stage `name` (an unknown one is a ConfigError naming
    the stages), narrow it to --hosts / --roles."""
    from shipit.config.loader import load_config

    config = load_config(config_path())
    stage = config.stage(name)
    SESSION.secrets = stage_secrets(stage)
    if hosts or roles:
        from shipit.config.resolve import filter_hosts

        stage = filter_hosts(stage, hosts, roles)
    return stage


def stage_secrets(stage: StageConfig) -> list[str]:
    try:
        from shipit.config.secrets import secret_values
    except ImportError:
        # Same rule as the config work's contract, until its module lands: the values of the
        # vars named in `secrets:`.
        return [str(stage.vars[k]) for k in stage.secrets if stage.vars.get(k) not in (None, "")]
    return [s for s in secret_values(stage) if s]


def is_ci() -> bool:
    # Imported here: shipit.output imports every renderer (rich); `shipit --version` needs none.
    from shipit.output import is_ci

    return is_ci()


def interactive() -> bool:
    """A person at a terminal who can answer a question (never in CI)."""
    return sys.stdin.isatty() and sys.stderr.isatty() and not is_ci()


def confirm(question: str) -> None:
    """Ask on stderr (stdout may be --json); a "no" ends the command with exit 1."""
    if not click.confirm(question, default=False, err=True):
        raise ShipitError("aborted: nothing was changed")


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, default=str, indent=None, ensure_ascii=False))


def as_dict(obj: Any) -> Any:
    """Dataclasses, pydantic models and plain data as JSON-able dicts."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, dict):
        return {k: as_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_dict(v) for v in obj]
    return obj


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While a deploy runs, SIGTERM (a cancelled CI job, `kill`) becomes KeyboardInterrupt so
    the runner's cleanup (reopen the gate, restart recorded jobs) runs exactly as for Ctrl-C.
    Only the first SIGTERM interrupts: later ones must not cut that cleanup short."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def log_template(stage: StageConfig) -> str:
    from shipit.output.logfile import log_dir_for, safe_name

    # The directory is literal text in a str.format template: its braces must not be fields.
    folder = str(log_dir_for(stage.config_path)).replace("{", "{{").replace("}", "}}")
    return f"{folder}/{safe_name(stage.name)}-{{deploy_id}}.log"


def stdout_is_tty() -> bool:
    return sys.stdout.isatty() and not is_ci() and os.environ.get("TERM") != "dumb"
