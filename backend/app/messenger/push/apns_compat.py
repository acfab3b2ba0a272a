"""Where the APNs provider reaches into aioapns internals, and what it does without them.

aioapns has no public way to share one provider JWT among its connections, to connect
to a host other than Apple's, or to forget a request it is still waiting for. The
provider does each through aioapns internals (the version is pinned). Each is checked
before its first use, once per class, and an aioapns without what one of them needs
loses only that one:

- shared JWT: each connection signs its own token, as aioapns does by default (said
  once). APNs may then answer TooManyProviderTokenUpdates when connections churn.
- endpoint: APNS_ENDPOINT cannot be honoured, so the provider refuses to start rather
  than send to Apple's host instead. Without APNS_ENDPOINT nothing is lost.
- abandon: a timed-out request stays in aioapns's table and its connection is kept
  (said once); the send is still a retry. When that connection closes, aioapns trips
  over the cancelled future (asyncio logs it); requests still on it time out and retry.
- streams: at most STREAMS_PER_CONNECTION requests on one connection, so that their
  bodies always fit its HTTP/2 flow-control window. aioapns fills a connection up to
  the server's stream limit (APNs: 1,000) before opening another, and a request that
  finds the window spent waits a whole second: a burst of 100 pushes of about 700 bytes
  made a tenth of them a second late. Without it (said once), that wait stays.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, MutableMapping
from typing import Any

from h2.settings import SettingCodes

from app.config import ConfigError

log = logging.getLogger(__name__)

OWN_TOKENS = "apns connections sign their own provider tokens"
KEPT_ON_TIMEOUT = "apns timed-out requests stay with their connection"
UNCAPPED = "apns connections take as many requests as the server allows"
# The connection window every HTTP/2 peer starts with (RFC 9113 6.9.2), divided by the
# largest APNs payload: requests whose bodies fit the window whatever their size.
STREAMS_PER_CONNECTION = 65_535 // 4096

# (check, class): why it cannot be done there, or None. Classes do not change.
_verdicts: dict[tuple[str, type], str | None] = {}
_said: set[tuple[str, str]] = set()
_ABSENT = object()


def prepare_pool(
    pool: object, *, key: str, key_id: str, team_id: str, endpoint: tuple[str, int] | None
) -> None:
    """Make the pool's connections share one provider JWT and go to `endpoint` (None:
    Apple's host), as far as this aioapns allows.

    Raises ConfigError when `endpoint` is given and cannot be honoured.
    """
    base = getattr(pool, "protocol_class", None)
    tls = _aioapns("APNsTLSClientProtocol")
    if not (isinstance(tls, type) and isinstance(base, type) and issubclass(base, tls)):
        no_class = "the pool has no protocol_class deriving from APNsTLSClientProtocol"
        if endpoint is not None:
            raise _endpoint_refused(no_class)
        _say_once(OWN_TOKENS, no_class)
        return
    if endpoint is not None and (why := _verdict("endpoint", base, _endpoint_unsupported)):
        raise _endpoint_refused(why)
    auth = _shared_auth(base, key=key, key_id=key_id, team_id=team_id)
    pool.protocol_class = _protocol_class(base, auth, endpoint)  # type: ignore[attr-defined]


def abandon(pool: object, notification_id: str) -> None:
    """Drop a request that timed out, and the connection it hangs on.

    aioapns keeps the cancelled future and its stream slot: a late answer would hit the
    cancelled future and break the connection for every other request, and the slots
    would run out. A connection that left a request unanswered this long is not
    healthy: abort it (aioapns re-sends its other requests on another).
    """
    connections = getattr(pool, "connections", None)
    if not isinstance(connections, list):
        _say_once(KEPT_ON_TIMEOUT, "the pool has no list of connections")
        return
    for connection in list(connections):
        if why := _verdict("abandon", type(connection), _abandon_unsupported, connection):
            _say_once(KEPT_ON_TIMEOUT, why)
            continue
        requests: MutableMapping[str, Any] = connection.requests
        if requests.pop(notification_id, None) is None:
            continue
        # Other timed-out requests' futures too: connection_lost would trip on them.
        for key in [k for k, future in requests.items() if future.done()]:
            del requests[key]
        # abort, not close: a hung peer may never finish the TLS shutdown.
        if connection.transport is not None:
            connection.transport.abort()


def _protocol_class(
    base: type[Any], auth: object | None, endpoint: tuple[str, int] | None
) -> type[Any]:
    class Protocol(base):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if auth is not None:
                # One provider JWT for all connections (aioapns makes one per connection):
                # APNs answers TooManyProviderTokenUpdates to tokens renewed too often.
                self.auth_provider = auth
            _set_streams(self, STREAMS_PER_CONNECTION)

        def on_remote_settings_changed(self, changed_settings: Any) -> None:
            # The server's stream limit, never above ours, applied here: aioapns's own
            # raise of a limit, with every stream taken, counts them free again.
            streams = changed_settings.get(SettingCodes.MAX_CONCURRENT_STREAMS)
            rest = {
                k: v
                for k, v in changed_settings.items()
                if k != SettingCodes.MAX_CONCURRENT_STREAMS
            }
            super().on_remote_settings_changed(rest)
            if streams is not None:
                _set_streams(self, min(streams.new_value, STREAMS_PER_CONNECTION))

    if endpoint is not None:  # APNS_ENDPOINT: "host" header and TLS name follow it
        Protocol.APNS_SERVER, Protocol.APNS_PORT = endpoint
    return Protocol


def _set_streams(connection: object, limit: int) -> None:
    """Set a connection's stream limit with the streams in use still counted: those
    above a lower limit are waited out, the room of a higher one goes to waiters."""
    channels = getattr(connection, "free_channels", None)
    if not (
        isinstance(getattr(channels, "_bound_value", None), int)
        and isinstance(getattr(channels, "_value", None), int)
        and callable(getattr(channels, "_wake_up_next", None))
    ):
        _say_once(UNCAPPED, "the connection's free_channels is not the semaphore it was")
        return
    in_use = channels._bound_value - channels._value  # type: ignore[union-attr]
    channels._bound_value = limit  # type: ignore[union-attr]
    channels._value = limit - in_use  # type: ignore[union-attr]
    # Each waiter woken takes one of the free streams (asyncio.Semaphore's own way).
    while channels._value > 0 and channels._wake_up_next():  # type: ignore[union-attr]
        pass


def _shared_auth(base: type, *, key: str, key_id: str, team_id: str) -> object | None:
    """One token provider for every connection, or None: each signs its own."""
    if why := _verdict("shared_jwt", base, _shared_jwt_unsupported):
        _say_once(OWN_TOKENS, why)
        return None
    try:
        auth: object = _aioapns("JWTAuthorizationHeaderProvider")(
            key=key, key_id=key_id, team_id=team_id
        )
    except TypeError as exc:
        _say_once(OWN_TOKENS, f"JWTAuthorizationHeaderProvider: {exc}")
        return None
    return auth


def _shared_jwt_unsupported(base: type) -> str | None:
    jwt_provider = _aioapns("JWTAuthorizationHeaderProvider")
    if not callable(getattr(jwt_provider, "get_header", None)):
        return "aioapns has no JWTAuthorizationHeaderProvider with get_header"
    # A connection holds its token provider as auth_provider: that is what is replaced.
    try:
        takes_auth = "auth_provider" in inspect.signature(base).parameters
    except (TypeError, ValueError):
        takes_auth = False
    if not takes_auth:
        return f"{base.__name__} takes no auth_provider"
    return None


def _endpoint_unsupported(base: type) -> str | None:
    # What the pool connects to, and what the "host" header names.
    server, port = getattr(base, "APNS_SERVER", None), getattr(base, "APNS_PORT", None)
    if not isinstance(server, str) or not isinstance(port, int):
        return f"{base.__name__} has no APNS_SERVER and APNS_PORT"
    return None


def _abandon_unsupported(_kind: type, connection: object) -> str | None:
    if not isinstance(getattr(connection, "requests", None), MutableMapping):
        return "connection.requests is not a mapping"
    transport = getattr(connection, "transport", _ABSENT)
    if transport is _ABSENT:
        return "connection has no transport"
    if transport is not None and not callable(getattr(transport, "abort", None)):
        return "connection.transport cannot abort"
    return None


def _verdict(
    check: str, kind: type, why_not: Callable[..., str | None], *args: object
) -> str | None:
    """why_not(kind, *args), worked out once per check and class."""
    key = (check, kind)
    if key not in _verdicts:
        _verdicts[key] = why_not(kind, *args)
    return _verdicts[key]


def _endpoint_refused(why: str) -> ConfigError:
    return ConfigError(
        f"APNS_ENDPOINT cannot be honoured by this aioapns ({why}); unset it, or install "
        "the aioapns version the project pins"
    )


def _aioapns(name: str) -> Any:
    """A class of aioapns.connection, or None."""
    try:
        module = importlib.import_module("aioapns.connection")
    except ImportError:
        return None
    return getattr(module, name, None)


def _say_once(what: str, why: str) -> None:
    if (what, why) not in _said:
        _said.add((what, why))
        log.warning("%s: %s", what, why)
