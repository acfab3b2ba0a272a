"""The email tests' fixtures (a plugin: `pytest_plugins = ["tests.email_fixtures"]`): a
real SMTP server on loopback for the module, and a node that sends through it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.email_smtp import SmtpServer, start_smtp_server
from tests.helpers import Client, Node, make_settings, start_node


@pytest.fixture(scope="module")
def smtp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpServer]:
    server = start_smtp_server(Path(tmp_path_factory.mktemp("smtp")))
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def mail_node(db_url: str, smtp: SmtpServer) -> AsyncIterator[Node]:
    node = await start_node(make_settings(db_url, **smtp.settings()))
    yield node
    await node.stop()


@pytest.fixture(scope="module")
async def mail_client(mail_node: Node) -> AsyncIterator[Client]:
    client = Client(mail_node)
    yield client
    await client.close()
