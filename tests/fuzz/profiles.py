"""Hypothesis settings for the fuzz area, and the count of inputs it ran.

Two profiles, picked by HYPOTHESIS_PROFILE:
  ci        (default) enough examples for >= 10,000 inputs over the whole area in about a minute
  thorough  ten times as many, no time pressure: run it before a release or after a parser change

Each test asks for `fuzz(n)`: n examples under `ci`, 10*n under `thorough`. Tests call `count()`
once per input they really ran, and the conftest prints the total at the end of the session.
"""

from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, settings

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
if PROFILE not in ("ci", "thorough"):
    PROFILE = "ci"
SCALE = 10 if PROFILE == "thorough" else 1

settings.register_profile(
    "shipit-fuzz",
    deadline=None,  # real processes and disks: a slow example is not a failure
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)

INPUTS: Counter[str] = Counter()


def fuzz(examples: int) -> settings:
    """Settings for one property test: `examples` under ci, ten times more under thorough."""
    return settings(settings.get_profile("shipit-fuzz"), max_examples=examples * SCALE)


def count(area: str, n: int = 1) -> None:
    INPUTS[area] += n
