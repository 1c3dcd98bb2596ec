"""Turn a resolved HostSpec into the Host that talks to it."""

from __future__ import annotations

from shipit.config.model import HostSpec, SSHConfig
from shipit.hosts.base import Host


def open_host(spec: HostSpec, ssh: SSHConfig) -> Host:
    """A LocalHost for `local`, else an SSHHost. Nothing connects until the first command."""
    if spec.local:
        from shipit.hosts.local import LocalHost

        return LocalHost(spec)
    from shipit.hosts.ssh import SSHHost

    return SSHHost(spec, ssh)
