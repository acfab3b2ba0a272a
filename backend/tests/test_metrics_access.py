"""GET /metrics: served to everyone by default, or only to the allowed addresses."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2
import pytest

from app.config import ConfigError
from app.metrics import MetricsEndpoint, parse_networks
from tests import schema_check
from tests.helpers import Node, make_settings, start_node


@pytest.fixture(scope="module")
async def nodes(sqlite_url: str) -> AsyncIterator[dict[str, Node]]:
    made = {
        "everyone": await start_node(make_settings(sqlite_url)),
        "loopback": await start_node(make_settings(sqlite_url, metrics_allow_from="127.0.0.0/8")),
        "elsewhere": await start_node(
            make_settings(sqlite_url, metrics_allow_from="10.0.0.0/8, 2001:db8::/32")
        ),
    }
    yield made
    for node in made.values():
        await node.stop()


@pytest.mark.parametrize(("which", "status"), [("everyone", 200), ("loopback", 200)])
async def test_metrics_served_to_allowed_clients(
    nodes: dict[str, Node], which: str, status: int
) -> None:
    async with httpx2.AsyncClient(
        event_hooks=schema_check.EVENT_HOOKS, base_url=nodes[which].url
    ) as http:
        r = await http.get("/metrics")
    assert r.status_code == status
    assert "messenger_messages_sent_total" in r.text


async def test_metrics_refused_to_other_clients(nodes: dict[str, Node]) -> None:
    async with httpx2.AsyncClient(
        event_hooks=schema_check.EVENT_HOOKS, base_url=nodes["elsewhere"].url
    ) as http:
        r = await http.get("/metrics")
        health = await http.get("/health")
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"
    assert "messenger_" not in r.text
    assert health.status_code == 200  # only /metrics is restricted


def test_allowlist_addresses() -> None:
    endpoint = MetricsEndpoint(parse_networks("10.0.0.0/8,192.0.2.7,::1"))
    assert endpoint.allows("10.1.2.3") and endpoint.allows("192.0.2.7")
    assert endpoint.allows("::ffff:10.1.2.3")  # an IPv4 client on a dual-stack listener
    assert endpoint.allows("::1")
    assert not endpoint.allows("192.0.2.8")
    assert not endpoint.allows("11.0.0.1")
    assert not endpoint.allows(None)  # no address at all (a Unix socket)
    assert not endpoint.allows("testclient")
    assert MetricsEndpoint(parse_networks(" ")).allows(None)  # no list: everyone


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "localhost", "10.0.0.1/8/8", "*"])
def test_allowlist_setting_must_be_addresses(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_networks(bad)
