"""Real sshd test hosts on 127.0.0.1 (filled in by the transport work)."""
