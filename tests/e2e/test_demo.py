"""The README's first command: scripts/demo.sh on this machine, checked by its own verdict."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_tells_the_whole_story(tmp_path: Path) -> None:
    env = {**os.environ, "SHIPIT_DEMO_DIR": str(tmp_path / "demo"), "SHIPIT_PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], cwd=ROOT, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    # Each beat of the story, as a user watching the terminal sees it.
    for beat in ("gate closed (epoch 2)", "job report waiting: gate closed by",
                 "job report finished", "job crunch asked to stop", "job crunch restarted",
                 "crunch items processed: 80 (distinct 80, expected 80)",
                 "the report that arrived mid-deploy ran the new release: yes"):
        assert beat in out, beat
    demo = tmp_path / "demo"
    assert (demo / "current").is_symlink()
    assert len(list((demo / "releases").iterdir())) == 2
