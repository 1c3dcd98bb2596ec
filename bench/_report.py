"""The combined table `invoke bench` prints (and writes to bench/RESULTS.md), built from the JSON
every bench script writes with `--json`. Pure functions, no shipit import: tasks.py loads this.

The table is padded markdown, so the text printed and the file are the same.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
Results = dict[str, dict[str, Any]]  # bench name ("deploy", "gate", ...) -> its JSON document
Row = list[str]
NA = "–"


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    mem_kb = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                   if line.startswith("MemTotal:")), 0)
    revision = os.environ.get("SHIPIT_BENCH_REVISION", "")
    if not revision:
        try:
            head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                  capture_output=True, text=True, check=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "shipit"],
                                   capture_output=True, text=True, check=True).stdout.strip()
            revision = head + (" + uncommitted changes in shipit/" if dirty else "")
        except (OSError, subprocess.CalledProcessError):
            revision = "unknown"
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": mem_kb / 1024 / 1024,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load": os.getloadavg()[0],
        "revision": revision,
    }


def machine_line(m: dict[str, Any], load_end: float | None = None) -> str:
    load = f"{m['load']:.1f}" + (f" at the start, {load_end:.1f} at the end" if load_end is not None else "")
    return (f"Machine: {m['cores']} cores ({m['cpu']}), {m['mem_gib']:.1f} GiB RAM, "
            f"Linux {m['kernel']}, {m['python']}, {m['date']}; load average {load}; "
            f"shipit {m['revision']}")


# -- formatting -------------------------------------------------------------------------------


def _ms(v: float | None) -> str:
    if v is None:
        return NA
    return f"{v:.0f} ms" if v >= 100 else f"{v:.1f} ms"


def _s(v: float | None) -> str:
    return NA if v is None else f"{v:.2f} s"


def _pair_ms(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return NA
    unit = (lambda v: f"{v:.0f}") if max(a, b) >= 100 else (lambda v: f"{v:.1f}")
    return f"{unit(a)} / {unit(b)} ms"


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗")


def _get(doc: dict[str, Any] | None, *path: str) -> Any:
    cur: Any = doc.get("figures") if doc else None
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    return cur


SIZES = ("1", "4", "16")
BACKENDS = ("file", "sqlite", "postgres")


def _deploy_rows(res: Results) -> list[Row]:
    d, mem, tr = res.get("deploy"), res.get("memory"), res.get("transport")
    if not (d or mem or tr):
        return []
    rows: list[Row] = [["**deploy fan-out**: redeploy examples/app, real sshd hosts on this machine",
                        "N=1", "N=4", "N=16", "target"]]

    def full(n: str, *path: str) -> Any:
        return _get(d, "sizes", n, "full", *path)

    if d:
        wall16 = full("16", "wall_median_s")
        rows.append(["redeploy wall time, every phase, no job running (median)",
                     *[_s(full(n, "wall_median_s")) for n in SIZES],
                     "≈ 1 s at N=16" + _mark(None if wall16 is None else wall16 <= 1.25)])
        rows.append(["same, job phases (drain_jobs, restart_jobs) replaced by no-ops",
                     *[_s(_get(d, "sizes", n, "engine", "wall_median_s")) for n in SIZES], ""])

        def phases(n: str) -> str:
            p = full(n, "phases_median_s") or {}
            keys = ("pre_deploy", "drain_jobs", "release", "restart_jobs")
            return " / ".join(f"{p[k]:.2f}" for k in keys) if all(k in p for k in keys) else NA

        rows.append(["time by phase, s: pre_deploy / drain_jobs / release / restart_jobs",
                     *[phases(n) for n in SIZES], ""])
        conns = [full(n, "connections_per_host_max") for n in SIZES]
        rows.append(["SSH connections per host per deploy (most any host saw)",
                     *[NA if c is None else str(c) for c in conns],
                     "1" + _mark(None if all(c is None for c in conns)
                                 else all(c is None or c <= 1 for c in conns))])
        cmds = [full(n, "commands_per_host_max") for n in SIZES]
        ups = [full(n, "uploads_per_host_max") for n in SIZES]
        rows.append(["remote commands per host per deploy (+ archive uploads)",
                     *[NA if c is None else f"{c} (+{u})" for c, u in zip(cmds, ups, strict=True)],
                     "≤ 5" + _mark(None if all(c is None for c in cmds)
                                   else all(c is None or c <= 5 for c in cmds))])

        def cpu(n: str) -> str:
            a, b = full(n, "client_cpu_median_s"), full(n, "hosts_cpu_median_s")
            return NA if a is None or b is None else f"{a:.2f} / {b:.2f} s"

        rows.append(["CPU per redeploy: deploying process / all hosts (sshd, shells, commands)",
                     *[cpu(n) for n in SIZES], ""])
    if mem:
        rows.append(["`shipit deploy` CLI wall time, interpreter start included (median)",
                     *[_s(_get(mem, "deploy", n, "cli_wall_s")) for n in SIZES], ""])
        if any(_get(mem, "deploy", n, "cli_cpu_s") is not None for n in SIZES):
            rows.append(["same, CPU time of that process (user+system, median)",
                         *[_s(_get(mem, "deploy", n, "cli_cpu_s")) for n in SIZES], ""])
        rows.append(["`shipit deploy` CLI peak RSS (ru_maxrss, median)",
                     *[NA if (v := _get(mem, "deploy", n, "peak_rss_mb")) is None else f"{v:.1f} MiB"
                       for n in SIZES], ""])
    if tr:
        rows.append(["SSH connect + first command; at N=16: 16 hosts at once",
                     _ms(_get(tr, "connect_ms")), "", _ms(_get(tr, "fanout_connecting_ms")), ""])
        rows.append(["one command on an open connection; at N=16: on 16 hosts at once",
                     _ms(_get(tr, "ssh_command_ms")), "", _ms(_get(tr, "fanout_connected_ms")), ""])
    return rows


def _jobs_rows(res: Results) -> list[Row]:
    g, j, dr, mem = res.get("gate"), res.get("job_run"), res.get("drain"), res.get("memory")
    if not (g or j or dr or mem):
        return []
    rows: list[Row] = [["**job gate**: per backend", *BACKENDS, "target"]]
    if g:
        rows.append(["claim + release latency, one client, p50 / p99",
                     *[_pair_ms(_get(g, "backends", b, "claim_p50_ms"), _get(g, "backends", b, "claim_p99_ms"))
                       for b in BACKENDS], ""])
        rows.append(["claims per second, 100 concurrent claimer processes (median)",
                     *[NA if (v := _get(g, "backends", b, "claims_per_s")) is None else f"{v:.0f}/s"
                       for b in BACKENDS], ""])
        rows.append(["close_gate + list_runs with 100 running runs, p50 / p99",
                     *[_pair_ms(_get(g, "backends", b, "close_p50_ms"), _get(g, "backends", b, "close_p99_ms"))
                       for b in BACKENDS], ""])
    if j:
        true_ms, py_ms = _get(j, "startup", "true_ms"), _get(j, "startup", "python_ms")
        entry = _get(j, "startup", "entry") or "shipit"
        key = "console" if entry == "shipit" else "python_m"
        over = [_get(j, "startup", "backends", b, f"{key}_over_true_ms") for b in BACKENDS]
        known = [v for v in over if v is not None]
        rows.append([f"`shipit job run -- true` over bare `true` ({_ms(true_ms)}), gate open (median)",
                     *[NA if v is None else f"+{_ms(v)}" for v in over],
                     "< 50 ms" + _mark(None if not known else all(v < 50 for v in known))])
        rows.append([f"same, over a bare interpreter start (`python -c pass`: {_ms(py_ms)})",
                     *[NA if (v := _get(j, "startup", "backends", b, f"{key}_over_python_ms")) is None
                       else f"+{_ms(v)}" for b in BACKENDS], ""])
        py_cpu = _get(j, "startup", "python_cpu_ms")
        if py_cpu is not None:
            rows.append([f"same, CPU (user+system) over the interpreter's ({_ms(py_cpu)})",
                         *[NA if (v := _get(j, "startup", "backends", b, f"{key}_cpu_over_python_ms"))
                           is None else f"+{_ms(v)}" for b in BACKENDS], ""])
        rows.append(["stop: request_stop + SIGUSR1 until the outcome is recorded (median)",
                     *[_ms(_get(j, "stop_ms", b)) for b in BACKENDS], ""])
    if dr:
        wakes = [_get(dr, "backends", b, "wake_median_ms") for b in BACKENDS]
        known = [v for v in wakes if v is not None]
        rows.append(["drain wake-up: last job exits → drain returns, median / p90",
                     *[_pair_ms(_get(dr, "backends", b, "wake_median_ms"), _get(dr, "backends", b, "wake_p90_ms"))
                       for b in BACKENDS],
                     "< 100 ms" + _mark(None if not known else all(v < 100 for v in known))])
        ttl = _get(dr, "kill_ttl_s") or 3.0
        reopen = [_get(dr, "backends", b, "reopen_median_s") for b in BACKENDS]
        known = [v for v in reopen if v is not None]
        rows.append([f"killed deploy → gate admits a job again (lease ttl {ttl:g} s, renewed every "
                     f"{ttl / 3:g} s; median)", *[_s(v) for v in reopen],
                     f"≤ ttl ({ttl:g} s)" + _mark(None if not known else all(v <= ttl + 0.5 for v in known))])
        gone_ttl = _get(dr, "gone_ttl_s")
        back = [_get(dr, "backends", b, "handback_median_s") for b in BACKENDS]
        known = [v for v in back if v is not None]
        if gone_ttl and known:
            rows.append([f"deploy gone mid-drain, its host agent alive → gate admits a job again "
                         f"(lease ttl {gone_ttl:g} s; median)", *[_s(v) for v in back],
                         "≈ 1 s, not the ttl" + _mark(all(v <= 2.0 for v in known))])
    if mem:
        base = _get(mem, "baseline", "rss_mb")

        def sup(b: str) -> str:
            rss, hwm = _get(mem, "supervisor", b, "rss_mb"), _get(mem, "supervisor", b, "hwm_mb")
            return NA if rss is None or hwm is None else f"{rss:.1f} / {hwm:.1f} MiB"

        note = f" (bare interpreter: {base:.1f} MiB)" if base is not None else ""
        rows.append([f"idle `shipit job run -- sleep` supervisor, VmRSS / VmHWM{note}",
                     *[sup(b) for b in BACKENDS], ""])
    return rows


def rows(res: Results) -> list[Row]:
    return _deploy_rows(res) + _jobs_rows(res)


def render(table: list[Row]) -> str:
    """Padded markdown: the first row is the header; later rows whose first cell is bold start a
    section (they repeat the column labels of that section)."""
    if not table:
        return "(no figures)"
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]

    def line(r: Row) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    out = [line(table[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in table[1:]]
    return "\n".join(out)


def markdown(res: Results, m: dict[str, Any], load_end: float | None, statuses: list[str],
             command: str) -> str:
    return "\n".join([
        "# Benchmark results",
        "",
        f"Written by `{command}` (see docs/performance.md for what each figure means and how it",
        "is measured). Medians over several runs, measured side by side in one run on a shared",
        "machine: compare figures within this table, not with another machine's.",
        "",
        machine_line(m, load_end),
        "",
        render(rows(res)),
        "",
        "Scripts: " + "; ".join(statuses) + ".",
        "",
    ])
