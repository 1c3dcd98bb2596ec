"""The `shipit` entry point (console script and `python -m shipit`).

`shipit job ...` and `shipit agent ...` run on the hosts, often once per job start, so they take a
lean path that never imports click, rich, pydantic, fabric or paramiko: the interpreter start-up is
already most of what a job pays for being supervised.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    head = args[0] if args else ""
    if head == "job":
        from shipit.jobs.cli import main as job_main

        raise SystemExit(job_main(args[1:]))
    if head == "agent":
        # Imported lazily: the agent is another module with its own (lean) imports.
        from shipit.agent import main as agent_main

        raise SystemExit(agent_main(args[1:]))
    try:
        from shipit.cli import main as cli_main
    except ImportError as exc:
        # Only "the click CLI is missing" is a user-facing condition; any other import error is a bug.
        if exc.name != "shipit.cli":
            raise
        sys.stderr.write("shipit: error: the deploy commands are not installed in this environment\n")
        raise SystemExit(2) from None
    cli_main(args)


if __name__ == "__main__":
    main()
