"""Where Web Push may send: the push services browsers subscribe with, and nowhere else.

A subscription's endpoint is a URL the client chose; without these checks the node
would POST to any address a user names (its own database, a cloud metadata service,
an intranet admin page) and tell them from the outcome whether it answered. So an
endpoint must be https on port 443 of a known push service's host name, with no user
name or password; the resolved addresses must be public; nothing else is contacted.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from yarl import URL

from app.config import ConfigError, Settings
from app.messenger.push.http_client import resolve_any

# The hosts browsers' PushSubscription endpoints point at; `*.suffix` is any name under it.
KNOWN_PUSH_HOSTS: tuple[str, ...] = (
    "fcm.googleapis.com",  # Chrome, Edge on Android, Opera, Samsung Internet, Brave
    "android.googleapis.com",  # subscriptions made by older Chrome versions
    "jmt17.google.com",  # Chromium builds without Google's API keys (Debian, Ubuntu)
    "updates.push.services.mozilla.com",  # Firefox
    "push.services.mozilla.com",
    "*.notify.windows.com",  # Edge on Windows (WNS)
    "web.push.apple.com",  # Safari on macOS and iOS
    "*.push.apple.com",
)

# Only what RFC 3986 allows, nothing a parser could read two ways (no backslash, no
# whitespace, no fragment): the URL checked here is the URL connected to.
_URL = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#\\\s]*)"
    r"(?P<rest>/[A-Za-z0-9\-._~!$&'()*+,;=:@/%?]*)",
    re.ASCII,
)
_HOST_PORT = re.compile(
    r"(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?", re.ASCII
)
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)


class EndpointRefused(ValueError):
    """The endpoint is not one this server sends to; the message says why (no URL in it)."""


class NonPublicAddress(OSError):
    """A push service's name resolved only to private, loopback or reserved addresses."""


@dataclass(frozen=True, slots=True)
class PushTarget:
    url: URL  # what to POST to: exactly what was checked
    service: str  # the allowed-hosts entry it matched (the host itself when any is allowed)

    @property
    def origin(self) -> str:
        """scheme://host[:port], lower case: the VAPID audience, and what a log may name."""
        return str(self.url.origin()).lower()


@dataclass(frozen=True, slots=True)
class EndpointPolicy:
    """Which subscription endpoints are allowed.

    `extra_hosts` extends KNOWN_PUSH_HOSTS (exact names or `*.suffix`).
    `allow_any` is for staging and tests only: any http(s) URL on any host, address and
    port (the local push service fakes listen on http://127.0.0.1:<port>).
    """

    extra_hosts: tuple[str, ...] = ()
    allow_any: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> EndpointPolicy:
        """WEB_PUSH_EXTRA_HOSTS (comma-separated) and WEB_PUSH_ALLOW_ANY_ENDPOINT."""
        extra = settings.web_push_extra_hosts.split(",")
        hosts = tuple(h.strip().lower() for h in extra if h.strip())
        for entry in hosts:
            if not _is_host_name(entry.removeprefix("*.")):
                raise ConfigError(f"WEB_PUSH_EXTRA_HOSTS: {entry!r} is not a host name or *.suffix")
        return cls(extra_hosts=hosts, allow_any=settings.web_push_allow_any_endpoint)

    @property
    def hosts(self) -> tuple[str, ...]:
        return KNOWN_PUSH_HOSTS + self.extra_hosts

    def check(self, endpoint: object) -> PushTarget:
        """The target to send to, or EndpointRefused saying what is wrong."""
        match = _URL.fullmatch(endpoint) if isinstance(endpoint, str) else None
        if match is None or not isinstance(endpoint, str):
            raise EndpointRefused("the subscription endpoint is not an https URL")
        scheme = match["scheme"].lower()
        if scheme != "https" and not (self.allow_any and scheme == "http"):
            raise EndpointRefused("the subscription endpoint is not an https URL")
        authority = match["authority"]
        if "@" in authority:
            raise EndpointRefused("the subscription endpoint must not carry a user name")
        host_port = _HOST_PORT.fullmatch(authority)
        if host_port is None:
            raise EndpointRefused("the subscription endpoint has no valid host name")
        host = host_port["host"].lower()
        port = int(host_port["port"]) if host_port["port"] else None
        # yarl is what the client connects with: it must read the same host and no user name.
        try:
            url = URL(endpoint, encoded=True)  # sent as the push service wrote it
            same = url.host == host.strip("[]") and url.user is None and url.password is None
        except ValueError:  # a port out of range, say
            same = False
        if not same:
            raise EndpointRefused("the subscription endpoint is not an https URL")
        if self.allow_any:
            return PushTarget(url, f"{host}:{url.port}")
        if port not in (None, 443):
            raise EndpointRefused("the subscription endpoint must use the https port, 443")
        if _is_ip_address(host):
            raise EndpointRefused(
                "the subscription endpoint is an IP address, not a push service's host name"
            )
        if not _is_host_name(host):
            raise EndpointRefused("the subscription endpoint has no valid host name")
        service = self.service_for(host)
        if service is None:
            raise EndpointRefused(
                "the subscription endpoint is not on a known push service "
                "(FCM, Mozilla, Windows or Apple)"
            )
        return PushTarget(url, service)

    def service_for(self, host: str) -> str | None:
        for entry in self.hosts:
            if entry.startswith("*."):
                if host.endswith(entry[1:]):
                    return entry
            elif host == entry:
                return entry
        return None


async def resolve_public(host: str, port: int) -> list[str]:
    """The system resolver's addresses for a push service's name, keeping only globally
    routable ones: a name that resolves into a private network is never connected to."""
    public = [a for a in await resolve_any(host, port) if is_public_address(a)]
    if not public:
        raise NonPublicAddress("the push service's name has no public address")
    return public


# NAT64 prefixes whose addresses carry an IPv4 address in their last 32 bits: the
# well-known one (RFC 6052) and the local-use one (RFC 8215, as commonly deployed: a /96).
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated, still routed by some stacks


def is_public_address(host: str) -> bool:
    """Whether an address is globally routable, and so is every IPv4 address it carries:
    `is_global` alone passes IPv6 forms that reach a private IPv4 address through a
    translator or tunnel (64:ff9b::10.0.0.1, 2002:a00:1::, ::10.0.0.1)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if not address.is_global:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        return all(ipv4.is_global for ipv4 in embedded_ipv4(address))
    return True


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address leads to: IPv4-mapped, 6to4, Teredo (server
    and client), NAT64 and IPv4-compatible."""
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address.sixtofour is not None:
        found.append(address.sixtofour)
    if address.teredo is not None:
        found.extend(address.teredo)
    if address in _IPV4_COMPATIBLE or any(address in prefix for prefix in _NAT64):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF))
    return found


def _is_ip_address(host: str) -> bool:
    """An IP address in any spelling (dotted, decimal, octal, hex, [IPv6]): no top-level
    domain starts with a digit."""
    last = host.rstrip(".").rsplit(".", 1)[-1]
    return host.startswith("[") or not last or last[0].isdigit()


def _is_host_name(host: str) -> bool:
    """A DNS name whose top-level domain starts with a letter (so not an IP address)."""
    labels = host.split(".")
    return (
        len(host) <= 253
        and all(_LABEL.fullmatch(label) for label in labels)
        and labels[-1][0].isalpha()
    )
