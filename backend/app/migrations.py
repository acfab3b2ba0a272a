"""Alembic, driven from code: the admin's `make migrate` and the start-up check."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from alembic import command

BACKEND = Path(__file__).resolve().parents[1]


class SchemaOutOfDate(RuntimeError):
    pass


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config(str(BACKEND / "alembic.ini"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(connection: Connection, revision: str = "head") -> None:
    command.upgrade(alembic_config(connection), revision)


def downgrade(connection: Connection, revision: str = "base") -> None:
    command.downgrade(alembic_config(connection), revision)


async def check_schema_current(engine: AsyncEngine) -> None:
    """Refuse to serve on a schema that is not at the newest migration."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()

    def current(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async with engine.connect() as conn:
        revision = await conn.run_sync(current)
    if revision != head:
        raise SchemaOutOfDate(
            f"the database is at migration {revision or 'none'}, the code needs {head}: "
            "run `make migrate` (alembic upgrade head)"
        )
