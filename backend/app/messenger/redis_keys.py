"""What presence and fan-out share in Redis: the names of its keys and channels, what
an outage looks like, and the loading of their Lua scripts.

Keys, all under the configured prefix P:
  P o:<user>     "1" with a TTL while some live node holds a socket of the user. online()
                 is one MGET over these, and Redis's own clock expires a dead node's users.
  P u:<user>     sorted set: node id -> expiry (ms, Redis time) of that node's claim. It
                 makes "came online" / "went offline" exact across nodes and devices, and
                 fan-out routes a user's frames to the nodes found here. The key lives three
                 TTLs so a survivor still finds a dead node's expired claims.
  P n:<node>     set of the users a node holds, so a survivor can clean up after it.
  P nodes        sorted set: node id -> expiry (ms) of the node's last heartbeat.
  P seen         hash: user -> last time (ms) a socket of theirs opened or closed.
  P node:<node>  the channel a node listens on for the frames of its sockets.
  P a:...        attention: the same presence keys again (a:o:, a:u:, a:n:, a:nodes,
                 a:seen), counting only the sockets whose client is active (not idle).
  P participants-changed  the channel that says a conversation's members changed.
  P rl:<key>     flood control: one bucket's time (ratelimit.py).
Scripts get the prefixes they complete with an id as arguments, so this module alone
knows the layout.

On a Redis Cluster a script may touch keys of one slot only. So the users are spread
over BUCKETS parts, each under a hash tag of its own, P{<b>} (b = user id % BUCKETS): a
part holds the whole layout above for its users (P{7}o:<user>, P{7}u:<user>, P{7}seen,
P{7}nodes, P{7}n:<node>), and each presence script runs once per part it concerns, the
parts side by side. Flood control buckets go the same way (P{<crc32 % BUCKETS>}rl:<key>).
A node's channel is tagged by the node, P node:{<node>}, and read with sharded pub/sub.
A part, not a slot per user: a batch of 500 users is at most BUCKETS script calls, not
500. One Redis keeps the plain names (a single part, no braces).
"""

from __future__ import annotations

import zlib
from importlib.resources import files

import redis.exceptions

# What a Redis outage looks like from here (refused, reset, timed out, still loading).
REDIS_UNREACHABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
    TimeoutError,
    # A cluster while a master is down and not yet replaced, or its slot map is stale.
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.RedisClusterException,
)

BUCKETS = 64  # parts of the key space on a cluster: at most this many shards share the load


class RedisKeys:
    """The key and channel names of one deployment, under its prefix."""

    def __init__(self, prefix: str, cluster: bool = False) -> None:
        self._prefix = prefix
        self.cluster = cluster
        self.nodes = f"{prefix}nodes"
        self.seen = f"{prefix}seen"
        # Completed with a user or node id, here or in a script.
        self.online_prefix = f"{prefix}o:"
        self.claims_prefix = f"{prefix}u:"
        self.held_prefix = f"{prefix}n:"
        self.channel_prefix = f"{prefix}node:"
        self.participants_changed = f"{prefix}participants-changed"
        # One part on one Redis (these very names); BUCKETS hash-tagged ones on a cluster.
        self.parts = [RedisKeys(f"{prefix}{{{b}}}") for b in range(BUCKETS)] if cluster else [self]

    def attention(self) -> RedisKeys:
        """The keys of attention: presence's layout, for the users' active sockets."""
        return RedisKeys(f"{self._prefix}a:", self.cluster)

    def part_of(self, user_id: int) -> int:
        """The index in `parts` of the part that holds a user's presence."""
        return user_id % len(self.parts)

    def rate_limit(self, key: str) -> str:
        """A flood control bucket's key."""
        if not self.cluster:
            return f"{self._prefix}rl:{key}"
        return f"{self._prefix}{{{zlib.crc32(key.encode()) % BUCKETS}}}rl:{key}"

    def online(self, user_id: int) -> str:
        """Present while some live node holds a socket of the user."""
        return f"{self.online_prefix}{user_id}"

    def claims(self, user_id: int) -> str:
        """The nodes that hold sockets of the user, each with the expiry of its claim."""
        return f"{self.claims_prefix}{user_id}"

    def held(self, node: str) -> str:
        """The users a node holds sockets of."""
        return f"{self.held_prefix}{node}"

    def channel(self, node: str) -> str:
        """Where other nodes publish the frames for a node's sockets (on a cluster tagged
        by the node, so each node's channel lives on one shard)."""
        if self.cluster:
            return f"{self.channel_prefix}{{{node}}}"
        return f"{self.channel_prefix}{node}"


def load_lua(name: str, package: str = "app.messenger") -> str:
    """The text of a Lua script shipped in a package beside the code that runs it."""
    return files(package).joinpath(name).read_text(encoding="utf-8")
