"""`python -m bench.loadgen`: the load generator, in a process of its own.

It reads one scenario spec (JSON) from the file named on the command line, drives
real WebSocket clients against the node(s), and writes JSON lines to stdout: events
while it runs (`{"event": ...}`) and finally `{"event": "result", ...}`. The push
scenario also reads commands from stdin (one line per round), since the driver,
which holds the fake push providers, decides when a round is over.

Every loop here is bounded in time and in count.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson

from bench.procstat import CpuWatch, cpu_seconds, raise_fd_limit, rss_bytes
from bench.stats import summary_ms
from bench.wsclient import WSClient

now = time.perf_counter
DRAIN_SECONDS = 10.0  # after the last send, how long answers may still come


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(orjson.dumps({"event": event, **fields}).decode() + "\n")
    sys.stdout.flush()


def send_frame(conversation_id: str, content: str, client_msg_id: str) -> bytes:
    return orjson.dumps(
        {
            "type": "message.send",
            "conversation_id": conversation_id,
            "content": content,
            "client_msg_id": client_msg_id,
        }
    )


class Scenario:
    """What every scenario shares: the nodes, the clients, the CPU watch, the frame parser."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.nodes = spec["nodes"]
        self.clients: list[WSClient] = []
        self.errors: dict[str, int] = {}
        self.sent_at: dict[str, float] = {}
        self.pongs = 0
        # Sequential probes: client_msg_id -> (ack future, delivery future).
        self.waiters: dict[str, tuple[asyncio.Future[float], asyncio.Future[float]]] = {}

    def watch(self) -> CpuWatch:
        groups = {
            "node": [n["pid"] for n in self.nodes],
            "loadgen": [os.getpid()],
            "driver": [self.spec["driver_pid"]],
        }
        return CpuWatch(groups, {"postgres": "postgres", "redis": "redis-server"})

    async def connect(self, user: dict[str, Any], tag: object = None) -> WSClient:
        node = self.nodes[user.get("node", 0)]
        client = await WSClient.connect(
            node["host"], node["port"], f"/ws?token={user['token']}", self.on_frame
        )
        client.tag = tag
        self.clients.append(client)
        return client

    async def close_all(self) -> None:
        for client in self.clients:
            client.close()
        if self.clients:
            await asyncio.wait([c.closed for c in self.clients], timeout=5)
        for client in self.clients:
            client.abort()
        self.clients.clear()

    def on_frame(self, client: WSClient, data: bytes) -> None:
        t = now()
        frame = orjson.loads(data)
        kind = frame.get("type")
        if kind == "message.new":
            cmid = frame["message"].get("client_msg_id")
            waiter = self.waiters.get(cmid)
            if waiter is None:
                self.delivered(cmid, t, client)
            elif not waiter[1].done():
                waiter[1].set_result(t)
        elif kind == "message.ack":
            cmid = frame["client_msg_id"]
            waiter = self.waiters.get(cmid)
            if waiter is None:
                self.acked(cmid, t, client, frame["message"])
            elif not waiter[0].done():
                waiter[0].set_result(t)
        elif kind == "error":
            code = frame.get("code", "?")
            self.errors[code] = self.errors.get(code, 0) + 1
            waiter = self.waiters.get(frame.get("ref"))
            if waiter is None:
                self.failed(frame.get("ref"), client)
            else:
                for f in waiter:
                    if not f.done():
                        f.set_exception(RuntimeError(f"error frame {code}"))
        elif kind == "pong":
            self.pongs += 1

    async def sequential(
        self, sender: WSClient, conversation_id: str, spec: dict[str, Any]
    ) -> dict[str, Any]:
        """One message at a time: sent, then wait for its ack and its delivery."""
        loop = asyncio.get_running_loop()
        ack_lat: list[float] = []
        new_lat: list[float] = []
        failures = 0
        watch = self.watch()
        deadline = now() + spec["max_seconds"]
        for i in range(spec["warmup"] + spec["count"]):
            if i == spec["warmup"]:
                watch.start(now())
            if now() > deadline:
                break
            cmid = f"seq-{i}"
            waiters = (loop.create_future(), loop.create_future())
            self.waiters[cmid] = waiters
            t0 = now()
            sender.send(send_frame(conversation_id, f"latency probe {i}", cmid))
            try:
                t_ack, t_new = await asyncio.wait_for(asyncio.gather(*waiters), 5)
            except (TimeoutError, RuntimeError):
                failures += 1
                continue
            finally:
                del self.waiters[cmid]
            if i >= spec["warmup"]:
                ack_lat.append(t_ack - t0)
                new_lat.append(t_new - t0)
        return {
            "delivery": summary_ms(new_lat),
            "ack": summary_ms(ack_lat),
            "failures": failures,
            "cpu_pct": watch.stop(now()),
        }

    def delivered(self, cmid: str | None, t: float, client: WSClient) -> None:
        pass

    def acked(self, cmid: str, t: float, client: WSClient, message: dict[str, Any]) -> None:
        pass

    def failed(self, cmid: str | None, client: WSClient) -> None:
        pass


# -- latency: one message at a time, sender socket to recipient socket -------------------


class Latency(Scenario):
    async def run(self) -> dict[str, Any]:
        spec = self.spec
        sender = await self.connect(spec["sender"])
        await self.connect(spec["recipient"])
        await asyncio.sleep(0.2)  # the presence frames of the two coming online
        result = await self.sequential(sender, spec["conversation_id"], spec)
        result["errors"] = self.errors
        await self.close_all()
        return result


# -- throughput: senders in conversations, closed loop and open loop ---------------------


class Flow(Scenario):
    """Counts acks and deliveries inside a measuring window, and latencies of the messages
    sent inside it (from the intended send time, so a late sender is not hidden)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.window = (float("inf"), float("inf"))
        self.reset_counts()
        self.closed_loop = False
        self.seq = itertools.count()
        self.settle_seconds: list[float] = []

    def reset_counts(self) -> None:
        self.acks = self.deliveries = self.sent = 0
        self.ack_lat: list[float] = []
        self.new_lat: list[float] = []
        self.outstanding = 0
        self.sent_at.clear()
        self.expected: dict[str, int] = {}

    def send(self, client: WSClient, at: float) -> None:
        conversation_id, fanout = client.tag  # type: ignore[misc]
        cmid = f"m{next(self.seq)}"
        self.sent_at[cmid] = at
        self.expected[cmid] = fanout + 1  # the deliveries and the ack
        self.outstanding += 1
        self.sent += 1
        client.send(send_frame(conversation_id, f"hello {cmid}", cmid))

    def _done_one(self, cmid: str) -> None:
        left = self.expected.get(cmid, 0) - 1
        if left > 0:
            self.expected[cmid] = left
        else:
            self.expected.pop(cmid, None)
            self.sent_at.pop(cmid, None)

    def acked(self, cmid: str, t: float, client: WSClient, message: dict[str, Any]) -> None:
        sent = self.sent_at.get(cmid)
        if sent is None:
            return
        self.outstanding -= 1
        start, end = self.window
        if start <= t < end:
            self.acks += 1
        if start <= sent < end:
            self.ack_lat.append(t - sent)
        self._done_one(cmid)
        if self.closed_loop:
            self.send(client, now())

    def delivered(self, cmid: str | None, t: float, client: WSClient) -> None:
        sent = self.sent_at.get(cmid or "")
        if sent is None:
            return
        start, end = self.window
        if start <= t < end:
            self.deliveries += 1
        if start <= sent < end:
            self.new_lat.append(t - sent)
        self._done_one(cmid)  # type: ignore[arg-type]

    def failed(self, cmid: str | None, client: WSClient) -> None:
        if cmid in self.sent_at:
            self.outstanding -= 1
            self.expected.pop(cmid, None)
            self.sent_at.pop(cmid, None)
            if self.closed_loop:
                self.send(client, now())

    async def drain(self, seconds: float = DRAIN_SECONDS) -> int:
        """Wait for what is still on its way; how many answers never came."""
        deadline = now() + seconds
        # Polling: the counts are fed by protocol callbacks, bounded by the deadline.
        while self.expected and now() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return sum(self.expected.values())

    def figures(self, duration: float, senders: int) -> dict[str, Any]:
        return {
            "persisted_per_s": round(self.acks / duration),
            "delivered_per_s": round(self.deliveries / duration),
            "ack": summary_ms(self.ack_lat),
            "delivery": summary_ms(self.new_lat),
            "senders": senders,
        }

    async def closed(self, senders: list[WSClient], window: int, warmup: float, duration: float):
        """Each sender keeps `window` messages in flight: the next goes when one is acked."""
        self.reset_counts()
        watch = self.watch()
        self.closed_loop = True
        t0 = now()
        self.window = (t0 + warmup, t0 + warmup + duration)
        for client in senders:
            for _ in range(window):
                self.send(client, now())
        await asyncio.sleep(warmup)
        watch.start(now())
        await asyncio.sleep(duration)
        cpu = watch.stop(now())
        self.closed_loop = False
        lost = await self.drain()
        result = self.figures(duration, len(senders))
        result.update(window=window, seconds=duration, lost=lost, cpu_pct=cpu)
        return result

    async def open_rate(self, senders: list[WSClient], rate: float, duration: float):
        """Send at a fixed rate whatever the answers, round-robin over the senders."""
        self.reset_counts()
        watch = self.watch()
        total = int(rate * duration)
        t0 = now() + 0.01
        self.window = (t0, float("inf"))
        watch.start(t0)
        lags: list[float] = []
        n = 0
        while n < total:
            t = now()
            due = min(total, int((t - t0) * rate) + 1)
            while n < due:
                at = t0 + n / rate
                self.send(senders[n % len(senders)], at)
                n += 1
            lags.append(now() - (t0 + (due - 1) / rate))
            # 1 ms ticks: the event loop's timer resolution (a shorter sleep spins).
            await asyncio.sleep(0.001)
        end = now()
        lost = await self.drain(5.0)
        cpu = watch.stop(end)
        lags.sort()
        result = self.figures(max(end - t0, 1e-9), len(senders))
        result.update(
            rate=rate,
            seconds=duration,
            sent=self.sent,
            lost=lost,
            sender_lag_p99_ms=round(lags[int(len(lags) * 0.99)] * 1000, 2) if lags else 0,
            cpu_pct=cpu,
        )
        return result

    async def settle(self) -> None:
        """Between runs, pay off the disk work the last one left behind, so that it does not
        land in the middle of the next one: vacuum what it churned (else autovacuum starts
        mid-run), a checkpoint, and the kernel's dirty pages written out (else a commit's
        fsync waits 100-200 ms behind them, seen as a p99 spike). Then a pause."""
        t0 = now()
        conn = await asyncpg.connect(self.spec["dsn"])
        try:
            await conn.execute("VACUUM (ANALYZE) messages, push_jobs, participants, conversations")
            await conn.execute("CHECKPOINT")
        finally:
            await conn.close()
        await asyncio.get_running_loop().run_in_executor(None, os.sync)
        self.settle_seconds.append(round(now() - t0, 2))
        await asyncio.sleep(1.0)

    async def open_search(self, senders: list[WSClient], spec: dict[str, Any]):
        """The highest fixed rate whose delivery p99 stays under the limit."""
        limit = spec["p99_limit_ms"]
        steps: list[dict[str, Any]] = []

        def ok(r: dict[str, Any]) -> bool:
            p99 = r["delivery"]["p99_ms"]
            return r["lost"] == 0 and p99 == p99 and p99 < limit  # (nan fails)

        best: dict[str, Any] | None = None
        failed_at: float | None = None
        for rate in spec["rates"]:
            r = await self.open_rate(senders, rate, spec["step_seconds"])
            r["ok"] = ok(r)
            steps.append(r)
            await self.settle()
            if not r["ok"]:
                failed_at = rate
                break
            best = r
        for _ in range(spec["refine"]):
            if failed_at is None:
                break
            low = best["rate"] if best else 0.0
            rate = round((low + failed_at) / 2 / 100) * 100
            if rate <= low or rate >= failed_at:
                break
            r = await self.open_rate(senders, rate, spec["step_seconds"])
            r["ok"] = ok(r)
            steps.append(r)
            await self.settle()
            if r["ok"]:
                best = r
            else:
                failed_at = rate
        return {
            "settle_seconds": self.settle_seconds,
            "best_rate": best["rate"] if best else 0,
            "best": best,
            "first_failing_rate": failed_at,
            "p99_limit_ms": limit,
            "steps": steps,
        }


class Throughput(Flow):
    async def run(self) -> dict[str, Any]:
        spec = self.spec
        senders = []
        for user in spec["users"]:
            senders.append(await self.connect(user, (user["conversation_id"], 1)))
        await asyncio.sleep(0.2)
        result: dict[str, Any] = {}
        if spec.get("latency"):
            # Cross-node latency (two nodes): from the first user to the second.
            sender = senders[0]
            result["latency"] = await self.sequential(sender, sender.tag[0], spec["latency"])  # type: ignore[index]
        closed = spec["closed"]
        result["closed"] = await self.closed(
            senders, closed["window"], closed["warmup"], closed["seconds"]
        )
        if spec.get("open"):
            await self.settle()
            result["open"] = await self.open_search(senders, spec["open"])
        result["errors"] = self.errors
        await self.close_all()
        return result


class Fanout(Flow):
    async def run(self) -> dict[str, Any]:
        spec = self.spec
        members = spec["members"]
        fanout = len(members) - 1
        senders = []
        for i, user in enumerate(members):
            client = await self.connect(user, (spec["conversation_id"], fanout))
            if i < spec["senders"]:
                senders.append(client)
        await asyncio.sleep(0.5)  # presence frames of the members coming online
        result = await self.closed(senders, spec["window"], spec["warmup"], spec["seconds"])
        result["members"] = len(members)
        result["deliveries_per_message"] = fanout
        result["errors"] = self.errors
        await self.close_all()
        return result


# -- redis_outage: a closed loop the driver interrupts by killing Redis ------------------


class RedisOutage(Flow):
    """A closed loop that runs until the driver says stop, counting acks and error frames
    per tenth of a second of wall-clock time, so the driver can set them against the
    moments it killed and restarted Redis."""

    BUCKET = 0.1

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.ack_buckets: dict[int, int] = {}
        self.error_buckets: dict[int, int] = {}

    def _bucket(self) -> int:
        return int(time.time() / self.BUCKET)

    def acked(self, cmid: str, t: float, client: WSClient, message: dict[str, Any]) -> None:
        if cmid in self.sent_at:
            b = self._bucket()
            self.ack_buckets[b] = self.ack_buckets.get(b, 0) + 1
        super().acked(cmid, t, client, message)

    def failed(self, cmid: str | None, client: WSClient) -> None:
        b = self._bucket()
        self.error_buckets[b] = self.error_buckets.get(b, 0) + 1
        super().failed(cmid, client)

    async def run(self) -> dict[str, Any]:
        spec = self.spec
        senders = [await self.connect(u, (u["conversation_id"], 1)) for u in spec["users"]]
        await asyncio.sleep(0.2)
        self.reset_counts()
        self.closed_loop = True
        self.window = (now(), float("inf"))
        for client in senders:
            for _ in range(spec["window"]):
                self.send(client, now())
        await asyncio.sleep(spec["warmup"])
        emit("running")
        loop = asyncio.get_running_loop()
        line = await asyncio.wait_for(
            loop.run_in_executor(None, sys.stdin.readline), spec["max_seconds"]
        )
        self.closed_loop = False
        lost = await self.drain(5.0)
        await self.close_all()
        return {
            "stop": line.strip(),
            "bucket_seconds": self.BUCKET,
            "acks": sorted(self.ack_buckets.items()),
            "error_frames": sorted(self.error_buckets.items()),
            "lost": lost,
            "errors": self.errors,
            "senders": len(senders),
            "window": spec["window"],
        }


# -- push: one sender; the driver (which holds the fakes) says when to send --------------


class PushSender(Scenario):
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.acks: dict[str, asyncio.Future[dict[str, Any]]] = {}

    def acked(self, cmid: str, t: float, client: WSClient, message: dict[str, Any]) -> None:
        f = self.acks.get(cmid)
        if f and not f.done():
            f.set_result(message)

    async def run(self) -> dict[str, Any]:
        spec = self.spec
        sender = await self.connect(spec["sender"])
        loop = asyncio.get_running_loop()
        for r in range(spec["rounds"]):
            line = await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), 120)
            if not line.strip() or line.strip() == "stop":
                break
            cmid = f"push-{r}"
            self.acks[cmid] = loop.create_future()
            sent_wall = time.time()
            sender.send(send_frame(spec["conversation_id"], f"Push round {r}: see you at 10", cmid))
            message = await asyncio.wait_for(self.acks[cmid], 10)
            emit("acked", round=r, message=message, sent_wall=sent_wall, ack_wall=time.time())
        await self.close_all()
        return {"errors": self.errors}


# -- connections: many idle sockets, memory and heartbeat CPU ----------------------------


class Connections(Scenario):
    async def run(self) -> dict[str, Any]:
        spec = self.spec
        users = spec["users"]
        raise_fd_limit(len(users) + 1024)
        node_pid = self.nodes[0]["pid"]
        await self.wait_idle(node_pid, 10)
        rss_before = rss_bytes(node_pid)
        limit = asyncio.Semaphore(spec["concurrency"])
        handshakes: list[float] = []
        failures: dict[str, int] = {}

        async def open_one(user: dict[str, Any]) -> None:
            async with limit:
                t = now()
                try:
                    await self.connect(user)
                except Exception as exc:
                    name = type(exc).__name__
                    failures[name] = failures.get(name, 0) + 1
                    return
                handshakes.append(now() - t)

        t0 = now()
        await asyncio.wait_for(
            asyncio.gather(*(open_one(u) for u in users)), spec["max_connect_seconds"]
        )
        ramp = now() - t0
        settle = await self.wait_idle(node_pid, 30)
        rss_after = rss_bytes(node_pid)
        opened = len(self.clients)

        # Idle: every client pings once per interval, spread evenly over it.
        interval = spec["ping_interval"]
        idle = spec["idle_seconds"]
        watch = self.watch()
        cpu0 = cpu_seconds(node_pid)
        t_idle = now()
        watch.start(t_idle)
        ping = b'{"type":"ping"}'
        schedule = sorted(
            (offset, i)
            for i in range(opened)
            for offset in _offsets(i * interval / opened, interval, idle)
        )
        pings = 0
        for offset, i in schedule:
            delay = t_idle + offset - now()
            if delay > 0.001:
                await asyncio.sleep(delay)
            self.clients[i].send(ping)
            pings += 1
        remaining = t_idle + idle - now()
        if remaining > 0:
            await asyncio.sleep(remaining)
        t_end = now()
        cpu_used = cpu_seconds(node_pid) - cpu0
        cpu = watch.stop(t_end)
        await asyncio.sleep(0.5)
        still_open = sum(1 for c in self.clients if c.is_open)
        await self.close_all()
        return {
            "wanted": len(users),
            "opened": opened,
            "still_open_after_idle": still_open,
            "connect_failures": failures,
            "ramp_seconds": round(ramp, 2),
            "connects_per_s": round(opened / ramp) if ramp else 0,
            "handshake": summary_ms(handshakes),
            "settle_seconds": round(settle, 2),
            "rss_before_mb": round(rss_before / 2**20, 1),
            "rss_after_mb": round(rss_after / 2**20, 1),
            "kb_per_connection": round((rss_after - rss_before) / max(opened, 1) / 1024, 2),
            "idle_seconds": round(t_end - t_idle, 2),
            "ping_interval_s": interval,
            "pings": pings,
            "pongs": self.pongs,
            "heartbeat_cpu_pct": round(100 * cpu_used / (t_end - t_idle), 2),
            "cpu_us_per_connection_per_s": round(cpu_used / (t_end - t_idle) / opened * 1e6, 3),
            "cpu_pct": cpu,
        }

    async def wait_idle(self, pid: int, limit: float) -> float:
        """Wait (at most `limit` s) until the node uses under 5% CPU over half a second."""
        t0 = now()
        while now() - t0 < limit:
            c0 = cpu_seconds(pid)
            await asyncio.sleep(0.5)
            if cpu_seconds(pid) - c0 < 0.025:
                break
        return now() - t0


class TwoNodes(Throughput):
    pass


# -- announcement: many listeners, and the latency probe while an announcement goes out ---


class AnnouncementLoad(Scenario):
    """Opens the listeners' sockets, measures the probe pair's latency idle, says `ready`,
    then probes one message at a time until the driver says `stop` (the announcement is
    done), counting the announcement frames the listeners get meanwhile."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.announcement_frames = 0

    def delivered(self, cmid: str | None, t: float, client: WSClient) -> None:
        if cmid and cmid.startswith("announcement:"):
            self.announcement_frames += 1

    async def run(self) -> dict[str, Any]:
        spec = self.spec
        raise_fd_limit(len(spec["listeners"]) + 1024)
        limit = asyncio.Semaphore(spec["concurrency"])

        async def open_one(user: dict[str, Any]) -> None:
            async with limit:
                await self.connect(user)

        await asyncio.wait_for(
            asyncio.gather(*(open_one(u) for u in spec["listeners"])), spec["max_connect_seconds"]
        )
        sender = await self.connect(spec["sender"])
        await self.connect(spec["recipient"])
        idle = await self.sequential(
            sender, spec["conversation_id"], {**spec["probe"], "max_seconds": 60}
        )
        emit("ready", listeners=len(self.clients) - 2)
        loop = asyncio.get_running_loop()
        stop = loop.run_in_executor(None, sys.stdin.readline)
        during: list[float] = []
        during_ack: list[float] = []  # send to message.ack: the commit's share
        failures = 0
        deadline = now() + spec["max_probe_seconds"]
        for i in itertools.count():
            if stop.done() or now() > deadline:
                break
            cmid = f"during-{i}"
            waiters = (loop.create_future(), loop.create_future())
            self.waiters[cmid] = waiters
            t0 = now()
            sender.send(send_frame(spec["conversation_id"], f"probe {i}", cmid))
            try:
                t_ack, t_new = await asyncio.wait_for(asyncio.gather(*waiters), 5)
                during.append(t_new - t0)
                during_ack.append(t_ack - t0)
            except (TimeoutError, RuntimeError):
                failures += 1
            finally:
                del self.waiters[cmid]
            await asyncio.sleep(spec["probe_gap_seconds"])
        await asyncio.wait_for(stop, 30)
        await asyncio.sleep(1.0)  # the last chunk's frames still on their way
        frames = self.announcement_frames
        await self.close_all()
        return {
            "idle_delivery": idle["delivery"],
            "during_delivery": summary_ms(during),
            "during_ack": summary_ms(during_ack),
            "during_failures": failures,
            "announcement_frames": frames,
            "errors": self.errors,
        }


def _offsets(first: float, interval: float, until: float) -> list[float]:
    """first, first + interval, ... below `until`."""
    return [first + k * interval for k in range(int((until - first) // interval) + 1)]


SCENARIOS: dict[str, Callable[[dict[str, Any]], Scenario]] = {
    "latency": Latency,
    "throughput": Throughput,
    "fanout": Fanout,
    "push": PushSender,
    "push_one": PushSender,
    "connections": Connections,
    "two_nodes": TwoNodes,
    "redis_outage": RedisOutage,
    "announcement": AnnouncementLoad,
}


async def amain(spec: dict[str, Any]) -> None:
    # Stopped by the driver (or Ctrl-C): nothing to tidy here, the sockets die with us.
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, os._exit, 1)
    scenario = SCENARIOS[spec["scenario"]](spec)
    try:
        result = await asyncio.wait_for(scenario.run(), spec["max_total_seconds"])
    except Exception as exc:
        emit("result", error=f"{type(exc).__name__}: {exc}")
        raise
    emit("result", **result)


def main() -> None:
    with open(sys.argv[1], "rb") as f:
        spec = orjson.loads(f.read())
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    runner(amain(spec))


if __name__ == "__main__":
    main()
