"""Shared fixtures: a real PostgreSQL database and an SQLite file, each migrated with
Alembic exactly as an admin would, and nodes served by uvicorn on free ports."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from app.migrations import upgrade
from tests.helpers import Client, Node, make_settings, start_node

PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TEST_PG_USER", "postgres")


async def migrate(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(upgrade)
    await engine.dispose()


async def create_pg_database() -> tuple[str, str]:
    name = f"messenger_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name, f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


async def drop_pg_database(name: str) -> None:
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def migrated_database(kind: str, directory: Path) -> AsyncIterator[str]:
    """The URL of a new migrated database of `kind` ("sqlite": a file in `directory`, or
    "postgresql"), gone again on exit: a module whose nodes must see no other's rows."""
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{directory / 'messenger.db'}"
        await migrate(url)
        yield url
        return
    name, url = await create_pg_database()
    try:
        await migrate(url)
        yield url
    finally:
        await drop_pg_database(name)


@pytest.fixture(scope="session")
async def postgresql_url() -> AsyncIterator[str]:
    name, url = await create_pg_database()
    try:
        await migrate(url)
        yield url
    finally:
        await drop_pg_database(name)


@pytest.fixture(scope="session")
async def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("db") / "messenger.db"
    url = f"sqlite+aiosqlite:///{path}"
    await migrate(url)
    return url


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Storage and send-path tests run on both databases."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture(scope="session")
async def node(db_url: str) -> AsyncIterator[Node]:
    n = await start_node(make_settings(db_url))
    yield n
    await n.stop()


@pytest.fixture(scope="session")
async def pg_node(postgresql_url: str) -> AsyncIterator[Node]:
    n = await start_node(make_settings(postgresql_url))
    yield n
    await n.stop()


@pytest.fixture(scope="session")
async def client(node: Node) -> AsyncIterator[Client]:
    c = Client(node)
    yield c
    await c.close()


@pytest.fixture(scope="session")
async def pg_client(pg_node: Node) -> AsyncIterator[Client]:
    c = Client(pg_node)
    yield c
    await c.close()


@pytest.fixture(autouse=True)
def _quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="app")
