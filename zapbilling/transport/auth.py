"""API keys from the Authorization header: `Bearer <key>`, a bare key (as the Go reference service's own
tests send it) or HTTP Basic with the key as user name (as Stripe's callers do). Keys in the
query string are refused on purpose: URLs end up in logs."""
from __future__ import annotations

import binascii
import logging
from base64 import b64decode
from urllib.parse import parse_qsl, unquote_to_bytes

from ..errors import InvalidRequest, Unauthorized
from ..store import Principal, Store
from .faults import fault

QUERY_KEY_PARAMS = ("key", "token", "api_key", "apiKey")
_REFUSED = "missing or invalid API key: send it as Authorization: Bearer <key>"

log = logging.getLogger("zapbilling")


def key_from_header(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    rest = rest.strip()
    if scheme.lower() == "bearer":
        return rest or None
    if scheme.lower() == "basic":
        try:
            user, _, password = b64decode(rest, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user or password or None
    return None if rest else scheme  # a bare key has no spaces


async def authenticate(store: Store, authorization: str | None, query_string: str) -> Principal:
    if query_string and any(name in QUERY_KEY_PARAMS for name, _ in parse_qsl(query_string, keep_blank_values=True)):
        raise Unauthorized("API keys in the query string are refused: send Authorization: Bearer <key>")
    secret = _secrets.get(authorization) or key_from_header(authorization)
    if not secret:
        raise key_refused()
    try:
        principal = await store.authenticate(secret)
    except Exception as exc:  # the database cannot be read (PostgreSQL down): the contract's internal error, at once
        # one line, no traceback: the cause is the database's, and is all in its message
        raise fault("an API key could not be checked: %s: %s", type(exc).__name__, exc, traceback=False) from None
    if principal is None:
        raise key_refused()
    _remember(authorization, secret)
    if query_string and ("%" in query_string or not query_string.isascii()):
        _check_text(query_string)
    return principal


def known(store: Store, authorization: str | None, query_string: str) -> Principal | None:
    """`authenticate`'s principal when it is at hand: no query string (nothing to refuse or
    check in it) and a key the store knows exactly without a read (Store.known_key). None:
    ask `authenticate`. The usual request then makes no coroutine for its key (two of them:
    authenticate's and the store's)."""
    if query_string:
        return None
    secret = _secrets.get(authorization)  # the header's key, as parsed before: a call less per request
    if secret is not None:
        return store.known_key(secret)
    secret = key_from_header(authorization)
    if secret is None:
        return None
    principal = store.known_key(secret)
    if principal is not None:
        _remember(authorization, secret)
    return principal


def _remember(authorization: str | None, secret: str) -> None:
    """A valid key's header, so that garbage cannot fill the memo; `authenticate` remembers too,
    so that a store that never knows a key at hand (PostgreSQL: known_key is always None) does
    not have the header parsed twice per request, here and in `authenticate`."""
    if len(_secrets) < MAX_REMEMBERED_HEADERS:
        _secrets[authorization] = secret


MAX_REMEMBERED_HEADERS = 1024
_secrets: dict[str | None, str] = {}
"""Authorization headers whose key the store knew, and that key (key_from_header's answer,
which depends on the header alone), so that a caller's next request does not parse it again
(callgrind, getBalance, with KeyQueries.known_key reading the epoch itself: 319.8k -> 317.6k
instructions per request). Only a valid key's header is remembered, so garbage cannot fill
it; bounded: once full, other headers are parsed each time. Held in memory as the store's key
cache holds the keys themselves."""


def key_refused() -> Unauthorized:
    """The answer to a missing, unknown or revoked key: the same for all three."""
    return Unauthorized(_REFUSED)


def _check_text(query_string: str) -> None:
    """A query string must be UTF-8 once percent-decoded: aiohttp would hand on U+FFFD in place
    of each bad byte, and a user id or tag silently changed is worse than a refusal. Here, once
    for both transports, after the key (a caller without one learns nothing more)."""
    try:
        unquote_to_bytes(query_string).decode("utf-8")  # raw non-UTF-8 bytes arrive as lone surrogates: encoding them fails too
    except UnicodeError:
        raise InvalidRequest("the query string is not valid UTF-8 once percent-decoded") from None
