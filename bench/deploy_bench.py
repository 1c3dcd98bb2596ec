"""Deploy benchmark: examples/app to N real sshd hosts on this machine (N = 1, 4, 16).

Per N, after a first deploy, --redeploys redeploys through every phase (no job running), and
as many with the job phases (drain_jobs, restart_jobs) replaced by no-ops, alternating, so the
two are measured side by side. Prints the median wall time, the SSH connections and remote
commands per host per deploy (the most any host saw), the median time of each phase, and the CPU
a redeploy costs: in the deploying process, and on the hosts (every sshd with its sessions,
shells and remote commands: all N hosts share this machine's cores). `--engine-only` measures
only the variant without job phases. `--compare DIR` adds a third variant, alternating with the
others: the full redeploy with the hosts running `shipit agent` from another shipit tree (an
export of another commit, say) into their own deploy_to and job store; the deploying process is
the same, so the difference is what the host side costs. Figures only, no pass/fail.

    python bench/deploy_bench.py [--redeploys 5] [--sizes 1,4,16] [--engine-only] [--json PATH]
                                 [--compare DIR]
"""

from __future__ import annotations

import compileall
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
from _common import ROOT, SHIPIT_COMMAND, median, start_hosts, tree_cpu

from shipit import runner
from shipit.config.loader import load_config
from shipit.events import EventBus
from shipit.hosts.base import Host
from shipit.phases import drain_jobs, restart_jobs
from tests.e2e.deploy_harness import MOUNT
from tests.harness.sshd import new_pool, write_shipit_yaml

REAL_DRAIN, REAL_RESTART = drain_jobs.drain_jobs, restart_jobs.restart_jobs


def _job_phases(enabled: bool) -> None:
    if enabled:
        drain_jobs.drain_jobs, restart_jobs.restart_jobs = REAL_DRAIN, REAL_RESTART
    else:
        drain_jobs.drain_jobs = lambda ctx, lock_wait=0.0: None  # type: ignore[assignment]
        restart_jobs.restart_jobs = lambda ctx: None  # type: ignore[assignment]


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    phases: dict[str, list[float]] = {}
    for s in samples:
        for k, v in s["phases"].items():
            phases.setdefault(k, []).append(v)
    return {
        "redeploys": len(samples),
        "wall_s": [s["wall"] for s in samples],
        "wall_median_s": median([s["wall"] for s in samples]),
        "phases_median_s": {k: median(v) for k, v in phases.items()},
        "commands_per_host_max": max(s["commands"] for s in samples),
        "connections_per_host_max": max(s["connections"] for s in samples),
        "uploads_per_host_max": max(s["uploads"] for s in samples),
        "client_cpu_median_s": median([s["client_cpu"] for s in samples]),
        "hosts_cpu_median_s": median([s["hosts_cpu"] for s in samples]),
    }


def main() -> None:
    ap = _common.parser(__doc__)
    ap.add_argument("--redeploys", type=int, default=None, help="per variant and N (default 5, quick 2)")
    ap.add_argument("--sizes", default="1,4,16")
    ap.add_argument("--engine-only", action="store_true", help="only the variant without job phases")
    ap.add_argument("--compare", metavar="DIR",
                    help="also redeploy with the hosts' shipit from this tree (holding shipit/)")
    args = ap.parse_args()
    redeploys = args.redeploys or (2 if args.quick else 5)
    variants = ["engine"] if args.engine_only else ["full", "engine"]
    compare_command = None
    if args.compare:
        tree = Path(args.compare).resolve()
        if not (tree / "shipit" / "__main__.py").exists():
            raise SystemExit(f"--compare {args.compare}: no shipit/ package there")
        for t in (tree, ROOT):  # as `pip install` leaves it: no host compiles on its first run
            compileall.compile_dir(str(t / "shipit"), quiet=1)
        compare_command = (f"env PYTHONPATH={shlex.quote(str(tree))} "
                           f"{shlex.quote(sys.executable)} -m shipit")
        variants.insert(1, "compare")
    opened: list[Host] = []
    real_open = runner.open_host

    def capture(spec, ssh):  # type: ignore[no-untyped-def]
        host = real_open(spec, ssh)
        opened.append(host)
        return host

    runner.open_host = capture  # type: ignore[assignment]
    app = ROOT / "examples" / "app"
    figures: dict[str, Any] = {"sizes": {}}
    with tempfile.TemporaryDirectory(prefix="shipit-bench-") as tmp:
        root = Path(tmp)
        (root / "pool").mkdir()
        pool = new_pool(root / "pool")
        for n in [int(x) for x in args.sizes.split(",")]:
            (root / f"hosts-{n}").mkdir()
            hosts = start_hosts(pool, n, root / f"hosts-{n}")
            sshd_pids = [h.proc.pid for h in hosts]
            try:
                cfg = write_shipit_yaml(
                    root / f"shipit-{n}.yaml", hosts, deploy_to=f"{MOUNT}/bench-{n}",
                    source={"dir": str(app)}, parallelism=max(n, 1), jobs={"store": "file"},
                    shipit_command=SHIPIT_COMMAND,
                )
                stages = {"full": load_config(cfg).stage("test")}
                stages["engine"] = stages["full"]
                if compare_command:
                    other = write_shipit_yaml(
                        root / f"shipit-{n}-compare.yaml", hosts,
                        deploy_to=f"{MOUNT}/bench-{n}-compare", source={"dir": str(app)},
                        parallelism=max(n, 1), jobs={"store": "file"},
                        shipit_command=compare_command,
                    )
                    stages["compare"] = load_config(other).stage("test")
                _job_phases(True)
                for stage in {id(s): s for s in stages.values()}.values():
                    first = runner.deploy(stage, runner.DeployOptions(), EventBus())
                    assert first.outcome == "success", first.error
                samples: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
                for _ in range(redeploys):
                    for variant in variants:
                        _job_phases(variant != "engine")
                        opened.clear()
                        time.sleep(0.3)  # the last deploy's sshd sessions have ended
                        hosts0, self0 = tree_cpu(sshd_pids), _cpu_self()
                        t0 = time.perf_counter()
                        res = runner.deploy(stages[variant], runner.DeployOptions(), EventBus())
                        wall = time.perf_counter() - t0
                        self1 = _cpu_self()
                        assert res.outcome == "success", res.error
                        time.sleep(0.3)
                        samples[variant].append({
                            "wall": wall, "phases": res.durations,
                            "commands": max(h.commands for h in opened),
                            "connections": max(h.connections for h in opened),
                            "uploads": max(h.uploads for h in opened),
                            "client_cpu": self1 - self0, "hosts_cpu": tree_cpu(sshd_pids) - hosts0,
                        })
                _job_phases(True)
                figures["sizes"][str(n)] = {v: _summary(s) for v, s in samples.items()}
                for variant, s in figures["sizes"][str(n)].items():
                    detail = " ".join(f"{k}={v:.3f}s" for k, v in s["phases_median_s"].items())
                    label = {"full": "redeploy", "compare": "--compare"}.get(variant, "no job phases")
                    print(
                        f"hosts={n:2d} {label:13} median={s['wall_median_s']:.3f}s "
                        f"max_commands/host={s['commands_per_host_max']} "
                        f"max_connections/host={s['connections_per_host_max']} "
                        f"cpu: deploy={s['client_cpu_median_s']:.2f}s "
                        f"hosts={s['hosts_cpu_median_s']:.2f}s | {detail}",
                        flush=True,
                    )
            finally:
                for h in hosts:
                    h.kill()
    _common.write_json(args.json, "deploy", figures, {"redeploys": redeploys, "sizes": args.sizes,
                                                      "variants": variants, "compare": args.compare})


if __name__ == "__main__":
    main()
