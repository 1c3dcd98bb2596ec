"""Where commands run: SSH hosts (Fabric) and this machine (Invoke), with parallel fan-out."""
