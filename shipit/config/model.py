"""The typed shape of shipit.yaml.

`Config` is what the loader validates a file into. `Config.stage(name)` resolves one stage:
stage-level values override top-level ones, and every host is a `HostSpec` with its roles and
merged vars. The rest of shipit only ever sees resolved `StageConfig` objects.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

PHASES = ("pre_deploy", "drain_jobs", "release", "restart_jobs", "rollback")
HOOK_POINTS = tuple(f"{when}_{phase}" for phase in PHASES for when in ("before", "after"))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(Strict):
    """Where the code comes from: a git repository (URL or path) or a plain local directory."""

    repo: str | None = None
    branch: str = "main"
    revision: str | None = None
    dir: str | None = None
    exclude: list[str] = Field(default_factory=lambda: [".git", "__pycache__", "*.pyc"])

    @model_validator(mode="after")
    def _one_kind(self) -> SourceConfig:
        if bool(self.repo) == bool(self.dir):
            raise ValueError("give exactly one of source.repo or source.dir")
        return self


class SSHConfig(Strict):
    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    known_hosts: str | None = None
    jump_host: str | None = None
    connect_timeout: float = 10.0
    # Unknown or changed host keys are refused unless this is explicitly turned off.
    strict_host_key_checking: bool = True
    config_file: str | None = None


class HookSpec(Strict):
    """One hook step: exactly one of run (on hosts), local (on this machine), task (Invoke)."""

    run: str | None = None
    local: str | None = None
    task: str | None = None
    roles: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_kind(self) -> HookSpec:
        kinds = [k for k in ("run", "local", "task") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError("a hook needs exactly one of run, local or task")
        return self


class JobDefinition(Strict):
    """A job shipit knows by name (optional: any `shipit job run` is tracked anyway). What a
    job runs is recorded by `shipit job run` itself, so a definition only says how a deploy
    restarts it."""

    after: list[str] = Field(default_factory=list)
    # For jobs started by systemd or a queue: how to start the job again after a deploy.
    restart_command: str | None = None
    max_restarts: int | None = None


class AdapterBase(Strict):
    """Fields every job-system adapter shares (see shipit/adapters/base.py). Policy fields left
    unset take the stage's jobs.* values."""

    name: str | None = None  # unique per stage; defaults to the type
    roles: list[str] = Field(default_factory=list)  # hosts it works on; empty = every host
    drain_policy: Literal["wait", "abort", "terminate"] | None = None
    drain_timeout: float | None = Field(default=None, ge=0)
    grace: float | None = Field(default=None, ge=0)


class CronAdapterConfig(AdapterBase):
    """Cron entries from `cron:` run through `shipit job run`, so the gate holds them already."""

    type: Literal["cron"]
    # Rewrite the crontab block after each deploy, so the crontab follows shipit.yaml.
    install: bool = False


class SystemdAdapterConfig(AdapterBase):
    type: Literal["systemd"]
    # Long-running services: stopped at the drain deadline (or at once with drain_policy
    # terminate and drain_timeout 0), started again after the release.
    units: list[str] = Field(default_factory=list)
    # Timers: stopped at pause (no new runs), their services waited for, started on resume.
    timers: list[str] = Field(default_factory=list)
    user: bool = False  # `systemctl --user`
    systemctl: str = "systemctl"

    @model_validator(mode="after")
    def _something(self) -> SystemdAdapterConfig:
        if not self.units and not self.timers:
            raise ValueError("a systemd adapter needs units or timers")
        return self


class CommandAdapterConfig(AdapterBase):
    """Shell commands for a system shipit does not know. `list` prints a JSON list of items."""

    type: Literal["command"]
    pause: str | None = None
    list: str | None = None
    stop: str | None = None
    resume: str | None = None
    requeue: str | None = None
    # hosts: run on every (matching) host; local: once, on the machine running shipit
    run_on: Literal["hosts", "local"] = "hosts"
    timeout: float = Field(default=60.0, gt=0)
    # Re-run `pause` every lease_ttl/3 until resume: for pauses that expire after SHIPIT_TTL.
    repeat_pause: bool = False


class RQAdapterConfig(AdapterBase):
    """RQ workers on a Redis the deploy machine reaches (docs/adapters/rq.md)."""

    type: Literal["rq"]
    url: str | None = None  # prefer url_env: a URL can carry a password
    url_env: str = "REDIS_URL"
    queues: list[str] = Field(default_factory=lambda: ["default"], min_length=1)
    suspend_ttl: float | None = Field(default=None, gt=0)  # default: jobs.lease_ttl
    wake_timeout: float = Field(default=10.0, ge=0)


class CeleryAdapterConfig(AdapterBase):
    """Celery workers on a broker the deploy machine reaches (docs/adapters/celery.md)."""

    type: Literal["celery"]
    broker_url: str | None = None  # prefer broker_url_env: a URL can carry a password
    broker_url_env: str = "CELERY_BROKER_URL"
    queues: list[str] = Field(default_factory=lambda: ["celery"], min_length=1)
    workers: list[str] = Field(default_factory=list)  # node names; empty = all on the queues
    control_timeout: float = Field(default=2.0, gt=0)


# Other adapters (RQ, Celery...) add their config class to this union.
AdapterConfig = Annotated[
    CronAdapterConfig | SystemdAdapterConfig | CommandAdapterConfig | RQAdapterConfig
    | CeleryAdapterConfig,
    Field(discriminator="type"),
]


class CronEntry(Strict):
    """One crontab line `shipit cron install` writes, run through `shipit job run`."""

    name: str
    schedule: str
    command: str
    roles: list[str] = Field(default_factory=list)


class JobsConfig(Strict):
    store: Literal["file", "sqlite", "postgres"] = "sqlite"
    # Store location on each host for file/sqlite; default {deploy_to}/shared/shipit
    path: str | None = None
    dsn_env: str = "SHIPIT_DSN"
    # A file of Fernet keys (newest first, mode 0600) encrypting saved job state and recorded
    # env at rest; SHIPIT_STATE_KEYS in the environment wins. See docs/security.md.
    key_file: str | None = None
    drain_timeout: float = 300.0
    drain_policy: Literal["wait", "abort", "terminate"] = "terminate"
    grace: float = 10.0
    lease_ttl: float = 60.0
    max_wait: float = 3600.0
    max_restarts: int = 5
    heartbeat: float = 2.0
    definitions: dict[str, JobDefinition] = Field(default_factory=dict)
    adapters: list[AdapterConfig] = Field(default_factory=list)

    @field_validator("lease_ttl")
    @classmethod
    def _ttl_positive(cls, v: float) -> float:
        if v < 3:
            raise ValueError("lease_ttl must be at least 3 seconds")
        return v


class NotifyTarget(Strict):
    """Where deploy and job events are announced: an apprise URL or a plain JSON webhook."""

    apprise: str | None = None
    webhook: str | None = None
    # Event kinds to send (see shipit/events.py); empty means the default set.
    events: list[str] = Field(default_factory=list)
    timeout: float = Field(default=5.0, gt=0)
    retries: int = Field(default=2, ge=0)
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_kind(self) -> NotifyTarget:
        if bool(self.apprise) == bool(self.webhook):
            raise ValueError("a notify target needs exactly one of apprise or webhook")
        return self


class HostEntry(Strict):
    """A host written as a mapping in YAML (the short form is 'user@host:port' or 'local')."""

    host: str
    user: str | None = None
    port: int | None = None
    roles: list[str] = Field(default_factory=list)
    vars: dict[str, Any] = Field(default_factory=dict)


class StageEntry(Strict):
    hosts: list[str | HostEntry]
    roles: dict[str, list[str]] = Field(default_factory=dict)
    deploy_to: str | None = None
    branch: str | None = None
    keep_releases: int | None = None
    parallelism: int | None = None
    vars: dict[str, Any] = Field(default_factory=dict)
    hooks: dict[str, list[HookSpec]] = Field(default_factory=dict)
    ssh: SSHConfig | None = None
    jobs: JobsConfig | None = None
    notify: list[NotifyTarget] | None = None

    @field_validator("hosts")
    @classmethod
    def _non_empty(cls, v: list[Any]) -> list[Any]:
        if not v:
            raise ValueError("a stage needs at least one host")
        return v


class HostSpec(Strict):
    """A resolved host. `name` is how output refers to it (user@host:port or 'local')."""

    name: str
    hostname: str
    user: str | None = None
    port: int | None = None
    local: bool = False
    roles: tuple[str, ...] = ()
    vars: dict[str, Any] = Field(default_factory=dict)


class StageConfig(Strict):
    """Everything one deploy of one stage needs, resolved."""

    name: str
    application: str
    source: SourceConfig
    deploy_to: str
    keep_releases: int
    linked_files: tuple[str, ...]
    linked_dirs: tuple[str, ...]
    parallelism: int
    hosts: tuple[HostSpec, ...]
    vars: dict[str, Any]
    hooks: dict[str, tuple[HookSpec, ...]]
    ssh: SSHConfig
    jobs: JobsConfig
    # How hosts run shipit itself (the job supervisor and host agent).
    shipit_command: str
    secrets: tuple[str, ...] = ()
    config_path: str = "shipit.yaml"
    notify: tuple[NotifyTarget, ...] = ()
    cron: tuple[CronEntry, ...] = ()

    @property
    def store_dir(self) -> str:
        return self.jobs.path or f"{self.deploy_to}/shared/shipit"


class Config(Strict):
    application: str
    source: SourceConfig
    deploy_to: str
    keep_releases: int = Field(default=5, ge=1)
    linked_files: list[str] = Field(default_factory=list)
    linked_dirs: list[str] = Field(default_factory=list)
    parallelism: int = Field(default=10, ge=1)
    ssh: SSHConfig = Field(default_factory=SSHConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    hooks: dict[str, list[HookSpec]] = Field(default_factory=dict)
    vars: dict[str, Any] = Field(default_factory=dict)
    # Names of vars whose values are secrets: masked in `shipit config`, logs and events.
    secrets: list[str] = Field(default_factory=list)
    shipit_command: str = "shipit"
    notify: list[NotifyTarget] = Field(default_factory=list)
    cron: list[CronEntry] = Field(default_factory=list)
    stages: dict[str, StageEntry]
    config_path: str = "shipit.yaml"

    @field_validator("hooks")
    @classmethod
    def _hook_points(cls, v: dict[str, list[HookSpec]]) -> dict[str, list[HookSpec]]:
        for key in v:
            if key not in HOOK_POINTS:
                raise ValueError(f"unknown hook point {key!r}")
        return v

    def stage(self, name: str) -> StageConfig:
        from shipit.config.resolve import resolve_stage

        return resolve_stage(self, name)
