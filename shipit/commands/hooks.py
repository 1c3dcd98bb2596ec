"""Builders for `run:` hooks executed on hosts."""

from __future__ import annotations

from collections.abc import Mapping
from shlex import quote as q

from shipit.commands.release import shell_path


def hook_command(command: str, env: Mapping[str, str], deploy_to: str, release_path: str | None) -> str:
    """Run the user's hook text with the SHIPIT_* environment.

    The hook text is itself shell (the user wrote it), so it is handed to `sh -c` as ONE quoted
    argument; the values in `env` are data and are quoted one by one. The working directory is
    the release when it exists on the host, else deploy_to (before the release is prepared).
    """
    # Before the first deploy created deploy_to, the hook runs in the login directory.
    dirs = [release_path, deploy_to] if release_path else [deploy_to]
    cd = "{ " + " || ".join(f"cd {shell_path(x)}" for x in dirs) + " || :; } 2>/dev/null"
    assigns = " ".join(f"{k}={q(str(v))}" for k, v in sorted(env.items()))
    return f"{cd} && env {assigns} sh -c {q(command)}"
