"""shipit.yaml with hostile values where values go: loaded verbatim or refused in one line.

The config author's tests (tests/unit/test_config_property.py) throw random YAML at the loader;
these keep the file well-formed and put metacharacters, quotes, newlines and non-ASCII into the
names, paths, branches, linked paths and hooks that later reach shells. The committed corpus
(tests/fuzz/corpus/config/*.yaml, first line `# expect: CODE stage: NAME`) goes through the real
`python -m shipit config STAGE`, and nothing in it may run as shell (no `pwned` file appears).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from shipit.commands.release import facts_command, prepare_command
from shipit.config.loader import load_config
from shipit.errors import ConfigError
from tests.fuzz.profiles import count, fuzz

pytestmark = pytest.mark.timeout(300)

CORPUS = Path(__file__).parent / "corpus" / "config"
PAYLOADS = ["$(touch pwned)", "`touch pwned`", "; touch pwned", "a && b", "'", '"', "\\", "*",
            "?", "[a]", "~", "é∂", "🚀", " lead", "trail ", "a\nb", "a\tb", "-rf", "--x", "%s",
            "{x}", "\x1b[31m", "\u202e"]
# `$` is left out of generated text: `${VAR}` interpolation rewrites it (the corpus covers it).
text = st.one_of(
    # NEL and the Unicode line/paragraph separators are YAML line breaks: folded on reload.
    st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                   blacklist_characters="$\x00\x85\u2028\u2029"), max_size=16),
    st.sampled_from(PAYLOADS),
)
path_part = text.filter(lambda s: s.strip() not in ("", ".", "..") and "/" not in s)


def doc(app: str, stage: str, deploy_to: str, linked: list[str], branch: str,
        hook: str, var: str) -> dict[str, Any]:
    return {
        "application": app,
        "source": {"repo": "https://example.invalid/r.git", "branch": branch},
        "deploy_to": deploy_to,
        "linked_files": linked,
        "linked_dirs": [f"d{i}/{p}" for i, p in enumerate(linked)],
        "vars": {"v": var},
        "secrets": ["v"],
        "hooks": {"after_release": [{"run": hook}]},
        "stages": {stage: {"hosts": ["local"]}},
    }


@fuzz(1500)
@given(app=text, stage=text, deploy_to=st.lists(path_part, min_size=1, max_size=3),
       linked=st.lists(path_part, max_size=3), branch=text, hook=text, var=text)
@example(app="$(touch pwned)", stage="prod; rm -rf /", deploy_to=["a b", "'q'"],
         linked=["x;y"], branch="main`id`", hook="echo hi", var="s3cr3t")
def test_hostile_values_load_verbatim_or_fail_in_one_line(
    app: str, stage: str, deploy_to: list[str], linked: list[str], branch: str, hook: str,
    var: str,
) -> None:
    target = "/" + "/".join(deploy_to)
    data = doc(app, stage, target, linked, branch, hook, var)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shipit.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        try:
            resolved = load_config(path, environ={}).stage(stage)
        except ConfigError as exc:
            message = str(exc)
            assert message.strip() and "\n" not in message.strip(), repr(message)
            # A secret refused by a check must not be echoed back in the error.
            if len(var) > 3 and var.strip() not in (app, stage, branch, hook, target, *linked):
                assert var not in message
            count("config values")
            return
        assert os.listdir(tmp) == ["shipit.yaml"]  # loading writes nothing
    # Loaded: the values are the user's, untouched, and the command builders accept them.
    assert (resolved.application, resolved.name, resolved.deploy_to) == (app, stage, target)
    assert resolved.source.branch == branch and resolved.vars["v"] == var
    assert resolved.hooks["after_release"][0].run == hook
    try:
        facts_command(resolved.deploy_to, resolved.linked_files, resolved.linked_dirs)
        prepare_command(resolved.deploy_to, "20260101000000000000", "/tmp/a.tgz", branch,
                        resolved.linked_files, resolved.linked_dirs)
    except ConfigError as exc:
        assert "\n" not in str(exc).strip()
    count("config values")


def _expectation(path: Path) -> tuple[int, str]:
    first = path.read_bytes().split(b"\n", 1)[0].decode()
    m = re.fullmatch(r"# expect: (\d+) stage: (.*)", first)
    assert m, f"{path.name}: first line must be '# expect: CODE stage: NAME'"
    return int(m.group(1)), yaml.safe_load(m.group(2)) if m.group(2).startswith('"') else m.group(2)


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.yaml")), ids=lambda p: p.name)
def test_config_corpus_through_the_real_cli(path: Path, tmp_path: Path) -> None:
    code, stage = _expectation(path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPIT_")}
    proc = subprocess.run(
        [sys.executable, "-m", "shipit", "--config", str(path), "config", stage],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.returncode == code, proc.stderr
    if code:
        lines = proc.stderr.strip().split("\n")
        assert len(lines) == 1 and lines[0].startswith("shipit: error:"), proc.stderr
        assert proc.stdout == ""
    else:
        yaml.safe_load(proc.stdout)  # the printed config is YAML a user can read back
        assert "s3cr3t" not in proc.stdout  # vars named in secrets: are masked
    assert list(tmp_path.iterdir()) == []  # `config` writes nothing; nothing ran `touch pwned`
    count("config corpus (process)")
