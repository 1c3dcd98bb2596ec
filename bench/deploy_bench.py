"""Deploy benchmark: examples/app to N real sshd hosts on this machine (N = 1, 4, 16).

Prints, per N, the median wall time of a redeploy and the SSH connections and remote commands
per host per deploy, plus the median time of each phase. `--engine-only` replaces the job phases
by no-ops to show what the release engine itself costs.

    python bench/deploy_bench.py [--redeploys 5] [--sizes 1,4,16] [--engine-only]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from shipit import runner  # noqa: E402
from shipit.config.loader import load_config  # noqa: E402
from shipit.events import EventBus  # noqa: E402
from shipit.hosts.base import Host  # noqa: E402
from tests.e2e.deploy_harness import MOUNT, HomeHost, _namespaces_work  # noqa: E402
from tests.harness.sshd import (  # noqa: E402
    SSHDPool,
    free_port,
    generate_ed25519,
    write_private,
    write_shipit_yaml,
)


def make_pool(root: Path) -> SSHDPool:
    private, public = generate_ed25519()
    key = root / "id_ed25519"
    write_private(key, private)
    authorized = root / "authorized_keys"
    write_private(authorized, public + "\n")
    known = root / "known_hosts"
    write_private(known, "")
    (root / "home").mkdir(mode=0o700)
    return SSHDPool(root, key, public, known, authorized, root / "home")


def start(pool: SSHDPool, count: int, parent: Path) -> list[HomeHost]:
    hosts = []
    for _ in range(count):
        port = free_port()
        d = parent / f"host-{port}"
        d.mkdir(mode=0o700)
        hosts.append(HomeHost(pool=pool, port=port, dir=d))
    for h in hosts:
        h.spawn()
    for h in hosts:
        h.wait_ready()
    return hosts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--redeploys", type=int, default=5)
    ap.add_argument("--sizes", default="1,4,16")
    ap.add_argument("--engine-only", action="store_true")
    args = ap.parse_args()
    if not _namespaces_work():
        sys.exit("mount namespaces (unshare -m) are needed to give every test host its own tree")
    if args.engine_only:
        from shipit.phases import drain_jobs, restart_jobs

        drain_jobs.drain_jobs = lambda ctx, lock_wait=0.0: None  # type: ignore[assignment]
        restart_jobs.restart_jobs = lambda ctx: None  # type: ignore[assignment]
    opened: list[Host] = []
    real_open = runner.open_host

    def capture(spec, ssh):  # type: ignore[no-untyped-def]
        host = real_open(spec, ssh)
        opened.append(host)
        return host

    runner.open_host = capture  # type: ignore[assignment]
    app = ROOT / "examples" / "app"
    with tempfile.TemporaryDirectory(prefix="shipit-bench-") as tmp:
        root = Path(tmp)
        pool = make_pool(root)
        for n in [int(x) for x in args.sizes.split(",")]:
            hosts = start(pool, n, root)
            try:
                cfg = write_shipit_yaml(
                    root / f"shipit-{n}.yaml", hosts, deploy_to=f"{MOUNT}/bench-{n}",
                    source={"dir": str(app)}, parallelism=max(n, 1), jobs={"store": "file"},
                )
                stage = load_config(cfg).stage("test")
                first = runner.deploy(stage, runner.DeployOptions(), EventBus())
                assert first.outcome == "success", first.error
                walls, phases, cmds, conns = [], {}, [], []
                for _ in range(args.redeploys):
                    opened.clear()
                    t0 = time.perf_counter()
                    res = runner.deploy(stage, runner.DeployOptions(), EventBus())
                    walls.append(time.perf_counter() - t0)
                    assert res.outcome == "success", res.error
                    for k, v in res.durations.items():
                        phases.setdefault(k, []).append(v)
                    cmds.append(max(h.commands for h in opened))
                    conns.append(max(h.connections for h in opened))
                detail = " ".join(f"{k}={statistics.median(v):.3f}s" for k, v in phases.items())
                print(
                    f"hosts={n:2d} redeploy median={statistics.median(walls):.3f}s "
                    f"max_commands/host={max(cmds)} max_connections/host={max(conns)} | {detail}",
                    flush=True,
                )
            finally:
                for h in hosts:
                    h.kill()


if __name__ == "__main__":
    main()
