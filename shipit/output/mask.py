"""Secret masking applied to every event before any renderer sees it.

Renderers write to terminals, CI logs, JSON consumers and files on disk; masking once, at the
door, means no channel can forget to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from shipit.events import Event

MASK = "********"  # the same as shipit.config.secrets.MASK


def _fallback_mask(text: str, secrets: Iterable[str]) -> str:
    # Longest first so a secret that contains another is hidden whole.
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def _load_mask() -> Callable[[str, Iterable[str]], str]:
    try:
        from shipit.config.secrets import mask
    except ImportError:  # the config work may not have landed; keep the same contract
        return _fallback_mask
    return mask


def mask_text(text: str, secrets: Iterable[str]) -> str:
    secrets = [s for s in secrets if s]
    if not secrets or not text:
        return text
    return _load_mask()(text, secrets)


def mask_value(value: Any, secrets: list[str]) -> Any:
    """Mask strings anywhere inside JSON-like data (dict keys too: a secret can be a key)."""
    if isinstance(value, str):
        return mask_text(value, secrets)
    if isinstance(value, dict):
        return {mask_value(k, secrets): mask_value(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [mask_value(v, secrets) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    # Anything else gets str()-ed by a renderer later (json default=str); mask that text now.
    return mask_text(str(value), secrets)


def mask_event(event: Event, secrets: list[str]) -> Event:
    if not secrets:
        return event
    return replace(
        event,
        host=mask_text(event.host, secrets) if event.host else event.host,
        message=mask_text(event.message, secrets),
        data=mask_value(event.data, secrets),
    )
