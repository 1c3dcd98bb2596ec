"""What the bench scripts share (files starting with `_` are not run by `invoke bench`).

Importing this module makes the checkout the bench lives in the shipit that runs: it goes first
on sys.path and on PYTHONPATH (inherited by every `python -m shipit` the bench starts), and
`SHIPIT_COMMAND`, the shipit command given to sshd test hosts (whose commands get sshd's clean
environment), sets PYTHONPATH itself. Without this a shipit installed elsewhere (an editable
install of another checkout, say) would answer on the hosts.

Every script accepts `--json PATH` (write its figures there, for `invoke bench`'s combined
table) and `--quick` (fewer repetitions, to try things out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(ROOT)]]
)

SHIPIT = [sys.executable, "-m", "shipit"]
SHIPIT_COMMAND = f"env PYTHONPATH={shlex.quote(str(ROOT))} {shlex.quote(sys.executable)} -m shipit"
BACKENDS = ("file", "sqlite", "postgres")


# -- arguments and output ---------------------------------------------------------------------


def parser(doc: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0] if doc else None)
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (to try it out)")
    return ap


def write_json(path: str | None, bench: str, figures: dict[str, Any], params: dict[str, Any]) -> None:
    if not path:
        return
    doc = {"bench": bench, "params": params, "figures": figures, "finished": time.time()}
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


# -- statistics -------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of the samples."""
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))])


def round_robin(rounds: int, variants: Sequence[tuple[str, Callable[[], Any]]]) -> dict[str, list[Any]]:
    """Run every variant once per round, in turn: on a shared machine load from other processes
    then spreads over all variants instead of skewing one, so their ratios hold."""
    out: dict[str, list[Any]] = {name: [] for name, _ in variants}
    for _ in range(rounds):
        for name, fn in variants:
            out[name].append(fn())
    return out


# -- processes --------------------------------------------------------------------------------

_HZ = os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cpu_of(pid: int) -> float:
    """utime + stime of the process and of its children it has waited for, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / _HZ


def tree_cpu(pids: Sequence[int]) -> float:
    """CPU seconds used so far by these processes and everything below them (live or reaped):
    for sshd test hosts, what the connections, shells and remote commands cost."""
    return sum(_cpu_of(p) + sum(_cpu_of(c) for c in _descendants(p)) for p in pids)


def proc_status_kb(pid: int, *keys: str) -> dict[str, int]:
    """Fields of /proc/PID/status in kB (VmRSS, VmHWM, ...); missing ones are left out."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in keys:
                    out[name] = int(rest.split()[0])
    except (OSError, ValueError):
        pass
    return out


# -- servers ----------------------------------------------------------------------------------


def _pg_bin() -> str | None:
    """PostgreSQL binaries as scripts/test.sh finds them: SHIPIT_PG_BIN, 15, else the newest."""
    if os.environ.get("SHIPIT_PG_BIN"):
        return os.environ["SHIPIT_PG_BIN"]
    base = Path("/usr/lib/postgresql")
    if (base / "15" / "bin" / "initdb").exists():
        return str(base / "15" / "bin")
    found = sorted(
        (p for p in base.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in p.parent.name.split(".")],
    )
    return str(found[-1]) if found else None


@contextlib.contextmanager
def postgres() -> Iterator[Callable[[], str] | None]:
    """A throwaway PostgreSQL cluster (tests/harness/postgres.py): yields create_database(),
    which returns the DSN of a new empty database; None when PostgreSQL is not installed."""
    pg_bin = _pg_bin()
    if pg_bin is None:
        print("(PostgreSQL not installed: postgres figures skipped; scripts/test.sh installs it)",
              flush=True)
        yield None
        return
    os.environ["SHIPIT_PG_BIN"] = pg_bin
    from tests.harness import postgres as pg

    pg.PG_BIN = pg_bin
    root = tempfile.mkdtemp(prefix="shipit-bench-pg-")
    os.chmod(root, 0o755)
    user = pg._ensure_user()
    if user:
        shutil.chown(root, user, user)
    cluster = pg.PgCluster(root, pg._free_port(), user)
    try:
        cluster.init()
        cluster.start()
        yield cluster.create_database
    finally:
        with contextlib.suppress(RuntimeError, OSError):
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def store_urls(kind: str, tmp: Path, count: int, new_db: Callable[[], str] | None) -> list[str] | None:
    """`count` separate, empty stores of this backend (None: postgres is not available)."""
    if kind == "file":
        return [f"file:{tmp}/file{i}" for i in range(count)]
    if kind == "sqlite":
        return [f"sqlite:{tmp}/sqlite{i}/jobs.db" for i in range(count)]
    if kind == "postgres":
        return None if new_db is None else [new_db() for _ in range(count)]
    raise SystemExit(f"unknown backend {kind!r} (use {', '.join(BACKENDS)})")


def start_hosts(pool: Any, count: int, parent: Path, *, namespaced: bool = True) -> list[Any]:
    """`count` sshd hosts on distinct free ports. namespaced: each in its own mount namespace
    (tests/e2e/deploy_harness.py), so the same deploy_to is a separate tree on every host, as on
    real machines; else plain test hosts (tests/harness/sshd.py)."""
    from tests.e2e.deploy_harness import HomeHost, _namespaces_work
    from tests.harness.sshd import TestHost, free_port

    if namespaced and not _namespaces_work():
        raise SystemExit("mount namespaces (unshare -m) are needed to give every test host its own tree")
    cls = HomeHost if namespaced else TestHost
    hosts: list[Any] = []
    ports: set[int] = set()
    while len(hosts) < count:
        port = free_port()
        if port in ports:  # a port just probed and released can come back
            continue
        ports.add(port)
        d = parent / f"host-{port}"
        d.mkdir(mode=0o700)
        hosts.append(cls(pool=pool, port=port, dir=d))
    for h in hosts:
        h.spawn()
    for h in hosts:
        h.wait_ready()
    return hosts
