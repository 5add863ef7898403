"""The mirror's schema: the SQL files of migrations/, applied in order, each once, and recorded
in a schema_migrations table of each database."""

from __future__ import annotations

import logging
from importlib import resources

import psycopg

log = logging.getLogger(__name__)

# Key of the session advisory lock that serialises concurrent `migrate` calls.
MIGRATION_LOCK = 0x6E6F_6678_6D69_67  # "nofxmig"

# Bootstrapped by migrate() itself; local to each database, so neither region-keyed nor published.
SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name       text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def migrations() -> list[tuple[str, str]]:
    """(name, SQL) of every migration file, in the order they apply."""
    folder = resources.files("nofx.mirror") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    if not files:
        raise RuntimeError(f"no migrations in {folder}: are the *.sql files installed?")
    return [(f.name.removesuffix(".sql"), f.read_text()) for f in files]


def migrate(dsn: str) -> list[str]:
    """Apply pending migrations in order, each in its own transaction; returns their names.
    Concurrent callers wait for each other on an advisory lock, so each applies once."""
    applied: list[str] = []
    # A connection of its own: closing it releases the session lock whatever happens.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(SCHEMA_MIGRATIONS)
        done = {name for (name,) in conn.execute("SELECT name FROM schema_migrations")}
        for name, text in migrations():
            if name in done:
                continue
            with conn.transaction():
                conn.execute(text)
                conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
            log.info("applied migration %s", name)
            applied.append(name)
    return applied
