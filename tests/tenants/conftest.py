"""The PostgreSQL fixtures of the tenancy tests (`postgres_server_url`, `postgres_url`) live in tests/conftest.py,
shared with the server tests that run on both tenant backends."""
