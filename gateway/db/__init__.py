"""Everything that talks SQL: the pool, migrations and the queries (store)."""
