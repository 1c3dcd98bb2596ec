"""The gate (a lease) and the job store: one interface, three backends."""
