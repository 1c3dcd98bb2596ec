"""Pure command builders: config + state in, shell text out. No I/O here, ever.

Every user-supplied string goes through shlex.quote so that names with spaces, quotes, `$(...)`
or newlines stay inert. Tests assert the exact text, and dry-run shows exactly this text.
"""
