"""A throwaway PostgreSQL cluster (filled in by the store work)."""
