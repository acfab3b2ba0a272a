"""A user's send limit is one for the whole cluster, not one per node."""

from __future__ import annotations

from tests.cluster import Cluster
from tests.helpers import Client

pytest_plugins = ["tests.cluster_fixtures"]

LIMIT = {"send_burst": 3, "send_rate_per_second": 0.2}


async def test_the_send_limit_holds_across_nodes(cluster: Cluster) -> None:
    n1, n2 = await cluster.node(**LIMIT), await cluster.node(**LIMIT)
    api1, api2 = Client(n1), Client(n2)
    alice, bob = await api1.user(), await api1.user()
    conversation = (await api1.conversation(alice, bob))["id"]

    statuses = [
        (await api.send(alice, conversation, f"m{i}")).status_code
        for i, api in enumerate((api1, api2, api1))
    ]
    assert statuses == [201, 201, 201]
    # The burst is spent on both nodes together: each refuses the fourth.
    for api in (api2, api1):
        r = await api.send(alice, conversation, "one too many")
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) >= 1
    # Another user's bucket is their own.
    assert (await api2.send(bob, conversation, "hi")).status_code == 201
    await api1.close()
    await api2.close()
