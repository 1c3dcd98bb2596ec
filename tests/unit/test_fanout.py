"""Fan-out: capped parallelism, results in host order, every host finishes before an error."""

from __future__ import annotations

import signal
import sys
import threading

import pytest

from shipit.config.model import HostSpec
from shipit.errors import CommandFailed, HostError, ShipitError
from shipit.hosts.base import CommandResult, Host
from shipit.hosts.fanout import FanOutError, run_parallel


class FakeHost(Host):
    def run(self, command: str, **_: object) -> CommandResult:  # type: ignore[override]
        raise NotImplementedError

    def put(self, local_path: str, remote_path: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def hosts(n: int) -> list[Host]:
    return [FakeHost(HostSpec(name=f"web{i}", hostname=f"web{i}")) for i in range(n)]


def test_results_follow_host_order_not_finish_order() -> None:
    group = hosts(4)
    # Later hosts finish first: each waits for the one after it.
    done = {h.name: threading.Event() for h in group}

    def fn(host: Host) -> str:
        index = group.index(host)
        if index + 1 < len(group):
            assert done[group[index + 1].name].wait(5)
        done[host.name].set()
        return host.name.upper()

    result = run_parallel(group, fn, limit=4)
    assert list(result.items()) == [(h.name, h.name.upper()) for h in group]


def test_never_more_than_limit_at_once() -> None:
    group = hosts(9)
    lock = threading.Lock()
    active = 0
    peak = 0
    both_running = threading.Barrier(3, timeout=5)

    def fn(host: Host) -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        # The first three meet here, proving three ran together; the rest pass alone.
        if group.index(host) < 3:
            both_running.wait()
        with lock:
            active -= 1

    run_parallel(group, fn, limit=3)
    assert peak == 3


def test_a_failure_waits_for_every_host_and_keeps_their_results() -> None:
    group = hosts(3)
    slow_finished = threading.Event()

    def fn(host: Host) -> int:
        if host.name == "web0":
            raise HostError("[web0] cannot connect: connection refused")
        if host.name == "web2":
            # Still running when web0 has already failed.
            threading.Event().wait(0.05)
            slow_finished.set()
        return 1

    with pytest.raises(FanOutError) as info:
        run_parallel(group, fn, limit=3)
    assert slow_finished.is_set()
    error = info.value
    assert error.results == {"web1": 1, "web2": 1}
    assert list(error.errors) == ["web0"]
    assert error.exit_code == HostError.exit_code
    assert str(error) == "1 host failed: [web0] cannot connect: connection refused"
    assert isinstance(error, ShipitError)


def test_message_lists_every_failed_host_in_host_order_and_first_exit_code() -> None:
    group = hosts(3)

    def fn(host: Host) -> None:
        if host.name == "web1":
            raise CommandFailed("web1", "make", 2, "out\nlast line")
        if host.name == "web2":
            raise RuntimeError("disk full\nmore detail")

    with pytest.raises(FanOutError) as info:
        run_parallel(group, fn, limit=2)
    message = str(info.value)
    assert message == (
        "2 hosts failed: [web1] command failed with exit code 2: make; [web2] disk full"
    )
    assert "\n" not in message
    assert info.value.exit_code == CommandFailed.exit_code
    assert isinstance(info.value.errors["web2"], RuntimeError)


def test_single_host_has_the_same_contract() -> None:
    (host,) = hosts(1)
    assert run_parallel([host], lambda h: 5, limit=10) == {"web0": 5}

    def fail(h: Host) -> None:
        raise HostError("[web0] HOST KEY CHANGED ... refusing to connect")

    with pytest.raises(FanOutError) as info:
        run_parallel([host], fail, limit=10)
    assert info.value.exit_code == 4


def test_no_hosts_no_work() -> None:
    assert run_parallel([], lambda h: 1, limit=3) == {}


def test_interrupt_cancels_hosts_not_yet_started() -> None:
    group = hosts(5)
    started: list[str] = []
    release = threading.Event()

    def fn(host: Host) -> None:
        started.append(host.name)
        if host.name == "web0":
            # Ctrl-C arrives (a real SIGINT to the main thread) while the first host works
            # and the others are queued behind it.
            _wait_until_main_waits_on_futures()
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        release.wait(5)

    with pytest.raises(KeyboardInterrupt):
        run_parallel(group, fn, limit=1)
    release.set()
    # Let the worker drain whatever it still would run, then check nothing else started.
    for thread in threading.enumerate():
        if thread.name.startswith("host"):
            thread.join(5)
    assert started == ["web0"]


def _wait_until_main_waits_on_futures() -> None:
    main = threading.main_thread().ident
    for _ in range(500):
        frame = sys._current_frames().get(main)
        while frame is not None:
            code = frame.f_code
            if code.co_name == "wait" and code.co_filename.endswith("futures/_base.py"):
                return
            frame = frame.f_back
        threading.Event().wait(0.01)
    raise AssertionError("run_parallel never waited on its futures")
