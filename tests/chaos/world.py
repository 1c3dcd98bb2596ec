"""The servers a chaos run works against: sshd hosts (each in its own mount namespace, so one
deploy_to is a separate tree per host) and one PostgreSQL cluster. Started once per run, shared
by every trial; each trial deploys a fresh application (and gets a fresh database)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.deploy_harness import MOUNT, HomeHost, _namespaces_work
from tests.harness.postgres import PG_BIN, PgCluster, _ensure_user, _free_port
from tests.harness.sshd import SSHD, SSHDPool, free_port, new_pool


class WorldUnavailable(RuntimeError):
    """A server the chaos suite needs is missing (message names it)."""


@dataclass
class World:
    root: Path
    hosts: list[HomeHost] = field(default_factory=list)
    pool: SSHDPool | None = None
    pg: PgCluster | None = None

    @classmethod
    def start(cls, root: Path, *, n_hosts: int = 3, postgres: bool = True) -> World:
        if not os.path.exists(SSHD):
            raise WorldUnavailable(f"{SSHD} not installed: run scripts/install-test-deps.sh")
        if not _namespaces_work():
            raise WorldUnavailable("mount namespaces (unshare -m) are not available")
        root.mkdir(parents=True, exist_ok=True)
        world = cls(root=root)
        (root / "ssh").mkdir(mode=0o700)
        world.pool = new_pool(root / "ssh")
        for _ in range(n_hosts):
            port = free_port()
            d = root / f"host-{port}"
            d.mkdir(mode=0o700)
            world.hosts.append(HomeHost(pool=world.pool, port=port, dir=d))
        for h in world.hosts:
            h.spawn()
        for h in world.hosts:
            h.wait_ready()
        if postgres:
            world.pg = _start_pg()
        return world

    def stop(self) -> None:
        for h in self.hosts:
            with contextlib.suppress(Exception):
                h.kill()
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.stop("immediate")
            shutil.rmtree(self.pg.root, ignore_errors=True)

    def tree(self, host: HomeHost, app: str) -> Path:
        """The host's deploy_to, seen from this (the test's) mount namespace."""
        return host.home / app

    def nsenter(self, host: HomeHost) -> list[str]:
        """argv prefix that runs a command inside the host's mount namespace (as if on it)."""
        assert host.proc is not None
        return ["nsenter", "-t", str(host.proc.pid), "-m", "--"]


def _start_pg() -> PgCluster:
    if not os.path.exists(f"{PG_BIN}/initdb"):
        raise WorldUnavailable(f"PostgreSQL not installed ({PG_BIN}/initdb): run scripts/install-test-deps.sh")
    run_as = _ensure_user()
    root = tempfile.mkdtemp(prefix="shipit-chaos-pg-")
    os.chmod(root, 0o755)
    if run_as:
        shutil.chown(root, run_as, run_as)
    cluster = PgCluster(root, _free_port(), run_as)
    try:
        cluster.init()
        cluster.start()
    except (RuntimeError, OSError) as e:
        shutil.rmtree(root, ignore_errors=True)
        raise WorldUnavailable(f"PostgreSQL would not start: {e}") from e
    return cluster


def ensure_up(world: World) -> None:
    """Bring every killed server back (between trials, and before checking invariants)."""
    for h in world.hosts:
        if not h.running:
            h.start()
    if world.pg is not None:
        res = subprocess.run(world.pg._cmd(f"{PG_BIN}/pg_ctl", "-D", world.pg.data, "status"),
                             capture_output=True, check=False)
        if res.returncode != 0:
            world.pg.start()


__all__ = ["MOUNT", "World", "WorldUnavailable", "ensure_up"]
