"""`shipit keys ...`: the keys that encrypt saved job state and recorded env at rest.

  shipit keys generate         print a new Fernet key
  shipit keys rotate STAGE     re-encrypt every stored checkpoint/env with the newest key
  shipit keys reencrypt --store URL   (internal) the same, for one store on this machine

Per-host stores are rotated where they live: `rotate` runs `<shipit_command> keys reencrypt` on
each host over the usual transport, with the keys that host's shipit finds (SHIPIT_STATE_KEYS /
SHIPIT_STATE_KEY_FILE there). The central store (postgres) is rotated from here.
"""

from __future__ import annotations

import json
import os
import shlex
from typing import Any

import click

from shipit.cli.common import echo_json, load_stage
from shipit.crypto import StateKeyError, cipher_from_env, generate_key, use_stage_keys
from shipit.errors import ShipitError, StoreUnavailable, UsageError


@click.group("keys")
def keys() -> None:
    """Keys encrypting saved job state at rest (see docs/security.md)."""


@keys.command("generate")
def keys_generate() -> None:
    """Print a new key. Put it first in SHIPIT_STATE_KEYS or jobs.key_file (mode 0600)."""
    click.echo(generate_key())


@keys.command("rotate")
@click.argument("stage", metavar="STAGE")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
def keys_rotate(stage: str, as_json: bool) -> None:
    """Re-encrypt every saved checkpoint and recorded env of STAGE with the newest key.

    Add the new key first (newest first) everywhere, rotate, then drop the old key."""
    from shipit.cli.jobs import Stage

    config = load_stage(stage)
    use_stage_keys(config)
    st = Stage(config)
    try:
        results = _rotate_central(st) if st.central else _rotate_hosts(st)
    finally:
        st.close()
    if as_json:
        echo_json({name: (str(r) if isinstance(r, ShipitError) else r) for name, r in results.items()})
    else:
        for name, res in results.items():
            if not isinstance(res, ShipitError):
                where = "central store" if name == "*" else name
                click.echo(f"[{where}] re-encrypted {res['runs']} run(s) with the newest key")
    errors = [r for r in results.values() if isinstance(r, ShipitError)]
    if errors:
        raise errors[0]


def _rotate_central(st: Any) -> dict[str, Any]:
    from shipit.phases.drain_jobs import open_central

    if cipher_from_env() is None:
        raise StateKeyError("no job state key to rotate to: set SHIPIT_STATE_KEYS or jobs.key_file")
    store = open_central(st.ctx)
    try:
        return {"*": {"runs": store.reencrypt_state()}}
    finally:
        store.close()


def _rotate_hosts(st: Any) -> dict[str, Any]:
    from shipit.gate.url import store_url_for
    from shipit.hosts.fanout import FanOutError, run_parallel

    command = f"{st.stage.shipit_command} keys reencrypt --store {shlex.quote(store_url_for(st.stage))}"

    def one(host: Any) -> dict[str, Any]:
        res = host.run(command, check=False)
        if res.exit_code == 0:
            for line in reversed(res.stdout.splitlines()):
                if line.startswith("{"):
                    return dict(json.loads(line))
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or [""]
        message = f"[{host.name}] {tail[0].removeprefix('shipit: error: ')}"
        if res.exit_code == StateKeyError.exit_code:
            raise StateKeyError(message)
        raise ShipitError(f"{message} (exit code {res.exit_code})")

    try:
        return dict(run_parallel(st.hosts, one, limit=st.stage.parallelism))
    except FanOutError as exc:
        out: dict[str, Any] = dict(exc.results)
        for name, err in exc.errors.items():
            out[name] = err if isinstance(err, ShipitError) else ShipitError(f"[{name}] {err}")
        return out


@keys.command("reencrypt", hidden=True)
@click.option("--store", "url", required=True, metavar="URL", help="The store on this machine.")
def keys_reencrypt(url: str) -> None:
    """Re-encrypt one store on this machine (run on each host by `keys rotate`)."""
    from shipit.gate.url import open_store

    if cipher_from_env() is None:
        raise StateKeyError("no job state key to rotate to: set SHIPIT_STATE_KEYS or SHIPIT_STATE_KEY_FILE")
    if url.startswith(("file:", "sqlite:")) and not os.path.exists(url.split(":", 1)[1]):
        click.echo(json.dumps({"runs": 0}))  # no store on this host yet: nothing to rotate
        return
    try:
        store = open_store(url)
    except (OSError, ValueError) as exc:
        raise StoreUnavailable(f"cannot open the job store: {exc}") from None
    try:
        fn = getattr(store, "reencrypt_state", None)
        if fn is None:
            raise UsageError(f"the {store.kind} store cannot re-encrypt its state")
        click.echo(json.dumps({"runs": fn()}))
    finally:
        store.close()
