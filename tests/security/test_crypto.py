"""Encryption at rest on every backend: what is on disk / in the rows, wrong and missing keys,
plain rows from before a key existed, rotation."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipit.crypto import ENV_KEY_FILE, ENV_KEYS, PREFIX, StateKeyError, generate_key
from shipit.gate.base import CHECKPOINTED, GIVEN_UP, ClaimSpec, Run, Store
from tests.gate.conftest import BACKENDS, StoreFactory, make_factory

SECRET = "hunter2-very-secret"


@pytest.fixture(params=BACKENDS)
def factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    f = make_factory(request.param, request, tmp_path)
    yield f
    f.close()


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    monkeypatch.delenv(ENV_KEYS, raising=False)
    monkeypatch.delenv(ENV_KEY_FILE, raising=False)
    yield [generate_key(), generate_key()]


def use(monkeypatch: pytest.MonkeyPatch, *keys: str) -> None:
    if keys:
        monkeypatch.setenv(ENV_KEYS, ",".join(keys))
    else:
        monkeypatch.delenv(ENV_KEYS, raising=False)


def saved_run(store: Store) -> Run:
    run = store.claim(ClaimSpec(job="etl", host="h1", command=("etl",), env={"API_TOKEN": SECRET}))
    assert isinstance(run, Run)
    store.save_checkpoint(run.id, {"cursor": 41, "password": SECRET})
    store.finish(run.id, CHECKPOINTED)
    return run


def raw(factory: StoreFactory) -> bytes:
    """Everything the store holds, as bytes: files on disk, or the run rows as text."""
    if factory.root is not None:
        return b"".join(p.read_bytes() for p in factory.root.rglob("*") if p.is_file())
    import psycopg

    with psycopg.connect(factory.url) as conn:
        rows = conn.execute("SELECT env, checkpoint FROM shipit_runs").fetchall()
    return repr(rows).encode()


def test_state_and_env_are_encrypted_at_rest_and_read_back(
    factory: StoreFactory, keys: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    use(monkeypatch, keys[0])
    store = factory()
    run = saved_run(store)
    got = factory().get_run(run.id)
    assert got.sealed  # read back still encrypted: decrypted only when needed
    opened = got.opened()
    assert opened.checkpoint == {"cursor": 41, "password": SECRET}
    assert opened.env == {"API_TOKEN": SECRET}
    data = raw(factory)
    assert SECRET.encode() not in data
    assert b"API_TOKEN" not in data  # names of the env are not given away either
    assert PREFIX.encode() in data


def test_without_a_key_state_is_stored_plain(factory: StoreFactory, keys: list[str]) -> None:
    # The control for the test above: the raw read does see plaintext when nothing encrypts.
    saved_run(factory())
    assert SECRET.encode() in raw(factory)


def test_rows_written_before_a_key_existed_still_read(
    factory: StoreFactory, keys: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    old = saved_run(factory())
    use(monkeypatch, keys[0])
    store = factory()
    assert store.get_run(old.id).checkpoint == {"cursor": 41, "password": SECRET}
    new = saved_run(store)
    assert store.get_run(new.id).opened().env == {"API_TOKEN": SECRET}
    assert {r.id for r in store.list_runs()} == {old.id, new.id}


@pytest.mark.parametrize("later", ["wrong", "missing"])
def test_wrong_or_missing_key_blocks_only_the_state_and_the_state_survives(
    factory: StoreFactory, keys: list[str], monkeypatch: pytest.MonkeyPatch, later: str
) -> None:
    use(monkeypatch, keys[0])
    run = saved_run(factory())
    before = raw(factory)
    if later == "wrong":
        use(monkeypatch, keys[1])
    else:
        use(monkeypatch)
    store = factory()
    # Listing, reading and acting on runs never needs the key...
    [listed] = store.list_runs()
    got = store.get_run(run.id)
    assert listed.id == got.id == run.id and got.state == CHECKPOINTED and got.sealed
    assert store.restart_claims([run.id]) == {} and store.claim_restart(run.id, 0)
    # ...only decrypting the state does: one line naming the run, exit 5, the key never shown.
    with pytest.raises(StateKeyError) as info:
        got.opened()
    assert info.value.exit_code == 5
    msg = str(info.value)
    assert run.id in msg and "\n" not in msg
    assert ("not among" in msg) if later == "wrong" else ("no key is configured" in msg)
    assert keys[0] not in msg and keys[1] not in msg
    # A run rewritten without the key (given up by hand, here) keeps its sealed state as it was.
    store.finish(run.id, GIVEN_UP, message="forgotten")
    assert store.get_run(run.id).checkpoint == got.checkpoint
    if factory.kind == "postgres":
        assert raw(factory) == before
    use(monkeypatch, keys[0])
    back = factory().get_run(run.id)
    assert back.state == GIVEN_UP
    assert back.opened().checkpoint == {"cursor": 41, "password": SECRET}


def test_rotation_moves_every_run_to_the_newest_key(
    factory: StoreFactory, keys: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = saved_run(factory())
    use(monkeypatch, keys[0])
    old = saved_run(factory())
    use(monkeypatch, keys[1], keys[0])  # new key first, old one still readable
    assert factory().reencrypt_state() == 2  # type: ignore[attr-defined]
    use(monkeypatch, keys[1])  # the old key is gone: everything must read with the new one
    store = factory()
    for r in (plain, old):
        got = store.get_run(r.id).opened()
        assert got.checkpoint == {"cursor": 41, "password": SECRET}
        assert got.env == {"API_TOKEN": SECRET}
    assert SECRET.encode() not in raw(factory)
    use(monkeypatch, keys[0])
    with pytest.raises(StateKeyError):
        factory().get_run(old.id).opened()


def test_rotation_without_the_old_key_changes_nothing(
    factory: StoreFactory, keys: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = saved_run(factory())
    use(monkeypatch, keys[0])
    old = saved_run(factory())
    use(monkeypatch, keys[1])  # forgot to keep the old key
    with pytest.raises(StateKeyError):
        factory().reencrypt_state()  # type: ignore[attr-defined]
    use(monkeypatch)
    # The plain run was not half-rotated to the new key: it still reads with no key at all.
    assert factory().get_run(plain.id).env == {"API_TOKEN": SECRET}
    use(monkeypatch, keys[0])
    assert factory().get_run(old.id).opened().env == {"API_TOKEN": SECRET}


def test_key_file_must_be_private(
    tmp_path: Path, keys: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.keys"
    path.write_text(f"# newest first\n{keys[0]}\n{keys[1]}\n")
    os.chmod(path, 0o644)
    monkeypatch.setenv(ENV_KEY_FILE, str(path))
    store = make_factory("sqlite", None, tmp_path)()  # type: ignore[arg-type]
    with pytest.raises(StateKeyError, match=r"readable by others .*chmod 600"):
        saved_run(store)
    os.chmod(path, 0o600)
    run = saved_run(store)
    assert store.get_run(run.id).opened().checkpoint["cursor"] == 41
    store.close()


def test_a_malformed_key_is_named_by_position_never_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keys: list[str]
) -> None:
    monkeypatch.setenv(ENV_KEYS, f"{keys[0]},not-a-key-but-secret")
    store = make_factory("file", None, tmp_path)()  # type: ignore[arg-type]
    with pytest.raises(StateKeyError) as info:
        saved_run(store)
    assert "#2" in str(info.value) and "not-a-key-but-secret" not in str(info.value)
    store.close()
