"""A `python -m shipit` that has already imported shipit, and forks one child per command.

A trial starts 4–6 shipit CLI processes (deploys, `jobs reconcile`); each used to pay ~1 s of
interpreter start and imports (click, rich, pydantic, fabric, paramiko) before it did anything,
more on a loaded machine. The zygote pays that once per run: it imports `shipit.cli`, then for
each request forks a child that becomes the command. The child is a real, separate process:
its own pid and session (setsid), its stdin/stdout/stderr the requester's (passed as file
descriptors), its own cwd and environment, `sys.argv` as `python -m shipit` sets it, and it runs
`shipit.main.main` and then exits through the normal interpreter shutdown (atexit, non-daemon
threads joined, streams flushed). SIGKILL / SIGTERM reach it exactly as they reach
`python -m shipit`: the zygote installs no signal handler and runs no thread, so a child starts
with the dispositions of a fresh interpreter.

Protocol (a SOCK_SEQPACKET unix socket, one connection per command): the client sends one JSON
message {"argv", "env", "cwd"} with three fds (stdin, stdout, stderr); the zygote answers
{"pid": N} and, when the child ends, {"returncode": R} (negative: killed by that signal, as in
subprocess). The zygote exits when its stdin reaches EOF (its owner is gone).

`Zygote.popen()` returns a `Child`, which has the part of `subprocess.Popen` the trials use.
`SHIPIT_CHAOS_ZYGOTE=0` turns it off (plain subprocesses, as before).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import importlib.util
import io
import json
import os
import pkgutil
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

MAX_MSG = 1 << 20


# -- the zygote process ---------------------------------------------------------------------------
def _serve(path: str) -> dict[str, Any] | None:
    """Accept requests until stdin closes. Returns (in the child only) the request to run."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    waiting: dict[int, socket.socket] = {}
    while True:
        ready, _, _ = select.select([listener, sys.stdin], [], [], 0.02 if waiting else 1.0)
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 4096):
            for conn in waiting.values():
                conn.close()
            return None
        if listener in ready:
            conn, _ = listener.accept()
            try:
                msg, fds, _flags, _addr = socket.recv_fds(conn, MAX_MSG, 3)
                req = json.loads(msg)
            except (OSError, ValueError):
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                listener.close()
                for other in waiting.values():
                    other.close()
                conn.close()
                _become_child(req, fds)
                return req
            for fd in fds:
                os.close(fd)
            with contextlib.suppress(OSError):
                conn.send(json.dumps({"pid": pid}).encode())
            waiting[pid] = conn
        while waiting:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = waiting.pop(pid, None)
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.send(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}).encode())
                conn.close()


def _become_child(req: dict[str, Any], fds: list[int]) -> None:
    os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in set(fds):
        if fd > 2:
            os.close(fd)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    # The streams a fresh interpreter would build on these fds (buffering follows isatty).
    encoding = "utf-8"
    sys.stdin = sys.__stdin__ = open(0, encoding=encoding, closefd=False)  # noqa: SIM115
    sys.stdout = sys.__stdout__ = open(1, "w", encoding=encoding, closefd=False)  # noqa: SIM115
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        open(2, "wb", buffering=0, closefd=False), encoding=encoding,  # noqa: SIM115
        errors="backslashreplace", line_buffering=True, write_through=True,
    )
    # What `python -m shipit` puts in argv[0] (the module is not imported: it runs main()).
    spec = importlib.util.find_spec("shipit.__main__")
    sys.argv = [spec.origin if spec and spec.origin else "shipit", *req["argv"]]


def _zygote_main(path: str) -> None:
    # Everything a deploy may import, before the first fork (the point of the zygote).
    import shipit

    for mod in pkgutil.walk_packages(shipit.__path__, "shipit."):
        if mod.name != "shipit.__main__":
            with contextlib.suppress(Exception):  # optional extras (redis, celery) may be absent
                importlib.import_module(mod.name)
    for name in ("tarfile", "grp", "pwd"):
        importlib.import_module(name)

    # Keep the collector off the imported objects: in a child, a collection (or the module
    # teardown at exit) writing to every object would copy every page of the heap (~0.3 s).
    gc.freeze()
    req = _serve(path)
    if req is not None:
        _run_child(req["argv"])


def _run_child(argv: list[str]) -> NoReturn:
    """Run the command, then exit as the interpreter does (non-daemon threads joined, atexit
    handlers run, streams flushed, the same exit status) minus the module teardown, which has
    nothing to do in a process about to end but would copy the heap shared with the zygote."""
    from shipit.main import main

    code = 0
    try:
        main(argv)
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        _finish()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 130
    except BaseException:  # noqa: BLE001 - reported like the interpreter reports it
        traceback.print_exc()
        code = 1
    _finish()
    os._exit(code & 0xFF)


def _finish() -> None:
    with contextlib.suppress(Exception):
        threading._shutdown()  # type: ignore[attr-defined]  # what Py_Finalize does first
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


# -- the client side ------------------------------------------------------------------------------
class Child:
    """The part of subprocess.Popen the trials use, for a command forked by the zygote."""

    def __init__(self, conn: socket.socket, pid: int, stdout: IO[str] | None) -> None:
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None
        self._conn = conn
        self._done = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        try:
            msg = self._conn.recv(MAX_MSG)
            self.returncode = int(json.loads(msg)["returncode"]) if msg else -int(signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            self.returncode = -int(signal.SIGKILL)
        finally:
            self._conn.close()
            self._done.set()

    def poll(self) -> int | None:
        return self.returncode if self._done.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(["shipit"], timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if not self._done.is_set():
            os.kill(self.pid, sig)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.send_signal(signal.SIGKILL)


class Zygote:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.dir = tempfile.mkdtemp(prefix="shipit-zygote-")
        self.path = os.path.join(self.dir, "sock")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.zygote", self.path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=dict(env),
            cwd=str(Path(__file__).resolve().parents[2]), text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.close()
            raise RuntimeError(f"the chaos zygote did not start: {line!r}")

    def popen(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str | None = None,
              stdout: int | IO[Any] | None = None, stderr: int | IO[Any] | None = None) -> Child:
        """Start `python -m shipit ARGV`. stdout/stderr: a file, subprocess.PIPE (stdout only:
        Child.stdout is then a text stream), or None (/dev/null). stdin is /dev/null."""
        close: list[int] = []
        reader: IO[str] | None = None

        def fd_for(target: int | IO[Any] | None, pipe_ok: bool) -> int:
            nonlocal reader
            if target is None:
                fd = os.open(os.devnull, os.O_WRONLY)
                close.append(fd)
                return fd
            if target == subprocess.PIPE:
                assert pipe_ok, "only stdout can be a pipe"
                r, w = os.pipe()
                reader = open(r, encoding="utf-8", errors="replace")  # noqa: SIM115
                close.append(w)
                return w
            assert not isinstance(target, int)
            return target.fileno()

        stdin = os.open(os.devnull, os.O_RDONLY)
        close.append(stdin)
        fds = [stdin, fd_for(stdout, True), fd_for(stderr, False)]
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            conn.connect(self.path)
            msg = json.dumps({"argv": list(argv), "env": dict(env), "cwd": cwd or os.getcwd()}).encode()
            socket.send_fds(conn, [msg], fds)
            reply = conn.recv(MAX_MSG)
            if not reply:
                raise RuntimeError("the chaos zygote went away")
            pid = int(json.loads(reply)["pid"])
        except BaseException:
            conn.close()
            if reader is not None:
                reader.close()
            raise
        finally:
            for fd in close:
                os.close(fd)
        return Child(conn, pid, reader)

    def run(self, argv: Sequence[str], *, env: Mapping[str, str], timeout: float,
            cwd: str | None = None) -> subprocess.CompletedProcess[str]:
        """subprocess.run(capture_output=True, text=True) for a shipit command."""
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            child = self.popen(argv, env=env, cwd=cwd, stdout=out, stderr=err)
            try:
                code = child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(10)
                raise
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(["shipit", *argv], code, out.read(), err.read())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.rmdir(self.dir)


def wanted() -> bool:
    return os.environ.get("SHIPIT_CHAOS_ZYGOTE", "1") != "0"


if __name__ == "__main__":
    _zygote_main(sys.argv[1])
