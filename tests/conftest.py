"""Shared fixtures. Real servers come from tests/harness/*: each module's fixtures start the real
thing (sshd, PostgreSQL, Redis) and FAIL (not skip) under CI=true when it cannot."""

pytest_plugins = [
    "tests.harness.sshd",
    "tests.harness.postgres",
    "tests.harness.redis",
]
