"""The servers a chaos run works against: sshd hosts (each in its own mount namespace, so one
deploy_to is a separate tree per host) and one PostgreSQL cluster. Started once per run, shared
by every trial, with a zygote (tests/chaos/zygote.py) that starts the trials' shipit commands
without paying the interpreter start each time.

Every process of a run, on the test side and on the hosts (`shipit_command`), imports shipit from
this checkout (PYTHONPATH), never from whatever is installed: the run tests the code in front of it.

A host can be given a clock a few seconds off (`set_skew`): its sshd is restarted with
LD_PRELOAD=libfaketime and FAKETIME="+Ns" in every session's environment (sshd_config SetEnv),
so the host agent, the jobs it restarts and the supervisors the trial starts there (`host_env`)
all read that clock.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.zygote import Zygote, wanted
from tests.e2e.deploy_harness import MOUNT, HomeHost, _namespaces_work
from tests.harness.postgres import PG_BIN, PgCluster, _ensure_user, _free_port
from tests.harness.sshd import SSHD, USER, SSHDPool, free_port, new_pool

REPO = str(Path(__file__).resolve().parents[2])
# The shipit the hosts run: this checkout's, with this interpreter.
SHIPIT_COMMAND = f"env PYTHONPATH={shlex.quote(REPO)} {shlex.quote(sys.executable)} -m shipit"
FAKETIME_LIBS = ("/usr/lib/*/faketime/libfaketime.so.1", "/usr/local/lib/faketime/libfaketime.so.1",
                 "/usr/lib/faketime/libfaketime.so.1")


class WorldUnavailable(RuntimeError):
    """A server the chaos suite needs is missing (message names it)."""


def faketime_lib() -> str | None:
    for pattern in FAKETIME_LIBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def build_faketime_preload(root: Path) -> str:
    """LD_PRELOAD value for a skewed process: libfaketime, behind a fix for its monotonic sleeps
    (tests/chaos/faketime_fix.c, compiled here with cc)."""
    lib = faketime_lib()
    if lib is None:
        raise WorldUnavailable("libfaketime not installed (clock skew fault): run scripts/install-test-deps.sh")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise WorldUnavailable("no C compiler (cc) to build tests/chaos/faketime_fix.c: run scripts/install-test-deps.sh")
    fix = root / "faketime_fix.so"
    res = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(fix), str(Path(__file__).with_name("faketime_fix.c")),
                          "-ldl"], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise WorldUnavailable(f"cannot build tests/chaos/faketime_fix.c: {res.stderr.strip()[-500:]}")
    return f"{fix}:{lib}"


def faketime_shared(tag: str) -> str:
    """A semaphore and shared memory for libfaketime, made once per run: FAKETIME_SHARED's value.

    A libfaketime process that finds no FAKETIME_SHARED creates its own pair, exports it to its
    children and unlinks it when it exits, and so does every fork of it that exits (a shell's
    `$(...)` or `( ... )` subshell). A child started after that dies at once: "libfaketime: In
    ft_shm_init(), sem_open failed", exit 1, before doing anything. On a skewed host that made
    switch commands fail after their first subshell (the final deploy's `set -e` failures of seeds
    53, 131, 152): a fault of the clock fake, not of shipit. With one pair made here (as the
    `faketime` wrapper does), no process on a skewed host ever creates or unlinks one."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.sem_open.restype = ctypes.c_void_p
    libc.sem_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_uint]
    sem, shm = f"/faketime_sem_chaos-{tag}", f"/faketime_shm_chaos-{tag}"
    free_faketime_shared(f"{sem} {shm}")
    if libc.sem_open(sem.encode(), os.O_CREAT | os.O_EXCL, 0o600, 1) in (None, 0, -1):
        raise WorldUnavailable(f"cannot create the semaphore {sem} for libfaketime: "
                               f"{os.strerror(ctypes.get_errno())}")
    fd = os.open(f"/dev/shm{shm}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.write(fd, bytes(8))  # the ticks counter libfaketime keeps there, from 0
    finally:
        os.close(fd)
    return f"{sem} {shm}"


def free_faketime_shared(shared: str) -> None:
    sem, shm = shared.split()
    for path in (f"/dev/shm/sem.{sem[1:]}", f"/dev/shm{shm}"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def skew_env(preload: str, seconds: int, shared: str = "") -> dict[str, str]:
    """The environment that puts a process `seconds` off the real clock (empty: no skew).
    CLOCK_MONOTONIC stays real, so intervals are unchanged and a ledger line can carry both
    clocks (tests/chaos/ledger_job.py) to show the skew was in effect. `shared`: the run's
    FAKETIME_SHARED (faketime_shared)."""
    if not seconds:
        return {}
    env = {"LD_PRELOAD": preload, "FAKETIME": f"{seconds:+d}s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    if shared:
        env["FAKETIME_SHARED"] = shared
    return env


@dataclass
class ChaosHost(HomeHost):
    """A HomeHost whose sessions can run on a clock `skew` seconds off."""

    __test__ = False
    skew: int = 0
    preload: str = ""
    faketime_shared: str = ""

    def _write_config(self) -> Path:
        config = super()._write_config()
        extra = " ".join(f'"{k}={v}"' if " " in v else f"{k}={v}"
                         for k, v in skew_env(self.preload, self.skew, self.faketime_shared).items())
        if extra:
            lines = [f"{line} {extra}" if line.startswith("SetEnv ") else line
                     for line in config.read_text().splitlines()]
            config.write_text("\n".join(lines) + "\n")
        return config


@dataclass
class World:
    root: Path
    hosts: list[ChaosHost] = field(default_factory=list)
    pool: SSHDPool | None = None
    pg: PgCluster | None = None
    zygote: Zygote | None = None
    # One deployed application per backend, reused by the next trial while it is healthy.
    apps: dict[str, object] = field(default_factory=dict)
    # In every app name of this run: two runs at once on one machine never share a name (a trial
    # ends its processes by finding its app's name in their command line or environment).
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    faketime_shared: str = ""  # FAKETIME_SHARED of the skewed hosts (faketime_shared())

    @classmethod
    def start(cls, root: Path, *, n_hosts: int = 3, postgres: bool = True) -> World:
        if not os.path.exists(SSHD):
            raise WorldUnavailable(f"{SSHD} not installed: run scripts/install-test-deps.sh")
        if not _namespaces_work():
            raise WorldUnavailable("mount namespaces (unshare -m) are not available")
        root.mkdir(parents=True, exist_ok=True)
        preload = build_faketime_preload(root)
        world = cls(root=root)
        world.faketime_shared = faketime_shared(world.tag)
        (root / "ssh").mkdir(mode=0o700)
        world.pool = new_pool(root / "ssh")
        for _ in range(n_hosts):
            port = free_port()
            d = root / f"host-{port}"
            d.mkdir(mode=0o700)
            world.hosts.append(ChaosHost(pool=world.pool, port=port, dir=d, preload=preload,
                                         faketime_shared=world.faketime_shared))
        for h in world.hosts:
            h.spawn()
        for h in world.hosts:
            h.wait_ready()
        if postgres:
            world.pg = _start_pg()
        if wanted():
            world.zygote = Zygote(world.env())
        return world

    def stop(self) -> None:
        if self.zygote is not None:
            with contextlib.suppress(Exception):
                self.zygote.close()
        for h in self.hosts:
            with contextlib.suppress(Exception):
                h.kill()
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.stop("immediate")
            shutil.rmtree(self.pg.root, ignore_errors=True)
        if self.faketime_shared:
            free_faketime_shared(self.faketime_shared)

    def env(self) -> dict[str, str]:
        """The environment of the run's shipit processes on this side."""
        env = dict(os.environ)
        env.pop("CHAOS_FAIL", None)
        for k in ("LD_PRELOAD", "FAKETIME", "FAKETIME_DONT_FAKE_MONOTONIC", "FAKETIME_SHARED"):
            env.pop(k, None)
        env["PYTHONPATH"] = os.pathsep.join([REPO, *filter(None, [os.environ.get("PYTHONPATH")])])
        return env

    def tree(self, host: HomeHost, app: str) -> Path:
        """The host's deploy_to, seen from this (the test's) mount namespace."""
        return host.home / app

    def nsenter(self, host: HomeHost) -> list[str]:
        """argv prefix that runs a command inside the host's mount namespace (as if on it)."""
        assert host.proc is not None
        return ["nsenter", "-t", str(host.proc.pid), "-m", "--"]

    def host_env(self, host: ChaosHost) -> dict[str, str]:
        """What a process started on the host (through nsenter) adds to its environment."""
        return skew_env(host.preload, host.skew, host.faketime_shared)

    def set_skew(self, host: ChaosHost, seconds: int) -> None:
        """Give the host a clock `seconds` off (0: the real clock); restarts its sshd if needed,
        then checks that a process on the host, both through nsenter and through an SSH
        session, reads that clock (raises WorldUnavailable when it does not)."""
        if host.skew == seconds and host.running:
            return
        host.kill()
        host.skew = seconds
        host.start()
        if seconds:
            self.check_skew(host)

    def check_skew(self, host: ChaosHost) -> None:
        probe = [sys.executable, "-c", "import time; print(time.time() - time.monotonic())"]
        base = time.time() - time.monotonic()
        via_ns = subprocess.run([*self.nsenter(host), *probe], capture_output=True, text=True, timeout=30,
                                env={**self.env(), **self.host_env(host)}, check=False)
        assert self.pool is not None
        via_ssh = subprocess.run(
            ["ssh", "-p", str(host.port), "-i", str(self.pool.client_key), "-o", "BatchMode=yes",
             "-o", f"UserKnownHostsFile={self.pool.known_hosts}", "-o", "StrictHostKeyChecking=yes",
             f"{USER}@127.0.0.1", shlex.join(probe)],
            capture_output=True, text=True, timeout=30, check=False, stdin=subprocess.DEVNULL,
        )
        for how, res in (("nsenter", via_ns), ("ssh", via_ssh)):
            try:
                seen = float(res.stdout.strip()) - base
            except ValueError:
                raise WorldUnavailable(f"skew probe on {host.name} via {how} failed: {res.stderr.strip()[-300:]}") from None
            if abs(seen - host.skew) > 0.5:
                raise WorldUnavailable(f"{host.name} should be {host.skew:+d}s off, a process there via {how} "
                                       f"reads {seen:+.2f}s: libfaketime did not take effect")


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
        # Running is not ready: after a crash restart the server replays its WAL first.
        import psycopg

        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(world.pg.dsn(), connect_timeout=5).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


__all__ = ["MOUNT", "SHIPIT_COMMAND", "ChaosHost", "World", "WorldUnavailable", "ensure_up"]
