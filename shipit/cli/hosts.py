"""`shipit hosts trust STAGE`: scan the stage's host keys, show their SHA256 fingerprints, and add
them to the known_hosts file shipit uses, after a confirmation.

Strict host key checking stays on for deploys: this command is the deliberate step that makes a
host known. A key that CHANGED is never replaced unless `--replace` is given, and then loudly.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import socket
from dataclasses import dataclass
from typing import Any

import click
import paramiko

from shipit.cli.common import confirm, echo_json, interactive, load_stage
from shipit.config.model import HostSpec, SSHConfig
from shipit.errors import HostError, UsageError
from shipit.hosts.ssh import SYSTEM_KNOWN_HOSTS, USER_KNOWN_HOSTS


@dataclass
class Scanned:
    host: str  # the name shipit uses for it
    known_as: str  # how known_hosts names it: host, or [host]:port
    key: paramiko.PKey
    status: str  # "new" | "known" | "changed"
    old: str = ""  # fingerprint(s) on file when changed

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key)

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "known_as": self.known_as, "type": self.key.get_name(),
                "fingerprint": self.fingerprint, "status": self.status, "old": self.old}


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint (what `ssh-keygen -lf` and ssh's prompt show)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def known_as(hostname: str, port: int) -> str:
    return hostname if port == 22 else f"[{hostname}]:{port}"


def target_file(ssh: SSHConfig) -> str:
    """The known_hosts file trusted keys go to: ssh.known_hosts, else the user's."""
    return os.path.expanduser(ssh.known_hosts or USER_KNOWN_HOSTS)


def load_known(ssh: SSHConfig) -> paramiko.HostKeys:
    keys = paramiko.HostKeys()
    for path in (SYSTEM_KNOWN_HOSTS, USER_KNOWN_HOSTS, ssh.known_hosts):
        full = os.path.expanduser(path) if path else ""
        if full and os.path.isfile(full):
            try:
                keys.load(full)
            except (OSError, paramiko.SSHException) as exc:
                raise HostError(f"cannot read known_hosts file {path}: {exc}") from None
    return keys


def scan(hostname: str, port: int, timeout: float) -> paramiko.PKey:
    """The host key the server offers, from an SSH handshake that stops before authentication."""
    try:
        sock = socket.create_connection((hostname, port), timeout=timeout)
    except OSError as exc:
        raise HostError(f"cannot reach {hostname}:{port}: {exc.strerror or exc}") from None
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    except (paramiko.SSHException, EOFError, OSError) as exc:
        raise HostError(f"{hostname}:{port}: SSH handshake failed: {exc}") from None
    finally:
        transport.close()


def classify(spec: HostSpec, ssh: SSHConfig, known: paramiko.HostKeys) -> Scanned:
    port = spec.port or ssh.port or 22
    name = known_as(spec.hostname, port)
    key = scan(spec.hostname, port, ssh.connect_timeout)
    on_file = known.lookup(name) or {}
    if not on_file:
        return Scanned(spec.name, name, key, "new")
    if any(k == key for k in on_file.values()):
        return Scanned(spec.name, name, key, "known")
    old = ", ".join(f"{t} {fingerprint(k)}" for t, k in on_file.items())
    return Scanned(spec.name, name, key, "changed", old)


def _matches(line: str, name: str) -> bool:
    """Does this known_hosts line name host `name` (plain or hashed entries)?"""
    if not line.strip() or line.lstrip().startswith("#"):
        return False
    try:
        entry = paramiko.hostkeys.HostKeyEntry.from_line(line)
    except (paramiko.SSHException, ValueError):
        return False
    if entry is None:
        return False
    probe = paramiko.HostKeys()
    probe._entries.append(entry)  # no public API takes an entry as is (hashed names kept)
    return probe.lookup(name) is not None


def write_trusted(path: str, add: list[Scanned], replace: list[Scanned]) -> None:
    """Append new keys; drop the old lines of replaced hosts first. Atomic, 0600, dir 0700."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    gone = {s.known_as for s in replace}
    kept = [ln for ln in lines if not (gone and any(_matches(ln, n) for n in gone))]
    kept += [f"{s.known_as} {s.key.get_name()} {s.key.get_base64()}" for s in [*add, *replace]]
    tmp = f"{path}.tmp.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, ("\n".join(kept) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _check_replaceable(ssh: SSHConfig, path: str, changed: list[Scanned]) -> None:
    """A changed key that lives in another known_hosts file than ours would still be found (and
    refused) there after we write ours: say where to remove it instead."""
    for other in (SYSTEM_KNOWN_HOSTS, USER_KNOWN_HOSTS, ssh.known_hosts):
        full = os.path.expanduser(other) if other else ""
        if not full or not os.path.isfile(full) or os.path.abspath(full) == os.path.abspath(path):
            continue
        with open(full, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        for s in changed:
            if any(_matches(ln, s.known_as) for ln in lines):
                raise HostError(
                    f"the old key of {s.known_as} is in {other}, not in {path}: remove it there "
                    f"(ssh-keygen -R '{s.known_as}' -f {other})"
                )


@click.group("hosts")
def hosts() -> None:
    """Host keys: scan and trust them (see docs/security.md)."""


@hosts.command("trust")
@click.argument("stage", metavar="STAGE")
@click.option("-y", "--yes", is_flag=True, help="Trust the scanned keys without asking.")
@click.option("--replace", is_flag=True,
              help="Replace a CHANGED key (only after verifying the host was reinstalled).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
def hosts_trust(stage: str, yes: bool, replace: bool, as_json: bool) -> None:
    """Scan every SSH host of STAGE, show the SHA256 fingerprints, add them to known_hosts."""
    config = load_stage(stage)
    ssh = config.ssh
    if ssh.jump_host:
        raise UsageError(
            "hosts trust scans hosts directly and cannot reach them through ssh.jump_host: "
            "compare fingerprints with ssh-keyscan run on the jump host"
        )
    known = load_known(ssh)
    scanned = [classify(spec, ssh, known) for spec in config.hosts if not spec.local]
    path = target_file(ssh)
    new = [s for s in scanned if s.status == "new"]
    changed = [s for s in scanned if s.status == "changed"]
    if as_json:
        echo_json({"known_hosts": path, "hosts": [s.to_dict() for s in scanned]})
    else:
        for s in scanned:
            extra = f" (known_hosts has {s.old})" if s.old else ""
            click.echo(f"{s.host}  {s.key.get_name()}  {s.fingerprint}  {s.status.upper()}{extra}")
    if changed and not replace:
        names = ", ".join(s.host for s in changed)
        raise HostError(
            f"HOST KEY CHANGED for {names}: nothing was written; this may be an attack or a "
            "reinstalled host: verify the new fingerprint out of band, then rerun with --replace"
        )
    if not new and not changed:
        if not as_json:
            click.echo(f"every host is already trusted in {path}", err=True)
        return
    _check_replaceable(ssh, path, changed)
    for s in changed:
        click.secho(
            f"WARNING: REPLACING the host key of {s.host} ({s.known_as}): {s.old} -> "
            f"{s.key.get_name()} {s.fingerprint}", fg="red", bold=True, err=True,
        )
    if not yes:
        if not interactive():
            raise UsageError("no terminal to confirm on: check the fingerprints above, then rerun with --yes")
        confirm(f"Trust {len(new) + len(changed)} host key(s) and write them to {path}?")
    write_trusted(path, new, changed)
    if not as_json:
        click.echo(f"trusted {len(new) + len(changed)} host key(s) in {path}", err=True)
