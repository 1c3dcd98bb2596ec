"""shipit.yaml: YAML in, one validated typed object out."""

from shipit.config.model import (
    Config,
    HookSpec,
    HostSpec,
    JobDefinition,
    JobsConfig,
    SourceConfig,
    SSHConfig,
    StageConfig,
)

__all__ = [
    "Config",
    "HookSpec",
    "HostSpec",
    "JobDefinition",
    "JobsConfig",
    "SourceConfig",
    "SSHConfig",
    "StageConfig",
]
