"""The delivery-time address check (the contract: a DNS answer cannot point a delivery inside):
the sender's aiohttp connector resolves names through this resolver, which refuses a name that
resolves to any address addresses.refused rejects, so the check is made on the very addresses
the connection is then made to (no second look-up an attacker's DNS could answer differently).
aiohttp does not ask a resolver about a literal address, so the sender checks those itself
(`literal_refusal`)."""
from __future__ import annotations

import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from .addresses import refused

WHY = "the server runs without --webhook-allow-private"


class PrivateAddress(OSError):
    """A delivery refused before connecting; the message is the attempt's error in the log."""


class CheckedResolver(AbstractResolver):
    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for r in found:
            if refused(r["host"].split("%")[0]) or "%" in r["host"]:
                raise PrivateAddress(f"{host} resolves to {r['host']}, a private address ({WHY})")
        return found

    async def close(self) -> None:
        await self._inner.close()


def literal_refusal(host: str) -> str | None:
    """Why a URL whose host is a literal address may not be sent to, or None (a name: the
    resolver judges it)."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return f"{host} is a private address ({WHY})" if refused(ip) else None
