"""The PostgreSQL backend of the tenant state (`CHORUS_DATABASE_URL=postgresql://…`): the schema and its
migrations (`migrations`, `schema`) and the cluster-wide limit primitives (`limits`). Needs the `postgres` extra
(psycopg 3 and psycopg-pool)."""
