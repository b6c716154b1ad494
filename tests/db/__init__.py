"""Contract tests of the SQL store (`db`), run on SQLite and PostgreSQL."""
