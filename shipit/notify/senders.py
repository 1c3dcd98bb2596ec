"""Delivering one notification to one target: a JSON webhook (stdlib only) or apprise.

A sender raises SendError on failure; `retryable` tells the notifier whether another attempt
can help (a 500 or a timeout can, a 404 cannot).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from shipit.config.model import NotifyTarget
from shipit.errors import ConfigError

USER_AGENT = "shipit-notify/1"


class SendError(Exception):
    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class Sender(Protocol):
    def send(self, payload: dict[str, Any], title: str, body: str, timeout: float) -> None: ...


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # urllib would replay the POST as a GET without its body at the redirect target, which
    # looks like success while delivering nothing; treat a redirect as an error instead.
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


class WebhookSender:
    def __init__(self, url: str, headers: dict[str, str], where: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{where}: webhook must be an http:// or https:// URL")
        self._headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if parts.username is not None:
            # urllib cannot send userinfo itself (http.client takes it for part of the host).
            creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()
            netloc = parts.netloc.rsplit("@", 1)[1]
            url = urlunsplit(parts._replace(netloc=netloc))
        self._headers.update(headers)
        self._url = url
        self._opener = urllib.request.build_opener(_NoRedirect)

    def send(self, payload: dict[str, Any], title: str, body: str, timeout: float) -> None:
        data = json.dumps(payload, default=str).encode()
        request = urllib.request.Request(self._url, data=data, headers=self._headers, method="POST")
        try:
            with self._opener.open(request, timeout=timeout) as response:
                response.read(65536)
        except urllib.error.HTTPError as exc:
            # 408/429 and 5xx are the endpoint being busy or broken for now; other 4xx mean the
            # request itself is wrong and will be just as wrong next time.
            retry = exc.code in (408, 429) or exc.code >= 500
            raise SendError(f"HTTP {exc.code} {exc.reason}", retryable=retry) from None
        except TimeoutError:
            raise SendError(f"no answer within {timeout:g}s") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise SendError(f"no answer within {timeout:g}s") from None
            raise SendError(f"cannot connect: {_reason(exc.reason)}") from None
        except OSError as exc:
            raise SendError(f"connection error: {_reason(exc)}") from None


def _reason(reason: object) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason)


def _apprise_reason(result: Any) -> str | None:
    """apprise >= 2 returns a result carrying its log lines; its warnings say why a send
    failed (and apprise keeps tokens out of them). Older versions return a plain bool."""
    logs = getattr(result, "logs", None)
    if not callable(logs):
        return None
    try:
        lines = [
            str(getattr(e, "message", ""))
            for e in logs()
            if str(getattr(e, "level", "")).upper().endswith(("WARNING", "ERROR"))
        ]
    except Exception:
        return None
    return lines[-1] if lines and lines[-1] else None


_NOTIFY_TYPES = {"success": "success", "warning": "warning", "failure": "failure"}


class AppriseSender:
    """One apprise URL. apprise is imported only when such a target exists."""

    def __init__(self, url: str, timeout: float, where: str) -> None:
        try:
            import apprise
        except ImportError:
            raise ConfigError(
                f"{where}: apprise targets need the apprise package (pip install apprise)"
            ) from None
        self._apprise = apprise
        self._url = url
        self._where = where
        self._check(timeout)

    def _with_timeouts(self, timeout: float) -> str:
        # apprise's own socket timeouts (cto/rto) bound each attempt; a user-set value wins.
        parts = urlsplit(self._url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        names = {k for k, _ in query}
        query += [(k, f"{timeout:g}") for k in ("cto", "rto") if k not in names]
        return urlunsplit(parts._replace(query=urlencode(query)))

    def _build(self, timeout: float) -> Any:
        client = self._apprise.Apprise()
        if not client.add(self._with_timeouts(timeout)):
            return None
        return client

    def _check(self, timeout: float) -> None:
        if self._build(timeout) is None:
            scheme = urlsplit(self._url).scheme or "?"
            raise ConfigError(f"{self._where}: apprise does not understand this {scheme}:// URL")

    def send(self, payload: dict[str, Any], title: str, body: str, timeout: float) -> None:
        client = self._build(timeout)
        if client is None:
            raise SendError("apprise rejected the URL", retryable=False)
        kind = _NOTIFY_TYPES.get(str(payload.get("severity")), "info")
        try:
            result = client.notify(title=title, body=body, notify_type=kind)
        except Exception as exc:  # a plugin bug must not escape into the worker loop
            raise SendError(f"apprise error: {type(exc).__name__}") from None
        if not result:
            why = _apprise_reason(result) or "the notification was not delivered"
            raise SendError(f"apprise: {why}")


def make_sender(target: NotifyTarget, where: str) -> Sender:
    if target.webhook:
        return WebhookSender(target.webhook, dict(target.headers), where)
    return AppriseSender(target.apprise or "", target.timeout, where)
