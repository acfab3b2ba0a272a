"""A real Redis Cluster for the cluster tests: six redis-server processes on free
loopback ports (three masters, three replicas), made into a cluster by redis-cli.

Nothing is kept on disk but each server's cluster config, in a temporary folder that
goes with the fixture. A test may kill a master (SIGKILL) and wait for its replica to
take over.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.fakes import free_port
from tests.helpers import eventually

NODE_TIMEOUT_MS = 1000  # how long a silent master takes to be failed over: keep tests short

needs_redis_server = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
    reason="redis-server and redis-cli are needed for a Redis Cluster",
)


class RedisClusterServers:
    """Six cluster-enabled redis-servers and the cluster made of them."""

    def __init__(self, count: int = 6) -> None:
        # The cluster bus port defaults to port + 10000: give it a free port of its own.
        ports: list[int] = []
        while len(ports) < 2 * count:
            if (port := free_port()) not in ports:
                ports.append(port)
        self.ports = ports[:count]
        self.bus_ports = dict(zip(self.ports, ports[count:], strict=True))
        self.processes: dict[int, subprocess.Popen] = {}
        self._dir = Path(tempfile.mkdtemp(prefix="redis-cluster-"))

    @property
    def url(self) -> str:
        """REDIS_CLUSTER_URL: the seed nodes, comma-separated."""
        return ",".join(f"redis://127.0.0.1:{port}" for port in self.ports)

    def client(self, port: int) -> Redis:
        """A plain client of one server (CLUSTER INFO, ROLE, ...)."""
        return Redis(host="127.0.0.1", port=port, decode_responses=True)

    async def start(self) -> None:
        for port in self.ports:
            self.processes[port] = subprocess.Popen(  # noqa: ASYNC220  (we wait below)
                [
                    *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
                    *("--cluster-enabled", "yes", "--cluster-port", str(self.bus_ports[port])),
                    *("--cluster-node-timeout", str(NODE_TIMEOUT_MS)),
                    *("--cluster-config-file", f"nodes-{port}.conf", "--dir", str(self._dir)),
                    *("--save", "", "--appendonly", "no", "--logfile", ""),
                    # Replicas sync at once and may always take over: a fresh cluster's
                    # replica is ready for a failover within the test's first second.
                    *("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"),
                    *("--cluster-replica-validity-factor", "0"),
                ],
                stdout=subprocess.DEVNULL,
            )
        for port in self.ports:
            await eventually(self._answers(port), what=f"redis-server on {port} to answer")
        subprocess.run(  # noqa: ASYNC221  (redis-cli returns once the slots are assigned)
            [
                *("redis-cli", "--cluster", "create"),
                *(f"127.0.0.1:{port}" for port in self.ports),
                *("--cluster-replicas", "1", "--cluster-yes"),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=30,
        )
        await self.wait_ok()
        await eventually(self._settled, within=20, what="replicas in sync, slots agreed")

    async def _settled(self) -> bool:
        """Every replica has synced with its master and every server agrees on the slots."""
        views = set()
        for port in self.live_ports():
            async with self.client(port) as r:
                info = await r.info("replication")
                if info["role"] == "slave" and info.get("master_link_status") != "up":
                    return False
                slots = await r.execute_command("CLUSTER", "SLOTS")
            views.add(tuple(sorted((int(a), int(b), int(m[1])) for a, b, m, *_ in slots)))
        return len(views) == 1

    def _answers(self, port: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            if self.processes[port].poll() is not None:
                raise RuntimeError(f"redis-server on {port} exited")
            try:
                async with self.client(port) as r:
                    return bool(await r.ping())
            except Exception:  # not listening yet
                return False

        return check

    async def wait_ok(self, within: float = 20.0) -> None:
        """Every live server says cluster_state:ok and sees three masters with slots."""

        async def ok() -> bool:
            for port in self.live_ports():
                async with self.client(port) as r:
                    info = await r.cluster("INFO")
                if info.get("cluster_state") != "ok" or int(info.get("cluster_size", 0)) != 3:
                    return False
            return True

        await eventually(ok, within=within, what="cluster_state:ok", every=0.05)

    async def wait_failed_over(self, port: int, within: float = 30.0) -> None:
        """A killed master's replica serves its slots, as every live server sees it, and
        the cluster is whole again."""

        async def replaced() -> bool:
            for live in self.live_ports():
                async with self.client(live) as r:
                    slots = await r.execute_command("CLUSTER", "SLOTS")
                if any(int(master[1]) == port for _, _, master, *_ in slots):
                    return False
            return True

        await eventually(replaced, within=within, what=f"a replica to replace {port}", every=0.05)
        await self.wait_ok(within)

    def live_ports(self) -> list[int]:
        return [p for p, proc in self.processes.items() if proc.poll() is None]

    async def master_of(self, key: str) -> int:
        """The port of the master that serves a key's slot."""
        async with self.client(self.live_ports()[0]) as r:
            slot = int(await r.cluster("KEYSLOT", key))
            for start, end, master, *_ in await r.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(master[1])
        raise LookupError(f"no master serves {key}")

    async def role(self, port: int) -> str:
        async with self.client(port) as r:
            return str((await r.execute_command("ROLE"))[0])

    def kill(self, port: int) -> None:
        """SIGKILL one server: no goodbye to its clients or the cluster."""
        process = self.processes[port]
        process.send_signal(signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)
