"""The Alembic migrations build exactly the schema the code declares, on SQLite and PostgreSQL, and running
them again is harmless (every ``serve`` runs them)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from gateway.store.all_tables import metadata
from gateway.store.db import Database
from gateway.store.migrate import current_revision, head_revision, upgrade


async def test_upgrade_builds_the_declared_schema(db_url):
    db = Database(db_url)
    try:
        assert await current_revision(db) is None
        assert await upgrade(db) == head_revision()
        assert await upgrade(db) == head_revision()
        async with db.read() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), metadata)
            )
        assert diff == []
    finally:
        await db.close()
