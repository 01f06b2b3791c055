"""Versioned SQL migrations, applied under a Postgres advisory lock so replicas can start together."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

log = structlog.get_logger(__name__)

_LOCK_KEY = 0x70737067  # "pspg": one advisory lock id for every replica
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    source_tree = Path(__file__).resolve().parents[2] / "deploy" / "migrations"
    return source_tree if source_tree.is_dir() else Path(__file__).resolve().parents[1] / "_migrations"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    found = []
    for path in sorted(directory.iterdir()):
        m = _FILE.match(path.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), path.read_text()))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations in {directory} must be numbered 0001, 0002, ... without gaps")
    return found


def latest_version() -> int:
    return len(load_migrations())


_CREATE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply what is missing, each file in its own transaction; returns the versions applied."""
    applied_now = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(_CREATE)
        applied = {r["version"]: r["checksum"] for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")}
        for m in load_migrations():
            if m.version in applied:
                if applied[m.version] != m.checksum:
                    raise RuntimeError(f"migration {m.version:04d}_{m.name} changed after it was applied")
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                                   m.version, m.name, m.checksum)
            log.info("migration_applied", version=m.version, name=m.name)
            applied_now.append(m.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now


async def current_version(conn: asyncpg.Connection) -> int:
    """The schema's version: 0 on a database no migration has touched yet."""
    if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
        return 0
    return await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations")
