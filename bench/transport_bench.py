"""Transport benchmark: prints figures, asserts nothing.

    python bench/transport_bench.py [--commands 200] [--hosts 16]

- connect: TCP + key exchange + auth + first command, per host (median)
- per command: `true` over one reused SSH connection, with and without stdin; the same on the
  local host (median of --commands runs)
- fan-out: one command on --hosts sshd hosts at once (parallelism = hosts), wall time
- HOME effect: the same command when sshd keeps root's HOME (whose ~/.bashrc may be slow)
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

from shipit.config.model import HostSpec  # noqa: E402
from shipit.hosts.base import Host  # noqa: E402
from shipit.hosts.fanout import run_parallel  # noqa: E402
from shipit.hosts.local import LocalHost  # noqa: E402
from shipit.hosts.ssh import SSHHost  # noqa: E402
from tests.harness.sshd import new_pool, start_hosts  # noqa: E402


def per_command(host: Host, n: int, stdin: str | None = None) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        host.run("true", stdin=stdin)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commands", type=int, default=200)
    ap.add_argument("--hosts", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pool = new_pool(Path(tmp))
        targets = start_hosts(pool, args.hosts, Path(tmp))
        try:
            connects = []
            hosts: list[Host] = []
            for t in targets:
                host = SSHHost(t.spec(), t.ssh)
                start = time.perf_counter()
                host.run("true")
                connects.append(time.perf_counter() - start)
                hosts.append(host)
            print(f"connect + first command     {statistics.median(connects) * 1000:8.1f} ms")
            print(f"ssh command                 {per_command(hosts[0], args.commands):8.1f} ms")
            print(
                f"ssh command with stdin      {per_command(hosts[0], args.commands, 'x'):8.1f} ms"
            )
            local = LocalHost(HostSpec(name="local", hostname="localhost", local=True))
            print(f"local command               {per_command(local, args.commands):8.1f} ms")
            print(f"local command with stdin    {per_command(local, args.commands, 'x'):8.1f} ms")
            start = time.perf_counter()
            run_parallel(hosts, lambda h: h.run("true"), limit=len(hosts))
            wall = (time.perf_counter() - start) * 1000
            print(f"fan-out over {len(hosts):2d} hosts         {wall:8.1f} ms (connected)")
            fresh = [SSHHost(t.spec(), t.ssh) for t in targets]
            start = time.perf_counter()
            run_parallel(fresh, lambda h: h.run("true"), limit=len(fresh))
            wall = (time.perf_counter() - start) * 1000
            print(f"fan-out over {len(fresh):2d} hosts         {wall:8.1f} ms (connecting)")
            for host in hosts + fresh:
                host.close()
            # Same host, but sshd leaves HOME alone: root's shell startup files run per command.
            pool.home = Path.home()
            (Path(tmp) / "home-host").mkdir()
            (slow,) = start_hosts(pool, 1, Path(tmp) / "home-host")
            with SSHHost(slow.spec(), slow.ssh) as host:
                host.run("true")
                n = max(10, args.commands // 10)
                print(f"ssh command, HOME={Path.home()}   {per_command(host, n):8.1f} ms")
            slow.kill()
        finally:
            for t in targets:
                t.kill()


if __name__ == "__main__":
    main()
