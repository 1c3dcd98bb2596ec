"""The phases of a deploy, in order: pre_deploy, drain_jobs, release, restart_jobs (rollback on failure)."""
