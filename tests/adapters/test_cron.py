"""cron: exact crontab lines, the block merge, and `shipit cron` against a real crontab on the
local host and over a real sshd."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from shipit.adapters.cron import CrontabError, block_lines, entry_line, merge_block
from shipit.config.model import HostSpec
from shipit.gate.url import open_store
from tests.adapters.conftest import crontab_text, set_crontab
from tests.harness.sshd import SHIPIT_COMMAND, ssh_section

USER_LINES = "MAILTO=ops@example.com\n# my own backup\n5 4 * * * /usr/local/bin/backup --all\n"
CRON = [
    {"name": "report", "schedule": "*/5 * * * *", "command": "python report.py --since 1h"},
    {"name": "stamp", "schedule": "@hourly", "command": "date +%s > stamp", "roles": ["worker"]},
]


def test_entry_line_runs_through_job_run_from_current_and_escapes_percent(project_factory):
    stage = project_factory(cron=CRON).stage()
    host = HostSpec(name="web1", hostname="web1")
    url = f"sqlite:{stage.deploy_to}/shared/shipit/jobs.db"
    current = f"{stage.deploy_to}/current"
    assert entry_line(stage, stage.cron[1], host, url) == (
        f"@hourly cd {current} && SHIPIT_GRACE={stage.jobs.grace:g} {SHIPIT_COMMAND} job run"
        f" --name stamp --store {url} --host web1"
        f" --cwd {current} -- sh -c 'date +\\%s > stamp'"
    )


def test_home_relative_deploy_to_stays_unquoted_for_the_shell(project_factory):
    p = project_factory(cron=CRON[:1])
    p.data["deploy_to"] = "~/apps/my app"
    p.write()
    stage = p.stage()
    line = entry_line(stage, stage.cron[0], HostSpec(name="h", hostname="h"), "file:~/apps/my app/shared/shipit")
    assert line.startswith("*/5 * * * * cd \"$HOME\"/'apps/my app/current' && ")
    assert "--store file:\"$HOME\"/'apps/my app/shared/shipit' " in line


def test_block_takes_entries_for_the_hosts_roles_only(project_factory):
    stage = project_factory(cron=CRON).stage()
    web = block_lines(stage, HostSpec(name="w", hostname="w", roles=("web",)), "sqlite:/x")
    worker = block_lines(stage, HostSpec(name="k", hostname="k", roles=("worker",)), "sqlite:/x")
    assert [line.split(" job run --name ")[1].split()[0] for line in web[2:-1]] == ["report"]
    assert [line.split(" job run --name ")[1].split()[0] for line in worker[2:-1]] == ["report", "stamp"]
    assert web[0] == "# BEGIN shipit app" and web[-1] == "# END shipit app"


def test_merge_replaces_the_block_in_place_and_keeps_other_lines():
    block = ["# BEGIN shipit app", "* * * * * a", "# END shipit app"]
    first = merge_block(USER_LINES, "app", block)
    assert first == USER_LINES + "\n".join(block) + "\n"
    with_tail = first + "0 0 * * * /bin/tail-job\n"
    new = ["# BEGIN shipit app", "* * * * * b", "# END shipit app"]
    assert merge_block(with_tail, "app", new) == USER_LINES + "\n".join(new) + "\n0 0 * * * /bin/tail-job\n"
    assert merge_block(merge_block(with_tail, "app", new), "app", new) == merge_block(with_tail, "app", new)
    assert merge_block(with_tail, "app", []) == USER_LINES + "0 0 * * * /bin/tail-job\n"
    # Another application's block on the same account is somebody else's.
    other = merge_block(first, "other", ["# BEGIN shipit other", "x", "# END shipit other"])
    assert merge_block(other, "app", []).startswith(USER_LINES + "# BEGIN shipit other\n")


def test_merge_refuses_a_block_whose_end_marker_was_deleted():
    with pytest.raises(CrontabError, match="unmatched"):
        merge_block(USER_LINES + "# BEGIN shipit app\n* * * * * a\n", "app", [])


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ({"name": "x", "schedule": "* * * *", "command": "true"}, "schedule"),
        ({"name": "x", "schedule": "* * * * *", "command": "true\n* * * * * rm -rf /"}, "command"),
        ({"name": "bad name", "schedule": "* * * * *", "command": "true"}, "name"),
    ],
)
def test_a_malformed_entry_is_a_one_line_config_error_naming_the_key(project_factory, entry, key):
    p = project_factory(cron=[entry])
    res = p.cli("cron", "install", "s")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert f"cron[0].{key}" in res.stderr and "shipit.yaml:" in res.stderr


@pytest.mark.usefixtures("crontab")
def test_install_show_remove_on_the_local_crontab(project_factory):
    set_crontab(USER_LINES)
    p = project_factory(cron=CRON, application="shop")
    res = p.cli("cron", "install", "s")
    assert res.returncode == 0, res.stderr
    installed = crontab_text()
    assert installed.startswith(USER_LINES)
    assert "# BEGIN shipit shop" in installed and " --name report " in installed
    assert " --name stamp " not in installed  # the local host has no worker role

    assert p.cli("cron", "install", "s").returncode == 0
    assert crontab_text() == installed  # idempotent: no duplicate block

    p.data["cron"] = [{**CRON[0], "schedule": "0 * * * *"}]
    p.write()
    show = p.cli("cron", "show", "s")
    assert show.returncode == 0 and "differs from shipit.yaml" in show.stdout
    assert p.cli("cron", "install", "s").returncode == 0
    now = crontab_text()
    assert now.count("# BEGIN shipit shop") == 1 and "\n0 * * * * cd " in now and "*/5" not in now
    assert "up to date" in p.cli("cron", "show", "s").stdout
    shown = json.loads(p.cli("cron", "show", "s", "--json").stdout)
    assert shown["local"]["installed"] == shown["local"]["wanted"] == now.splitlines()[3:]

    assert p.cli("cron", "remove", "s").returncode == 0
    assert crontab_text() == USER_LINES


@pytest.mark.usefixtures("crontab")
def test_install_leaves_the_crontab_alone_on_a_dry_run(project_factory):
    set_crontab(USER_LINES)
    p = project_factory(cron=CRON)
    res = p.cli("cron", "install", "s", "--dry-run")
    assert res.returncode == 0 and "would be installed" in res.stdout
    assert crontab_text() == USER_LINES


@pytest.mark.usefixtures("crontab")
def test_the_installed_line_runs_a_supervised_job_in_the_live_release(project_factory):
    """Run the installed line the way cron does (`%` unescaped, through sh): the job is a
    `shipit job run` run in the store, and it ran in the live release."""
    p = project_factory(cron=[{"name": "stamp", "schedule": "* * * * *", "command": "echo 100%% > stamp"}])
    result, _ = p.deploy()
    assert result.outcome == "success", result.error
    assert p.cli("cron", "install", "s").returncode == 0
    line = next(line for line in crontab_text().splitlines() if " --name stamp " in line)
    command = line.split(" ", 5)[5].replace("\\%", "%")
    res = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr
    release = (p.deploy_to / "current").resolve()
    assert (release / "stamp").read_text() == "100%%\n"
    with open_store(f"sqlite:{p.deploy_to}/shared/shipit/jobs.db") as store:
        assert [(r.job, r.state, r.cwd) for r in store.list_runs()] == [
            ("stamp", "finished", f"{p.deploy_to}/current")
        ]


@pytest.mark.usefixtures("crontab")
def test_install_over_ssh_writes_the_remote_users_crontab(project_factory, sshd_hosts, tmp_path: Path):
    host = sshd_hosts(1)[0]
    set_crontab(USER_LINES)
    p = project_factory(cron=CRON, hosts=[{"host": host.name, "roles": ["worker"]}], ssh=ssh_section([host]))
    res = p.cli("cron", "install", "s")
    assert res.returncode == 0, res.stderr
    assert f"{host.name}: 2 entries installed" in res.stdout
    # The sshd logs in as this same user, so its crontab is the one `crontab -l` reads here.
    text = crontab_text()
    assert text.startswith(USER_LINES)
    assert f"--host {shlex.quote(host.name)}" in text and " --name stamp " in text
    assert p.cli("cron", "remove", "s").returncode == 0
    assert crontab_text() == USER_LINES


def test_an_unreachable_host_is_one_line_and_exit_4(project_factory, sshd_hosts):
    host = sshd_hosts(1)[0]
    host.kill()
    p = project_factory(cron=CRON, hosts=[host.name], ssh=ssh_section([host]))
    res = p.cli("cron", "show", "s")
    assert res.returncode == 4, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("shipit: error: cron show: 1 of 1 hosts failed")



def test_the_worked_example_puts_invoices_on_the_worker_only():
    from shipit.config.loader import load_config

    example = Path(__file__).parents[2] / "examples" / "adapters" / "cron" / "shipit.yaml"
    stage = load_config(example).stage("prod")
    web, worker = stage.hosts
    names = [[line.split(" --name ")[1].split()[0] for line in block_lines(stage, h, "sqlite:/x")[2:-1]]
             for h in (web, worker)]
    assert names == [["report"], ["report", "invoices"]]
    invoices = block_lines(stage, worker, "sqlite:/x")[3]
    assert invoices.startswith(
        f"0 2 * * * cd /srv/shop/current && SHIPIT_GRACE={stage.jobs.grace:g}"
        " /srv/shop/venv/bin/shipit job run"
    )
    assert "+\\%Y-\\%m" in invoices
