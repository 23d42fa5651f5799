"""Storage: the only layer that builds SQL or touches asyncpg."""
