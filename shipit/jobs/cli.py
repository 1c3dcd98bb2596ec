"""`shipit job ...`: run a job under the gate, and the helpers shell jobs call from inside a run.

    shipit job run [--name N] [--key K] [--max-wait S] [--cwd DIR] [--store URL] [--host NAME]
                   [--grace S] [--heartbeat S] [--env NAME ...] [--continues RUN_ID] -- CMD ARGS...
    shipit job checkpoint [JSON | -]      (inside a run: save the job's state)
    shipit job progress DONE [TOTAL]      (inside a run: report progress)

Plain argparse and lazy imports: this runs once per job start on the hosts.
Exit codes: the job's own (128+N when killed by signal N); 2 usage; 5 job store unreachable (the job
does not run); 75 the gate stayed closed past --max-wait; 126/127 the command could not be run.
"""

from __future__ import annotations

import argparse
import os
import sys

from shipit.errors import ShipitError, UsageError

TYPE_CHECKING = False  # typing costs ~3 ms to import; annotations are strings (PEP 563)
if TYPE_CHECKING:
    from typing import NoReturn

_RUN_EPILOG = (
    "The store comes from --store or $SHIPIT_STORE (file:/dir, sqlite:/path.db, postgres or a"
    " postgresql:// URL). Exit codes: the job's own; 2 usage; 5 store unreachable (the job does"
    " not run); 75 gave up at a closed gate (--max-wait)."
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is ONE line (`shipit: error: ...`) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        message = _one_line(message)  # it quotes the user's words, which may hold newlines
        sys.stderr.write(f"shipit: error: {self.prog}: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"{text!r} must be zero or more seconds")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _build_parser() -> _Parser:
    parser = _Parser(prog="shipit job", description="Run jobs so that deploys can take care of them.")
    sub = parser.add_subparsers(dest="cmd", metavar="{run,checkpoint,progress}")
    sub.required = True

    run = sub.add_parser(
        "run",
        help="run CMD under the gate, supervised (stop requests, checkpoints, restarts)",
        usage="shipit job run [options] -- CMD ARGS...",
        epilog=_RUN_EPILOG,
    )
    run.add_argument("--name", help="job name (default: basename of CMD)")
    run.add_argument("--key", help="job key: at most one active run per key")
    run.add_argument(
        "--max-wait", type=_seconds, default=None, metavar="S",
        help="give up (exit 75) when the gate stays closed this long (default 3600)",
    )
    run.add_argument(
        "--cwd", metavar="DIR",
        help="run in DIR, resolved after the gate opens (so /app/current is the live release)",
    )
    run.add_argument("--store", metavar="URL", help="job store URL (default: $SHIPIT_STORE)")
    run.add_argument("--host", help="host name recorded with the run (default: $SHIPIT_HOST or hostname)")
    run.add_argument(
        "--grace", type=_seconds, default=None, metavar="S",
        help="seconds between SIGTERM and SIGKILL on a stop, the job's own: recorded, it wins over"
             " a deploy's jobs.grace (default: the deploy's, else $SHIPIT_GRACE or 10)",
    )
    run.add_argument(
        "--heartbeat", type=_positive_seconds, default=None, metavar="S",
        help="seconds between heartbeats (default 1)",
    )
    run.add_argument(
        "--env", action="append", default=[], metavar="NAME",
        help="environment variable to record and restore on restart (repeat, or A,B)",
    )
    run.add_argument("--continues", metavar="RUN_ID", help="continue a stopped run (used by deploys)")
    run.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)

    ckpt = sub.add_parser(
        "checkpoint", help="inside a run: save the job's state (JSON) for the next run",
        usage="shipit job checkpoint [JSON | -]",
    )
    ckpt.add_argument("state", nargs="?", default="-", help="JSON value, or - to read stdin (default)")

    prog = sub.add_parser(
        "progress", help="inside a run: report progress", usage="shipit job progress DONE [TOTAL]"
    )
    prog.add_argument("done", type=float)
    prog.add_argument("total", type=float, nargs="?")
    return parser


def _store_url(given: str | None) -> str:
    url = given or os.environ.get("SHIPIT_STORE", "")
    if not url:
        raise UsageError("no job store: pass --store URL or set SHIPIT_STORE")
    return url


def _host(given: str | None) -> str:
    return given or os.environ.get("SHIPIT_HOST") or os.uname().nodename


def _grace(given: float | None) -> float:
    if given is not None:
        return given
    raw = os.environ.get("SHIPIT_GRACE")
    if not raw:
        from shipit.jobs.supervisor import DEFAULT_GRACE

        return DEFAULT_GRACE
    try:
        return _seconds(raw)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"SHIPIT_GRACE: {exc}") from None


def _cmd_run(ns: argparse.Namespace, command: list[str]) -> int:
    from shipit.jobs.supervisor import (
        DEFAULT_HEARTBEAT,
        DEFAULT_MAX_WAIT,
        RunOptions,
        run_job,
    )

    for opt in ("name", "key", "cwd", "host", "store", "continues"):
        # argparse drops a lone '--' given as a value (`--key=--`), leaving a list behind.
        if isinstance(getattr(ns, opt), list):
            raise UsageError(f"job run: --{opt} needs a value ('--' cannot be one)")
    if command and ns.command:
        raise UsageError("job run: give the command once, after --")
    command = command or ns.command
    if not command and not ns.continues:
        raise UsageError("job run: no command given (shipit job run [options] -- CMD ARGS...)")
    opts = RunOptions(
        command=command,
        store_url=_store_url(ns.store),
        host=_host(ns.host),
        name=ns.name,
        key=ns.key,
        max_wait=DEFAULT_MAX_WAIT if ns.max_wait is None else ns.max_wait,
        cwd=ns.cwd,
        grace=_grace(ns.grace),
        own_grace=ns.grace,
        heartbeat=DEFAULT_HEARTBEAT if ns.heartbeat is None else ns.heartbeat,
        env_names=[n.strip() for item in ns.env for n in item.split(",") if n.strip()],
        continues=ns.continues,
    )
    return run_job(opts)


def _inside_run() -> tuple[str, str]:
    run_id = os.environ.get("SHIPIT_RUN_ID", "")
    if not run_id:
        raise UsageError("not inside `shipit job run` (SHIPIT_RUN_ID is not set)")
    return run_id, _store_url(None)


def _cmd_checkpoint(ns: argparse.Namespace) -> int:
    import json

    run_id, url = _inside_run()
    text = sys.stdin.read() if ns.state == "-" else ns.state
    try:
        state = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"job checkpoint: the state is not valid JSON: {exc}") from None
    from shipit.jobs.supervisor import open_store_or_fail

    with open_store_or_fail(url) as store:
        store.save_checkpoint(run_id, state)
    return 0


def _cmd_progress(ns: argparse.Namespace) -> int:
    run_id, url = _inside_run()
    from typing import cast  # not at the top: `shipit job run` never needs typing

    from shipit.jobs.supervisor import open_store_or_fail

    # Stores keep an unknown total as NULL, which the type of heartbeat() does not spell out.
    progress = cast("tuple[float, float]", (ns.done, ns.total))
    with open_store_or_fail(url) as store:
        store.heartbeat(run_id, progress=progress)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`shipit job ARGS...`; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first `--` is the job's command, never an option of ours.
    command: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, command = args[:cut], args[cut + 1 :]
    ns = _build_parser().parse_args(args)
    try:
        if ns.cmd == "run":
            return _cmd_run(ns, command)
        if command:
            raise UsageError(f"job {ns.cmd}: unexpected arguments after --")
        if ns.cmd == "checkpoint":
            return _cmd_checkpoint(ns)
        return _cmd_progress(ns)
    except ShipitError as exc:
        sys.stderr.write(f"shipit: error: {_one_line(str(exc))}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("shipit: interrupted\n")
        return 130
