"""A real PostgreSQL database for the client's tests, migrated as an admin would, and
real nodes of the server in front of it (see client_testkit)."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from app.migrations import upgrade
from client_testkit import MakeNode, Node, make_settings, start_node
from sqlalchemy.ext.asyncio import create_async_engine

PG_HOST = os.environ.get("TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("TEST_PG_USER", "postgres")


async def _admin() -> Any:
    return await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres")


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    name = f"messenger_client_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = await _admin()
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    try:
        engine = create_async_engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(upgrade)
        await engine.dispose()
        yield url
    finally:
        admin = await _admin()
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="session")
async def server(database_url: str) -> AsyncIterator[Node]:
    """One node with the defaults (and open registration and login limits)."""
    n = await start_node(make_settings(database_url))
    yield n
    await n.stop()


@pytest.fixture
async def start_server(database_url: str) -> AsyncIterator[MakeNode]:
    """Start a node with settings of the test's own; stopped when the test ends."""
    started: list[Node] = []

    async def make(**overrides: Any) -> Node:
        n = await start_node(make_settings(database_url, **overrides))
        started.append(n)
        return n

    yield make
    for n in started:
        if not n.task.done():
            await n.stop()
