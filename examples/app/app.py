"""The example application shipit deploys in the demo: it only reports which release it is."""

from __future__ import annotations

import pathlib

HERE = pathlib.Path(__file__).resolve().parent


def release() -> str:
    """The release folder this code was deployed into, e.g. 20261122051230123456."""
    return HERE.name


def revision() -> str:
    rev = HERE / "REVISION"
    return rev.read_text().strip() if rev.exists() else "unknown"


if __name__ == "__main__":
    print(f"example app, release {release()}, revision {revision()}")
