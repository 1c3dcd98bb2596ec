"""When long listings (`shipit history`, `shipit jobs list`) go through a pager."""

from __future__ import annotations

import io

import pytest


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_pager_only_for_a_person_at_a_terminal_and_only_when_it_does_not_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from shipit.output.pager import wants_pager

    monkeypatch.setattr(sys, "stdout", Tty())
    monkeypatch.setattr(sys, "stdin", Tty())
    monkeypatch.setenv("LINES", "5")
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("CI", raising=False)
    assert wants_pager("row\n" * 5)  # taller than the screen less the prompt's row
    assert not wants_pager("row\n" * 4)
    monkeypatch.setenv("CI", "true")
    assert not wants_pager("row\n" * 50)
    monkeypatch.delenv("CI")
    monkeypatch.setenv("TERM", "dumb")
    assert not wants_pager("row\n" * 50)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # a pipe
    assert not wants_pager("row\n" * 50)
