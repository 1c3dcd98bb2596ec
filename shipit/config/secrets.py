"""Which values of a stage are secret, and how to keep them out of anything shown to a user.

Secrets are the values of the vars named in `secrets:` (at any level: top, stage or host) and
the job store DSN (the environment variable named by `jobs.dsn_env`), including the password
inside that DSN on its own, since it can end up in other strings (a hook's command line), and
the parts of the notify targets' URLs that carry credentials, and their credential headers.

Of a webhook URL only the userinfo, the path (Slack-style tokens live there), the query and
fragment are secret: `https://hooks.example.com/services/T0/B0/XYZ` is shown as
`https://hooks.example.com********`, and `https://ci.example.com` has nothing to hide. Apprise
URLs put tokens where the host goes (`slack://TokA/TokB/TokC`), so all but their scheme is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

from shipit.config.model import StageConfig

MASK = "********"
_SENSITIVE_HEADER = re.compile(r"auth|token|key|secret|cookie|signature|password", re.I)
_KV_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*(?:'((?:[^'\\]|\\.)*)'|(\S+))")


def _leaves(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _leaves(item)
    elif value is not None and not isinstance(value, bool):
        yield str(value)


def _dsn_password(dsn: str) -> str | None:
    if "://" in dsn:
        try:
            password = urlsplit(dsn).password
        except ValueError:
            return None
        return unquote(password) if password else None
    found = _KV_PASSWORD.search(dsn)
    if not found:
        return None
    return found.group(1) if found.group(1) is not None else found.group(2)


def secret_values(stage: StageConfig, *, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every secret value, longest first (so a secret containing another is masked whole)."""
    env = os.environ if environ is None else environ
    found: set[str] = set()
    for vars_ in (stage.vars, *(h.vars for h in stage.hosts)):
        for name in stage.secrets:
            if name in vars_:
                found.update(_leaves(vars_[name]))
    for target in stage.notify:
        if target.webhook:
            found.update(url_secrets(target.webhook))
        if target.apprise:
            found.update(url_secrets(target.apprise, keep_host=False))
        for key, value in target.headers.items():
            if _SENSITIVE_HEADER.search(key):
                # `Bearer <token>`: the token alone may show up elsewhere too.
                found.update({value, value.split(" ", 1)[-1].strip()})
    dsn = env.get(stage.jobs.dsn_env)
    if dsn:
        found.add(dsn)
        password = _dsn_password(dsn)
        if password:
            found.add(password)
    # An empty "secret" would mask between every character of every string.
    return sorted((s for s in found if s), key=lambda s: (-len(s), s))


# Query values under such names are secret whatever their length; others when token-long.
_SECRET_QUERY = re.compile(r"auth|token|key|secret|sig|pass|code|hash|cred", re.I)
_TOKEN_LONG = 8


def url_secrets(url: str, *, keep_host: bool = True) -> set[str]:
    """The parts of a notify URL that carry credentials, as written: userinfo (and the user and
    password in it), the path-query-fragment tail and the path alone (tokens), query values;
    with keep_host=False (apprise) everything after `scheme://`. A URL that cannot be parsed is
    secret whole. Never the scheme, nor a webhook's host and port."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return {url}
    found: set[str] = set()
    if not parts.scheme or not parts.netloc:
        return {url}  # not a URL as shipit reads them: nothing to tell safe parts by
    rest = url.split("://", 1)[1] if "://" in url else url
    if not keep_host:
        found.add(rest)
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        user, colon, password = userinfo.partition(":")
        found.update({userinfo, password, unquote(password)})
        # A user alone is a token when nothing else is (`https://TOKEN@host`) or token-long;
        # a short name (`u`) masked on its own would blank out letters everywhere.
        if not colon or len(user) >= _TOKEN_LONG:
            found.update({user, unquote(user)})
    # Pieces shorter than this are not masked on their own (`/h` would hit every `/home`);
    # they stay covered by the longer piece that holds them.
    short = 4
    tail = rest[len(parts.netloc):]
    if len(tail) >= short and tail != "/":
        found.add(tail)
    if len(parts.path) >= short:
        found.add(parts.path)
    if len(parts.query) >= short:
        found.add(parts.query)
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if len(value) >= (short if _SECRET_QUERY.search(key) else _TOKEN_LONG):
            found.add(value)
    if len(parts.fragment) >= short:
        found.add(parts.fragment)
    return {f for f in found if f}


def shown_url(url: str, *, keep_host: bool = True) -> str:
    """A notify URL as an error message may show it: scheme and (webhooks) host:port as
    written, every part url_secrets() names replaced by the mask."""
    return mask(url, url_secrets(url, keep_host=keep_host))


def _variants(secrets: Iterable[str]) -> list[str]:
    found: set[str] = set()
    for secret in secrets:
        if secret:
            # A secret can also appear URL-encoded, inside a URL built from it.
            found.update({secret, quote(secret, safe=""), quote_plus(secret)})
    return sorted(found, key=len, reverse=True)


def mask(text: str, secrets: Iterable[str]) -> str:
    for secret in _variants(secrets):
        text = text.replace(secret, MASK)
    return text


def _mask_data(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return mask(value, secrets)
    if isinstance(value, dict):
        return {mask(str(k), secrets): _mask_data(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_data(v, secrets) for v in value]
    if value is not None and not isinstance(value, bool) and str(value) in secrets:
        return MASK
    return value


def redact_url(url: str, *, keep_host: bool = True) -> str:
    """Scheme and (for webhooks) host survive; userinfo, path and query are tokens. Apprise
    URLs keep tokens where the host goes (`slack://TokenA/TokenB`), hence keep_host=False."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK
    if not parts.scheme:
        return MASK
    if not keep_host or not host:
        return f"{parts.scheme}://{MASK}"
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}/{MASK}"


def _hide_named(vars_: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {k: (MASK if k in names else v) for k, v in vars_.items()}


def masked_config(
    stage: StageConfig, *, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The resolved stage as plain JSON-able data, for `shipit config STAGE`, with every secret
    value replaced by ******** wherever it appears, inside other strings too."""
    data = stage.model_dump(mode="json")
    data["vars"] = _hide_named(data["vars"], stage.secrets)
    for host in data["hosts"]:
        host["vars"] = _hide_named(host["vars"], stage.secrets)
    for target in data.get("notify", []):
        # Keep enough to recognise the target (scheme, webhook host), never its tokens.
        if target.get("webhook"):
            target["webhook"] = shown_url(target["webhook"])
        if target.get("apprise"):
            target["apprise"] = shown_url(target["apprise"], keep_host=False)
        target["headers"] = {
            k: (MASK if _SENSITIVE_HEADER.search(k) else v) for k, v in target["headers"].items()
        }
    return _mask_data(data, secret_values(stage, environ=environ))
