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
Scripts get the prefixes they complete with an id as arguments, so this module alone
knows the layout. (One Redis, not Redis Cluster: the scripts touch keys they compute.)
"""

from __future__ import annotations

from importlib.resources import files

import redis.exceptions

# What a Redis outage looks like from here (refused, reset, timed out, still loading).
REDIS_UNREACHABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
    TimeoutError,
)


class RedisKeys:
    """The key and channel names of one deployment, under its prefix."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self.nodes = f"{prefix}nodes"
        self.seen = f"{prefix}seen"
        # Completed with a user or node id, here or in a script.
        self.online_prefix = f"{prefix}o:"
        self.claims_prefix = f"{prefix}u:"
        self.held_prefix = f"{prefix}n:"
        self.channel_prefix = f"{prefix}node:"

    def attention(self) -> RedisKeys:
        """The keys of attention: presence's layout, for the users' active sockets."""
        return RedisKeys(f"{self._prefix}a:")

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
        """Where other nodes publish the frames for a node's sockets."""
        return f"{self.channel_prefix}{node}"


def load_lua(name: str, package: str = "app.messenger") -> str:
    """The text of a Lua script shipped in a package beside the code that runs it."""
    return files(package).joinpath(name).read_text(encoding="utf-8")
