"""Which release `shipit rollback` goes back to, from the facts every host reported."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from shipit.errors import DeployFailed, UsageError
from shipit.phases.rollback import choose_rollback_target


def rel(name: str, complete: bool = True, bad: bool = False) -> dict[str, object]:
    return {"name": name, "complete": complete, "bad": bad, "revision": "abc" if complete else None}


def ctx(**facts: dict[str, object]) -> SimpleNamespace:
    return SimpleNamespace(facts=facts, stage=SimpleNamespace(deploy_to="/srv/app"))


def test_default_target_is_the_newest_good_release_older_than_current() -> None:
    releases = [rel("R1"), rel("R2", bad=True), rel("R3", complete=False), rel("R4")]
    c = ctx(web1={"current": "R4", "releases": releases}, web2={"current": "R4", "releases": releases})
    assert choose_rollback_target(c, None) == "R1"


def test_a_missing_or_incomplete_to_is_a_usage_error_listing_the_releases() -> None:
    c = ctx(web1={"current": "R2", "releases": [rel("R1"), rel("R2"), rel("R3", complete=False)]})
    with pytest.raises(UsageError) as caught:
        choose_rollback_target(c, "nosuch")
    assert str(caught.value) == "[web1] release nosuch does not exist in /srv/app/releases (releases: R1, R2)"
    assert caught.value.exit_code == 2
    with pytest.raises(UsageError) as caught:
        choose_rollback_target(c, "R3")
    assert str(caught.value) == (
        "[web1] release R3 is incomplete (no REVISION: it never finished) in /srv/app/releases"
        " (releases: R1, R2)"
    )
    empty = ctx(web1={"current": None, "releases": []})
    with pytest.raises(UsageError, match=r"\(releases: none\)$"):
        choose_rollback_target(empty, "R1")


def test_hosts_that_disagree_fail_the_rollback() -> None:
    c = ctx(web1={"current": "R3", "releases": [rel("R1"), rel("R3")]},
            web2={"current": "R3", "releases": [rel("R2"), rel("R3")]})
    with pytest.raises(DeployFailed, match="hosts disagree"):
        choose_rollback_target(c, None)
    assert choose_rollback_target(c, "R3") == "R3"
