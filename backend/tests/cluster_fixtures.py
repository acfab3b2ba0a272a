"""The cluster tests' fixtures (a plugin: `pytest_plugins = ["tests.cluster_fixtures"]`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.cluster import Cluster, RedisServer


@pytest.fixture(scope="session")
async def redis_server() -> AsyncIterator[RedisServer]:
    """One private Redis for the session's cluster tests (each test has its own prefix)."""
    server = RedisServer()
    await server.start()
    yield server
    server.stop()


@pytest.fixture
async def own_redis() -> AsyncIterator[RedisServer]:
    """A Redis for one test alone, to stop and start."""
    server = RedisServer()
    await server.start()
    yield server
    server.stop()


@pytest.fixture
async def cluster(postgresql_url: str, redis_server: RedisServer) -> AsyncIterator[Cluster]:
    c = Cluster(postgresql_url, redis_server.url)
    yield c
    await c.close()
