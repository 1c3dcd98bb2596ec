"""shipit.yaml in, resolved StageConfig out: exact values for good files, exact one-line
messages for bad ones (tests/unit/data/config/bad/expected.txt lists file -> message)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shipit.config.hostspec import parse_host
from shipit.config.init import starter_text, write_starter
from shipit.config.loader import find_config, load_config
from shipit.config.model import HOOK_POINTS, HookSpec, HostSpec
from shipit.config.resolve import filter_hosts
from shipit.config.secrets import MASK, mask, masked_config, secret_values
from shipit.errors import ConfigError, UsageError

DATA = Path(__file__).parent / "data" / "config"
GOOD = DATA / "good"
BAD = DATA / "bad"
ENV = {"REGION": "eu-west", "API_TOKEN": "tok-123456", "GREETING": "hi", "EMPTY": ""}


def _expected() -> list[tuple[str, str]]:
    rows = (BAD / "expected.txt").read_text().splitlines()
    return [tuple(row.split("\t", 1)) for row in rows if row.strip()]  # type: ignore[misc]


@pytest.fixture
def full():
    return load_config(GOOD / "full.yaml", environ=ENV)


def test_prod_stage_resolves_hosts_roles_and_overrides(full) -> None:
    stage = full.stage("prod")
    assert stage.hosts == (
        HostSpec(
            name="web1",
            hostname="web1",
            user="deploy",
            port=22,
            roles=("app", "db"),
            vars={**stage.vars},
        ),
        HostSpec(
            name="ops@web2:2222",
            hostname="web2",
            user="ops",
            port=2222,
            roles=("app",),
            vars={**stage.vars},
        ),
        HostSpec(name="[::1]:2022", hostname="::1", user="deploy", port=2022, vars={**stage.vars}),
        HostSpec(
            name="postgres@db1.internal",
            hostname="db1.internal",
            user="postgres",
            port=22,
            roles=("db", "worker"),
            vars={**stage.vars, "tier": "host", "db_password": "s3cr3t-pw"},
        ),
    )
    assert stage.vars == {
        "region": "eu-west",
        "token": "tok-123456",
        "tier": "stage",
        "missing_default": "fallback",
        "empty_default": "was empty",
        "cost": "$5",
    }
    assert stage.deploy_to == "/srv/shop-prod"
    assert stage.source.branch == "release"
    assert stage.source.dir == str(GOOD / "app")
    assert (stage.keep_releases, stage.parallelism) == (10, 1)
    assert stage.linked_files == (".env",) and stage.linked_dirs == ("log",)
    assert stage.secrets == ("token", "db_password")
    assert stage.config_path == str(GOOD / "full.yaml")


def test_stage_ssh_and_jobs_override_only_the_fields_they_write(full) -> None:
    stage = full.stage("prod")
    assert (stage.ssh.user, stage.ssh.port, stage.ssh.connect_timeout) == ("deploy", 22, 5.0)
    jobs = stage.jobs
    assert (jobs.store, jobs.drain_timeout, jobs.grace, jobs.drain_policy) == (
        "file",
        20,
        2,
        "wait",
    )
    # jobs.path is a path on the hosts: relative means inside that stage's deploy_to.
    assert jobs.path == "/srv/shop-prod/state/jobs"
    # definitions merge by job name; a stage's definition replaces the top-level one whole.
    assert {name: d.model_dump() for name, d in jobs.definitions.items()} == {
        "crunch": {"after": [], "restart_command": None, "max_restarts": 2},
        "report": {"after": [], "restart_command": "systemctl start report2", "max_restarts": None},
        "cleanup": {"after": [], "restart_command": None, "max_restarts": 0},
    }


def test_hooks_run_top_level_steps_then_the_stage_steps(full) -> None:
    hooks = full.stage("prod").hooks
    assert set(hooks) == set(HOOK_POINTS)
    assert hooks["before_release"] == (HookSpec(local="echo top hi $HOME $HOME"),)
    assert hooks["after_release"] == (
        HookSpec(run="echo top", roles=["app"]),
        HookSpec(run="echo stage"),
    )
    assert hooks["before_rollback"] == (HookSpec(task="notify"),)
    assert hooks["after_pre_deploy"] == ()


def test_local_stage_keeps_top_level_values(full) -> None:
    stage = full.stage("demo")
    assert stage.hosts == (
        HostSpec(name="local", hostname="localhost", local=True, vars={**stage.vars}),
    )
    assert stage.deploy_to == "~/deploys/shop"
    assert stage.source.branch == "main"
    assert (stage.keep_releases, stage.parallelism, stage.ssh.port) == (4, 3, 2200)
    assert stage.jobs.drain_policy == "terminate"
    assert set(stage.jobs.definitions) == {"crunch", "report"}


def test_relative_paths_follow_the_config_file_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    stage = load_config(GOOD / "full.yaml", environ=ENV).stage("prod")
    assert stage.source.dir == str(GOOD / "app")


@pytest.mark.parametrize(("name", "message"), _expected(), ids=[n for n, _ in _expected()])
def test_bad_file_gives_exactly_one_line(
    name: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(BAD)
    text = (BAD / name).read_text()
    stage = next((ln[9:].strip() for ln in text.splitlines() if ln.startswith("# stage: ")), None)
    env = dict(ln[7:].strip().split("=", 1) for ln in text.splitlines() if ln.startswith("# env: "))
    with pytest.raises(ConfigError) as caught:
        config = load_config(name, environ=env)
        if stage:
            config.stage(stage)
    assert str(caught.value) == message
    assert caught.value.exit_code == 2


def test_every_bad_file_has_an_expected_message() -> None:
    assert {n for n, _ in _expected()} == {p.name for p in BAD.glob("*.yaml")}


def test_messages_name_the_file_as_the_user_gave_it() -> None:
    path = BAD / "wrong_type.yaml"
    with pytest.raises(ConfigError, match=rf"^{path}:5: keep_releases: expected an integer"):
        load_config(path)
    with pytest.raises(ConfigError, match=rf"^{path}:5: keep_releases: expected an integer"):
        load_config(str(path))


def test_unreadable_inputs_give_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^nope/shipit\.yaml: no such file$"):
        load_config("nope/shipit.yaml")
    with pytest.raises(ConfigError, match=r": is a directory, not a file$"):
        load_config(tmp_path)
    binary = tmp_path / "shipit.yaml"
    binary.write_bytes(b"application: x\nsource: \xff\xfe\n")
    with pytest.raises(ConfigError) as caught:
        load_config(binary)
    assert str(caught.value) == f"{binary}:2: not valid UTF-8 text"


def test_environment_comes_from_os_environ_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIPIT_TEST_DEPLOY_TO", "/srv/from-env")
    path = tmp_path / "shipit.yaml"
    path.write_text(
        "application: a\nsource: {dir: .}\ndeploy_to: ${SHIPIT_TEST_DEPLOY_TO}\n"
        "stages: {s: {hosts: [local]}}\n"
    )
    assert load_config(path).stage("s").deploy_to == "/srv/from-env"


def test_find_config_walks_up_and_honours_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "shipit.yaml").write_text("application: a\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_config(deep, environ={}) == tmp_path / "shipit.yaml"
    monkeypatch.chdir(tmp_path)
    assert find_config(environ={}) == Path("shipit.yaml")
    monkeypatch.chdir(deep)
    assert find_config(environ={}) == tmp_path / "shipit.yaml"
    assert find_config(environ={"SHIPIT_CONFIG": "other.yaml"}) == Path("other.yaml")


def test_find_config_without_a_file_says_run_init(tmp_path: Path) -> None:
    lonely = tmp_path / "x"
    lonely.mkdir()
    # tmp_path's parents (/tmp, /) hold no shipit.yaml on a test machine.
    with pytest.raises(ConfigError) as caught:
        find_config(lonely, environ={})
    assert (
        str(caught.value) == f"no shipit.yaml found in {lonely} or its parents; run `shipit init`"
    )


@pytest.mark.parametrize(
    ("text", "name", "hostname", "user", "port"),
    [
        ("web1", "web1", "web1", None, None),
        ("deploy@web1", "deploy@web1", "web1", "deploy", None),
        ("web2:2222", "web2:2222", "web2", None, 2222),
        ("deploy@10.0.0.5:22", "deploy@10.0.0.5:22", "10.0.0.5", "deploy", 22),
        ("[::1]:2222", "[::1]:2222", "::1", None, 2222),
        ("user@[::1]:2222", "user@[::1]:2222", "::1", "user", 2222),
        ("fe80::1", "fe80::1", "fe80::1", None, None),
    ],
)
def test_short_host_forms(
    text: str, name: str, hostname: str, user: str | None, port: int | None
) -> None:
    addr = parse_host(text)
    assert (addr.name, addr.hostname, addr.user, addr.port, addr.local) == (
        name,
        hostname,
        user,
        port,
        False,
    )


def test_filter_hosts_by_name_hostname_and_role(full) -> None:
    stage = full.stage("prod")
    names = lambda s: [h.name for h in s.hosts]  # noqa: E731
    assert names(filter_hosts(stage, ["web1", "web2"], None)) == ["web1", "ops@web2:2222"]
    assert names(filter_hosts(stage, None, ["db"])) == ["web1", "postgres@db1.internal"]
    assert names(filter_hosts(stage, ["db1.internal", "web2"], ["db"])) == ["postgres@db1.internal"]
    assert filter_hosts(stage, None, None) == stage


def test_filter_hosts_refuses_unknown_names_and_empty_results(full) -> None:
    stage = full.stage("prod")
    with pytest.raises(UsageError) as caught:
        filter_hosts(stage, ["web9"], None)
    assert str(caught.value) == (
        "stage 'prod' has no host 'web9' (hosts: web1, ops@web2:2222, [::1]:2022, postgres@db1.internal)"
    )
    with pytest.raises(UsageError) as caught:
        filter_hosts(stage, None, ["cache"])
    assert str(caught.value) == "stage 'prod' has no role 'cache' (roles: app, db, worker)"
    with pytest.raises(UsageError) as caught:
        filter_hosts(stage, ["web2"], ["worker"])
    assert str(caught.value) == "no host of stage 'prod' matches --hosts web2 --roles worker"


def test_secret_values_include_host_vars_and_the_dsn_password(full) -> None:
    stage = full.stage("prod")
    env = {"SHIPIT_DSN": "postgresql://shipit:p%40ss@db/jobs"}
    assert secret_values(stage, environ=env) == [
        "postgresql://shipit:p%40ss@db/jobs",
        "tok-123456",
        "s3cr3t-pw",
        "p@ss",
    ]
    assert secret_values(stage, environ={"SHIPIT_DSN": "host=db password='x y' user=a"}) == [
        "host=db password='x y' user=a",
        "tok-123456",
        "s3cr3t-pw",
        "x y",
    ]


def test_mask_replaces_every_occurrence() -> None:
    assert mask("a tok-1 b tok-1tok-12", ["tok-1", "tok-12", ""]) == (f"a {MASK} b {MASK}{MASK}")


def test_masked_config_hides_secrets_everywhere(tmp_path: Path) -> None:
    path = tmp_path / "shipit.yaml"
    path.write_text(
        "application: a\nsource: {dir: .}\ndeploy_to: /srv/a\n"
        "vars: {token: abc123secret, pin: 424242, url: 'https://x:abc123secret@h'}\n"
        "secrets: [token, pin]\n"
        "hooks: {after_release: [{run: 'curl -H abc123secret https://h'}]}\n"
        "stages: {s: {hosts: [local], vars: {note: 'pin 424242'}}}\n"
    )
    shown = masked_config(load_config(path).stage("s"), environ={})
    assert shown["vars"] == {
        "token": MASK,
        "pin": MASK,
        "url": f"https://x:{MASK}@h",
        "note": f"pin {MASK}",
    }
    assert shown["hooks"]["after_release"][0]["run"] == f"curl -H {MASK} https://h"
    assert shown["hosts"][0]["vars"]["token"] == MASK
    assert "abc123secret" not in repr(shown) and "424242" not in repr(shown)


def test_starter_template_loads_and_resolves_every_stage(tmp_path: Path) -> None:
    path = write_starter(tmp_path / "shipit.yaml")
    config = load_config(path, environ={})
    assert list(config.stages) == ["local", "prod"]
    local = config.stage("local")
    assert [h.name for h in local.hosts] == ["local"] and local.jobs.store == "file"
    prod = config.stage("prod")
    assert [(h.name, h.roles) for h in prod.hosts] == [
        ("deploy@web1.example.com", ("app", "db")),
        ("web2.example.com:2222", ("app",)),
    ]
    assert prod.jobs.definitions["report"].after == ["crunch"]
    assert {k for k, v in prod.hooks.items() if v} >= {"before_release", "after_release"}
    hook_kinds = {
        k
        for steps in prod.hooks.values()
        for s in steps
        for k in ("run", "local", "task")
        if getattr(s, k)
    }
    assert hook_kinds == {"run", "local", "task"}
    assert prod.secrets == ("db_password",)
    assert "change-me" not in repr(masked_config(prod, environ={}))


def test_write_starter_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "shipit.yaml"
    path.write_text("mine\n")
    with pytest.raises(ConfigError) as caught:
        write_starter(path)
    assert str(caught.value) == f"{path} already exists; use --force to overwrite it"
    assert path.read_text() == "mine\n"
    write_starter(path, force=True)
    assert path.read_text() == starter_text()


def test_anchors_in_x_keys_and_merge_keys_are_usable(tmp_path: Path) -> None:
    path = tmp_path / "shipit.yaml"
    path.write_text(
        "x-host: &h {user: deploy, roles: [app]}\n"
        "application: a\nsource: {dir: .}\ndeploy_to: /srv/a\n"
        "stages:\n  s:\n    hosts:\n      - {<<: *h, host: web1}\n      - {<<: *h, host: web2, user: ops}\n"
    )
    hosts = load_config(path).stage("s").hosts
    assert [(h.name, h.roles) for h in hosts] == [("deploy@web1", ("app",)), ("ops@web2", ("app",))]


def test_notify_targets_are_inherited_or_replaced_and_never_shown(tmp_path: Path) -> None:
    path = tmp_path / "shipit.yaml"
    path.write_text(
        "application: a\nsource: {dir: .}\ndeploy_to: /srv/a\n"
        "notify:\n"
        "  - webhook: https://hooks.example.com/services/T0/B0/XYZ?sig=abc\n"
        "    headers: {Authorization: Bearer t0ken, Content-Type: application/json}\n"
        "stages:\n"
        "  prod: {hosts: [local]}\n"
        "  quiet: {hosts: [local], notify: []}\n"
        "  chat: {hosts: [local], notify: [{apprise: 'slack://TokA/TokB/TokC'}]}\n"
    )
    config = load_config(path)
    assert config.stage("quiet").notify == ()
    prod = config.stage("prod")
    assert [t.webhook for t in prod.notify] == [
        "https://hooks.example.com/services/T0/B0/XYZ?sig=abc"
    ]
    shown = masked_config(prod, environ={})["notify"][0]
    assert shown["webhook"] == f"https://hooks.example.com{MASK}"
    assert shown["headers"] == {"Authorization": MASK, "Content-Type": "application/json"}
    assert {"Bearer t0ken", "t0ken"} <= set(secret_values(prod, environ={}))
    # The path and query carry the tokens; scheme and host say which target it is.
    assert (
        mask(
            "POST https://hooks.example.com/services/T0/B0/XYZ?sig=abc failed; path /services/T0/B0/XYZ",
            secret_values(prod, environ={}),
        )
        == f"POST https://hooks.example.com{MASK} failed; path {MASK}"
    )
    chat = masked_config(config.stage("chat"), environ={})
    assert chat["notify"][0]["apprise"] == f"slack://{MASK}"
    assert "TokA" not in repr(chat)


@pytest.mark.parametrize(
    ("url", "keep_host", "shown", "secrets"),
    [
        ("ftp://x", True, "ftp://x", set()),
        ("https://ci.example.com", True, "https://ci.example.com", set()),
        ("https://ci.example.com/", True, "https://ci.example.com/", set()),
        (
            "https://hooks.example.com/services/T0/B0/XYZ",
            True,
            f"https://hooks.example.com{MASK}",
            {"/services/T0/B0/XYZ"},
        ),
        (
            "https://bot:p%40ss@ci.example.com:8443/hook?token=abcd&page=2",
            True,
            f"https://{MASK}@ci.example.com:8443{MASK}",
            {"bot:p%40ss", "p%40ss", "p@ss", "/hook?token=abcd&page=2", "/hook",
             "token=abcd&page=2", "abcd"},
        ),
        ("https://TOKEN123@ci.example.com", True, f"https://{MASK}@ci.example.com", {"TOKEN123"}),
        # Short pieces are not masked alone (they would blank out text everywhere).
        ("https://u:pw@h/x?t=1", True, f"https://{MASK}@h{MASK}", {"u:pw", "pw", "/x?t=1"}),
        ("slack://TokA/TokB/TokC", False, f"slack://{MASK}", {"TokA/TokB/TokC", "/TokB/TokC"}),
        ("hooks.example.com/T0/B0", True, MASK, {"hooks.example.com/T0/B0"}),
        ("https://h:99999/x", True, MASK, {"https://h:99999/x"}),
    ],
)
def test_only_the_credential_parts_of_notify_urls_are_secret(
    url: str, keep_host: bool, shown: str, secrets: set[str]
) -> None:
    from shipit.config.secrets import shown_url, url_secrets

    assert url_secrets(url, keep_host=keep_host) == secrets
    assert shown_url(url, keep_host=keep_host) == shown


def test_a_notify_url_without_credentials_is_shown_whole(tmp_path: Path) -> None:
    path = tmp_path / "shipit.yaml"
    path.write_text(
        "application: a\nsource: {dir: .}\ndeploy_to: /srv/a\n"
        "notify: [{webhook: 'https://ci.example.com'}]\nstages: {s: {hosts: [local]}}\n"
    )
    stage = load_config(path).stage("s")
    assert secret_values(stage, environ={}) == []
    assert masked_config(stage, environ={})["notify"][0]["webhook"] == "https://ci.example.com"


def test_postgres_store_loads_when_its_dsn_variable_is_set(tmp_path: Path) -> None:
    path = tmp_path / "shipit.yaml"
    path.write_text(
        "application: a\nsource: {dir: .}\ndeploy_to: /srv/a\n"
        "jobs: {store: postgres, dsn_env: JOBS_DSN}\nstages: {s: {hosts: [local]}}\n"
    )
    stage = load_config(path, environ={"JOBS_DSN": "postgresql://db/jobs"}).stage("s")
    assert (stage.jobs.store, stage.jobs.dsn_env) == ("postgres", "JOBS_DSN")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"JOBS_DSN": ""}).stage("s")
    assert str(caught.value) == (
        f"{path}:4: jobs.dsn_env: the postgres job store needs its DSN in the environment"
        " variable JOBS_DSN (jobs.dsn_env), which is not set"
    )


def test_mask_catches_url_encoded_secrets() -> None:
    assert mask("https://u:p%40ss%2Fw@h/", ["p@ss/w"]) == f"https://u:{MASK}@h/"


def test_home_is_expanded_here_for_the_source_but_left_to_the_host_for_jobs_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "shipit.yaml"
    path.write_text(
        "application: a\nsource: {dir: ~/code}\ndeploy_to: ~/apps/a/\n"
        "jobs: {path: ~/state}\nstages: {s: {hosts: [local]}}\n"
    )
    stage = load_config(path).stage("s")
    assert (stage.source.dir, stage.jobs.path, stage.deploy_to) == (
        str(tmp_path / "code"),
        "~/state",
        "~/apps/a",
    )


def test_config_built_in_code_reports_without_line_numbers() -> None:
    from shipit.config.model import Config

    config = Config.model_validate(
        {
            "application": "a",
            "source": {"dir": "/src"},
            "deploy_to": "relative",
            "stages": {"s": {"hosts": ["local"]}},
        }
    )
    with pytest.raises(ConfigError) as caught:
        config.stage("s")
    assert str(caught.value) == (
        "shipit.yaml: deploy_to: must be an absolute path (or start with ~/), got 'relative'"
    )


@pytest.mark.parametrize(
    "text",
    ["a: " + "[" * 5000 + "]" * 5000, "\n".join(" " * i + f"k{i}:" for i in range(3000))],
    ids=["flow", "block"],
)
def test_absurdly_nested_documents_are_refused_in_one_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "shipit.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: the document is nested too deeply"
