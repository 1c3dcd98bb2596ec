"""Parse the short host forms of shipit.yaml: `local`, `host`, `user@host`, `user@host:port`,
`[::1]:2222`, `user@[::1]:2222` (a bare IPv6 address without brackets takes no port)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_USER = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*\Z")
# DNS names, IPv4 and ~/.ssh/config aliases. Anything else (spaces, shell characters) is refused
# here so that a typo cannot turn into something odd on a command line later.
_HOSTNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


class HostSyntaxError(ValueError):
    """The text is not a host; the message says what is wrong."""


@dataclass(frozen=True)
class Address:
    hostname: str
    user: str | None = None
    port: int | None = None
    local: bool = False

    @property
    def name(self) -> str:
        """Canonical `user@host:port` with only the parts the user gave."""
        if self.local:
            return "local"
        host = self.hostname
        if self.port is not None and ":" in host:
            host = f"[{host}]"
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"{user}{host}{port}"


def check_port(port: int | str) -> int:
    text = str(port)
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise HostSyntaxError(f"bad port {text!r} (expected a number from 1 to 65535)")
    return int(text)


def check_user(user: str) -> str:
    if not _USER.match(user):
        raise HostSyntaxError(f"bad user name {user!r}")
    return user


def _check_ipv6(text: str) -> str:
    try:
        ipaddress.IPv6Address(text.split("%", 1)[0])
    except ValueError:
        raise HostSyntaxError(f"bad IPv6 address {text!r}") from None
    return text


def check_hostname(host: str) -> str:
    if ":" in host:
        return _check_ipv6(host)
    if not _HOSTNAME.match(host):
        raise HostSyntaxError(f"bad host name {host!r}")
    return host


def parse_host(text: str) -> Address:
    text = text.strip()
    if text == "local":
        return Address(hostname="localhost", local=True)
    user: str | None = None
    rest = text
    if "@" in text:
        user, _, rest = text.rpartition("@")
        check_user(user)
    port: int | None = None
    if rest.startswith("["):
        host, bracket, after = rest[1:].partition("]")
        if not bracket:
            raise HostSyntaxError(f"missing ']' in {text!r}")
        _check_ipv6(host)
        if after:
            if not after.startswith(":"):
                raise HostSyntaxError(f"unexpected {after!r} after ']' in {text!r}")
            port = check_port(after[1:])
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
        port = check_port(port_text)
        check_hostname(host)
    else:
        host = check_hostname(rest) if rest else ""
    if not host:
        raise HostSyntaxError(f"no host name in {text!r}")
    return Address(hostname=host, user=user, port=port)
