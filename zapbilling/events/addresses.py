"""Where a webhook may be sent: an absolute http:// or https:// URL whose host is not, and does
not resolve to, an address inside a private network (loopback, RFC 1918 and unique-local,
link-local, carrier-grade NAT, unspecified, multicast, reserved, documentation ranges), so that a
caller cannot make the server POST to the machine it runs on or to its neighbours (SSRF).

Checked twice: when an endpoint is created (`check_url`, a literal address or every address its
host name resolves to), and at delivery time on the address actually connected to (`refused`,
used by the sender), because a name's DNS answer can change after creation. A server started
with `--webhook-allow-private` skips both checks (tests and private deployments deliver to
loopback or to their own network).
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

PRIVATE = "url must not point to a private address"
NOT_ABSOLUTE = "url must be an absolute http:// or https:// URL with a host"

RESOLVE_SECONDS = 5.0
"""How long creation waits for the host's DNS answer. A name that does not resolve (or not in
time) is accepted: it cannot be reached now, and the delivery-time check judges whatever it
resolves to later."""

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BadUrl(ValueError):
    """A URL a webhook may not be sent to; the message is the caller's."""


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries to reach it (mapped, 6to4, Teredo, NAT64): it must
    pass the check too, or `::ffff:127.0.0.1` would be loopback in disguise."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's address
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def refused(address: str | Address) -> bool:
    """Whether a delivery must not go to this address: anything not globally routable, and
    multicast (which Python counts as global)."""
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return True  # not an address at all: nothing to connect to safely
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return True  # fe80::1%eth0: link-local by construction
        if ip.ipv4_mapped is not None:
            return refused(ip.ipv4_mapped)  # ::ffff:a.b.c.d is a.b.c.d, whatever Python says of ::ffff:0:0/96
        inner = _embedded_ipv4(ip)
        if inner is not None and refused(inner):
            return True
    return not ip.is_global or ip.is_multicast or ip.is_private or ip.is_reserved or ip.is_loopback or ip.is_link_local


def split(url: str) -> tuple[str, int]:
    """(host, port) of an absolute http(s) URL; BadUrl otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port out of range or not a number
    except ValueError:
        raise BadUrl(NOT_ABSOLUTE) from None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("http", "https") or not host or any(c.isspace() for c in url):
        raise BadUrl(NOT_ABSOLUTE)
    return host, port or (443 if scheme == "https" else 80)


async def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to now (a literal address: itself), or [] when it does not
    resolve within RESOLVE_SECONDS. getaddrinfo also reads the forms inet_aton accepts, so
    `http://2130706433/` and `http://0x7f.1/` are seen as 127.0.0.1."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_SECONDS)
    except (OSError, UnicodeError, asyncio.TimeoutError):
        return []
    return [str(info[4][0]) for info in infos]


async def check_url(url: str, allow_private: bool) -> None:
    """BadUrl unless a webhook may be sent to `url`: NOT_ABSOLUTE, or PRIVATE when its host is,
    or resolves to, a refused address (any of them: a name answering both a public and a
    loopback address is refused). `allow_private` skips the address check, not the URL's form."""
    host, port = split(url)
    if allow_private:
        return
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        if refused(literal):
            raise BadUrl(PRIVATE)
        return
    if host.rstrip(".").lower() == "localhost" or host.rstrip(".").lower().endswith(".localhost"):
        raise BadUrl(PRIVATE)  # RFC 6761: loopback whatever a resolver answers
    if any(refused(a.split("%")[0]) or "%" in a for a in await resolve(host, port)):
        raise BadUrl(PRIVATE)
