"""The job side: `shipit job run` (supervisor), the Python API for jobs, and the deploy-side logic.

Kept empty on purpose: `shipit job run` imports only what it needs, so importing this package must
cost nothing.
"""
