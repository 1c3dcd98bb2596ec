"""Keeping secrets out of notifications and out of what shipit says about them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

MASK = "****"


def _variants(secrets: Iterable[str]) -> list[str]:
    found: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        # A secret can reach a payload URL-encoded (inside a URL an event mentions).
        found.update({secret, quote(secret, safe=""), quote_plus(secret)})
    # Longest first so a secret that contains another is hidden whole.
    return sorted(found, key=len, reverse=True)


class Masker:
    """Replaces every secret value anywhere inside text or JSON-like data."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = _variants(secrets)

    def text(self, value: str) -> str:
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value

    def data(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.data(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self.data(v) for v in value]
        if value is None or isinstance(value, (bool, int, float)):
            return value
        # Anything else would be str()-ed by json.dumps later; mask that text now.
        return self.text(str(value))


def redact_url(url: str, *, keep_host: bool = True) -> str:
    """`https://user:pw@hooks.example.com/T0/B0/xyz?token=1` -> `https://hooks.example.com/…`.

    Webhook and apprise URLs carry their tokens in the userinfo, path or query, so only the
    scheme and (for http URLs) the host survive. Apprise URLs put tokens where the host is
    (`slack://TokenA/TokenB`), hence keep_host=False for them.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    scheme = parts.scheme
    if not scheme:
        return "…"
    if not keep_host:
        return f"{scheme}://…"
    try:
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return f"{scheme}://…"
    where = f"{host}:{port}" if port else host
    return f"{scheme}://{where}/…"


def scrub(message: str, url: str, masker: Masker, *, keep_host: bool = True) -> str:
    """An error text safe to log: no secrets, and no part of the target's URL beyond its host
    (nothing at all of it with keep_host=False)."""
    message = masker.text(message)
    try:
        parts = urlsplit(url)
    except ValueError:
        return message.replace(url, MASK) if url else message
    netloc_secret = not keep_host or "@" in parts.netloc
    pieces = [url, parts.netloc if netloc_secret else "", parts.path, parts.query]
    for piece in sorted((p for p in pieces if p and p != "/"), key=len, reverse=True):
        message = message.replace(piece, MASK)
    return message
