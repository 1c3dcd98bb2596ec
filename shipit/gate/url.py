"""Store URLs: `file:/abs/dir`, `sqlite:/abs/path.db`, `postgresql://...` and bare `postgres`.

Backends are imported on use so that `shipit job run` with a file store never loads psycopg.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from shipit.errors import UsageError

TYPE_CHECKING = False  # typing costs ~3 ms to import; annotations are strings (PEP 563)
if TYPE_CHECKING:  # and pydantic ~140 ms: keep `shipit job run` and the agent lean
    from typing import Any

    from shipit.config.model import StageConfig
    from shipit.gate.base import Store

DEFAULT_DSN_ENV = "SHIPIT_DSN"


def open_store(url: str, *, environ: Mapping[str, str] | None = None, **opts: Any) -> Store:
    """Open the store a URL names. Bad URLs raise UsageError (one line, no secrets)."""
    env = os.environ if environ is None else environ
    url = (url or "").strip()
    if url.startswith("file:"):
        from shipit.gate.file import FileStore

        return FileStore(_abs_path(url, "file:"), **opts)
    if url.startswith("sqlite:"):
        from shipit.gate.sqlite import SQLiteStore

        return SQLiteStore(_abs_path(url, "sqlite:"), **opts)
    if url in ("postgres", "postgresql"):
        var = env.get("SHIPIT_DSN_ENV") or DEFAULT_DSN_ENV
        dsn = env.get(var)
        if not dsn:
            raise UsageError(f"store 'postgres' needs a DSN in the environment variable {var}")
        return _postgres(dsn, opts)
    if url.startswith(("postgres://", "postgresql://")):
        return _postgres(url, opts)
    raise UsageError(
        f"unknown job store URL {redact(url)!r}: use file:/abs/dir, sqlite:/abs/path.db, "
        "postgres or postgresql://..."
    )


def _postgres(dsn: str, opts: dict[str, Any]) -> Store:
    from shipit.gate.postgres import PostgresStore

    return PostgresStore(dsn, **opts)


def _abs_path(url: str, scheme: str) -> str:
    path = url[len(scheme) :]
    if path.startswith("//"):  # tolerate file:///abs and sqlite:///abs
        path = path[2:]
    if not path or not os.path.isabs(path):
        raise UsageError(f"job store URL {url!r} needs an absolute path ({scheme}/abs/path)")
    return os.path.normpath(path)


def store_url_for(stage: StageConfig) -> str:
    """The store URL a stage's hosts use (per-host paths for file/sqlite, 'postgres' otherwise)."""
    kind = stage.jobs.store
    if kind == "file":
        return f"file:{stage.store_dir}"
    if kind == "sqlite":
        return f"sqlite:{stage.store_dir}/jobs.db"
    return "postgres"


_PASSWORD_IN_URL = re.compile(r"^([a-z][a-z0-9+.-]*://[^:/@?#]*):[^@/?#]*@", re.IGNORECASE)
_PASSWORD_PARAM = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)", re.IGNORECASE)


def redact(url: str) -> str:
    """The URL or DSN with any password replaced by '***' (URL userinfo, query or key=value)."""
    out = _PASSWORD_IN_URL.sub(r"\1:***@", url)
    return _PASSWORD_PARAM.sub(r"\1***", out)
