"""Transport benchmark: prints figures, asserts nothing.

    python bench/transport_bench.py [--commands 200] [--hosts 16] [--json PATH] [--quick]

- connect: TCP + key exchange + auth + first command, per host (median)
- per command: `true` over one reused SSH connection, with and without stdin; the same on the
  local host (median of --commands runs)
- fan-out: one command on --hosts sshd hosts at once (parallelism = hosts), wall time
- HOME effect: the same command when sshd keeps root's HOME (whose ~/.bashrc may be slow)
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import _common

from shipit.config.model import HostSpec
from shipit.hosts.base import Host
from shipit.hosts.fanout import run_parallel
from shipit.hosts.local import LocalHost
from shipit.hosts.ssh import SSHHost
from tests.harness.sshd import new_pool


def per_command(host: Host, n: int, stdin: str | None = None) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        host.run("true", stdin=stdin)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    ap = _common.parser(__doc__)
    ap.add_argument("--commands", type=int, default=None, help="(200, quick 40)")
    ap.add_argument("--hosts", type=int, default=16)
    args = ap.parse_args()
    commands = args.commands or (40 if args.quick else 200)
    figures: dict[str, float] = {}

    def show(label: str, key: str, ms: float, note: str = "") -> None:
        figures[key] = ms
        print(f"{label:<28}{ms:8.1f} ms{note}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        pool = new_pool(Path(tmp))
        targets = _common.start_hosts(pool, args.hosts, Path(tmp), namespaced=False)
        try:
            connects = []
            hosts: list[Host] = []
            for t in targets:
                host = SSHHost(t.spec(), t.ssh)
                start = time.perf_counter()
                host.run("true")
                connects.append(time.perf_counter() - start)
                hosts.append(host)
            show("connect + first command", "connect_ms", statistics.median(connects) * 1000)
            show("ssh command", "ssh_command_ms", per_command(hosts[0], commands))
            show("ssh command with stdin", "ssh_command_stdin_ms", per_command(hosts[0], commands, "x"))
            local = LocalHost(HostSpec(name="local", hostname="localhost", local=True))
            show("local command", "local_command_ms", per_command(local, commands))
            show("local command with stdin", "local_command_stdin_ms", per_command(local, commands, "x"))
            start = time.perf_counter()
            run_parallel(hosts, lambda h: h.run("true"), limit=len(hosts))
            show(f"fan-out over {len(hosts):2d} hosts", "fanout_connected_ms",
                 (time.perf_counter() - start) * 1000, " (connected)")
            fresh = [SSHHost(t.spec(), t.ssh) for t in targets]
            start = time.perf_counter()
            run_parallel(fresh, lambda h: h.run("true"), limit=len(fresh))
            show(f"fan-out over {len(fresh):2d} hosts", "fanout_connecting_ms",
                 (time.perf_counter() - start) * 1000, " (connecting)")
            for host in hosts + fresh:
                host.close()
            # Same host, but sshd leaves HOME alone: root's shell startup files run per command.
            pool.home = Path.home()
            (Path(tmp) / "home-host").mkdir()
            (slow,) = _common.start_hosts(pool, 1, Path(tmp) / "home-host", namespaced=False)
            with SSHHost(slow.spec(), slow.ssh) as host:
                host.run("true")
                n = max(10, commands // 10)
                show(f"ssh command, HOME={Path.home()}", "ssh_command_real_home_ms", per_command(host, n))
            slow.kill()
        finally:
            for t in targets:
                t.kill()
    _common.write_json(args.json, "transport", figures, {"commands": commands, "hosts": args.hosts})


if __name__ == "__main__":
    main()
