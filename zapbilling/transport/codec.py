"""JSON and msgpack bodies: content negotiation, and decoding with limits fit for untrusted
input. The body size limit itself is applied before any of this runs (see http.py).

Besides the per-container limits (a msgpack map or array of at most 10,000 items), the body as a
whole holds at most `Limits.request_elements` values, counted before or while it is decoded
(never after it is all built): 1 MiB of empty msgpack maps is a million dicts, ~75 MB of Python
objects, and 30 such requests at once took a server to 2.3 GB. A value is every item of a list,
every entry of a map (its key is not counted apart) and the body itself. Bodies too short to hold
that many values (each takes a byte in msgpack, two in JSON) skip the count: every call a
well-behaved caller makes but the largest batches pays one length comparison.

A msgpack body longer than LARGE_BODY is decoded incrementally (`Codec.decode_large`, awaited by
the transports), giving the event loop back between chunks of CHUNK bytes: decoded in one call,
1 MiB of empty maps held the loop ~90-150 ms, and another tenant's getBalance p99 went from ~5 ms
to hundreds of ms while one tenant sent such bodies. Shorter bodies keep the one-call `decode`.
"""
from __future__ import annotations

import asyncio
import json
import re
import weakref
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import msgpack

from ..errors import ParseError, PayloadTooLarge
from ..limits import Limits
from ..loop_turn import Step, next_loop_turn

MAX_BODY = Limits().body_bytes
"""The longest string a msgpack body may hold: the default body bound (Limits.body_bytes, which
http.py applies before decoding). Every text parameter's own bound is far below it."""

LARGE_BODY = 32 * 1024
"""Bodies longer than this are decoded by `Codec.decode_large` (the transports choose, by one
length comparison). A msgpack body this short decodes in at most ~3 ms (32 KiB of empty maps, the
worst case: ~88 ms per MiB without the counting hooks, which start above request_elements bytes),
so small bodies keep the one-call path and hold the loop no longer than one chunk of the
incremental one does."""
CHUNK = 8 * 1024
"""Bytes fed to the incremental msgpack decoder per loop turn: ~0.7 ms of decoding (8 KiB of empty
maps, the worst case, in either pass; the longest step measured over ten refusals of 1 MiB of
them was 1.1 ms); 1 MiB costs 128 loop turns of a few microseconds each. Other waits are as long:
the GIL's switch interval when a reader thread holds it."""

JSON_TYPE = "application/json"
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")

_MSGPACK_LIMITS = dict(
    raw=False,
    strict_map_key=True,     # map keys are text, as in JSON
    max_str_len=MAX_BODY,
    max_bin_len=64 * 1024,
    max_array_len=10_000,
    max_map_len=10_000,
    max_ext_len=0,           # no extension types (timestamps included): they have no JSON meaning
)


DEFAULT_ELEMENTS = Limits().request_elements


def too_many(max_values: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the body holds more than {max_values} values (items of lists and entries of maps): send fewer in one request")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
"""A JSON string, as the "unrolled loop": each byte is taken by exactly one branch, so a match
is linear and a failed one (an unterminated string, only ever the last quote) gives back in
linear time too; no backtracking on input."""
_JSON_SPACE = b" \t\r\n"


def _json_values(body: bytes, enough: int) -> int:
    """The values a JSON text holds, counted in its bytes without decoding it: 1 (the text)
    plus one per `,` plus one per non-empty `[` or `{`, outside strings. First an upper bound
    from three C-speed `bytes.count` passes (~3 ms per MiB in all), which settles every body
    but one whose strings hold many commas or brackets, or one of many values; its strings are
    then blanked by a linear regex and blanks dropped for the exact count (~10-17 ms per MiB,
    still less than json.loads of such a body). Returns the upper bound when it is at most
    `enough`, else the exact count: exact for valid JSON; for invalid JSON some number, and
    such a body is refused either way."""
    bound = 1 + body.count(b",") + body.count(b"[") + body.count(b"{")
    if bound <= enough:  # no more than `enough` for certain: the usual case, decided at once
        return bound
    bare = _JSON_STRING.sub(b'""', body).translate(None, _JSON_SPACE)
    return 1 + bare.count(b",") + bare.count(b"[") + bare.count(b"{") - bare.count(b"[]") - bare.count(b"{}")


def _decode_json(body: bytes, max_values: int) -> Any:
    # Counted before json.loads builds anything: the json module has no hook on arrays, so a
    # hook could not count `[[],[],...]`. A value takes a byte and needs a separator after it,
    # so a body of B bytes holds at most (B + 1) // 2 values: shorter bodies are not counted.
    if len(body) > 2 * max_values and _json_values(body, max_values) > max_values:
        raise too_many(max_values)
    value = json.loads(body, parse_constant=_reject_constant)
    if b"\\u" in body and _has_lone_surrogate(value):  # only an escape can make one
        raise ValueError("a \\u escape encodes a lone surrogate, which is not Unicode text")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    """JSON lets `\\ud800` through; such a string cannot be stored, echoed or encoded as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


_SHORT_BODY = min(_MSGPACK_LIMITS["max_bin_len"], _MSGPACK_LIMITS["max_array_len"], _MSGPACK_LIMITS["max_map_len"])
"""A body no longer than this cannot hold a string, binary, array or map over its length limit
(each takes at least a byte per byte or item): decoding it passes only the limits a short body
can break, and so decodes to the same value. Measured (timeit, a getBalance envelope): 0.78 ->
0.57 us a decode. A body it refuses is decoded again with every limit, for the same words as a
long body's refusal (unpackb names the limit it met: the body's length, here)."""


def _decode_msgpack(body: bytes, max_values: int) -> Any:
    if len(body) <= _SHORT_BODY and len(body) <= max_values:  # the usual call: short, and too short to hold too many values
        try:
            # the limits a short body can break, written out: `**` of a dict of them built a
            # dict on every call (timeit, a getBalance envelope: 0.84 -> 0.68 us a decode)
            return msgpack.unpackb(body, raw=False, strict_map_key=True, max_ext_len=0)
        except (ValueError, RecursionError, UnicodeDecodeError):
            pass  # refused: again below, for the refusal's words
    if len(body) > max_values:  # every msgpack value takes at least one byte: shorter bodies hold few enough
        msgpack.unpackb(body, **_counting_hooks(max_values), **_MSGPACK_LIMITS)
    return msgpack.unpackb(body, **_MSGPACK_LIMITS)


_NO_MAP: dict[str, Any] = {}
_NO_LIST: list[Any] = []


def _counting_hooks(max_values: int) -> dict[str, Callable[[Any], Any]]:
    """msgpack hooks for a first pass over a body that may hold too many values: they count
    the values as each map and list is completed (the body itself is 1), raise too_many once
    the count passes `max_values`, and keep nothing. Each container is dropped as soon as it is
    counted (a shared empty one of its type stands in for it, so that a container used as a map
    key is refused in the same words as by the decoding pass), and a body that passes is then
    decoded by a second pass without hooks.

    Keeping what was built, as one pass with hooks did, cost three times as much where it
    matters: refusing 1 MiB of empty maps (issue 17) took ~50 ms, ~25 ms of it in the garbage
    collector's oldest generation (14 full collections per 5 refusals, up to 3.8 ms each, all
    of them over the 262,144 dicts built so far); the counting pass refuses it in ~21 ms with no
    full collection. A body that passes pays both passes: ~1 ms instead of ~0.5 ms for 795 KB
    of a batch of deposits with the largest metadata, and only bodies longer than
    `max_values` bytes are counted at all."""
    count = 1

    def counting(stand_in: Any) -> Callable[[Any], Any]:
        def counted(container: Any) -> Any:
            nonlocal count
            count += len(container)
            if count > max_values:
                raise too_many(max_values)
            return stand_in

        return counted

    return {"object_pairs_hook": counting(_NO_MAP), "list_hook": counting(_NO_LIST)}


_one_at_a_time: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()
"""One large msgpack body is decoded at a time, per event loop, as when each decode held the loop
whole: bodies decoded at once would each hold a partial decode (up to request_elements values,
~20 MB for 262,144 empty maps), and 30 bodies of empty maps at once grew a server by 585 MB
instead of the <300 MB tests/test_request_sizes.py allows. The others wait their turn without
holding the loop; small bodies never wait. Per loop, because an asyncio.Lock binds to one."""


def _decode_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _one_at_a_time.get(loop)
    if lock is None:
        lock = _one_at_a_time[loop] = asyncio.Lock()
    return lock


async def _decode_msgpack_large(body: bytes, max_values: int, chunk: int = CHUNK, step: Step = next_loop_turn) -> Any:
    async with _decode_lock():
        return await _decode_msgpack_chunks(body, max_values, chunk, step)


async def _decode_msgpack_chunks(body: bytes, max_values: int, chunk: int, step: Step) -> Any:
    """`_decode_msgpack`, with the same passes, values, limits, count and errors, awaiting `step`
    before each `chunk` bytes of each pass."""
    if len(body) > max_values:
        await _unpack_chunks(body, chunk, _counting_hooks(max_values), step)
    return await _unpack_chunks(body, chunk, {}, step)


async def _unpack_chunks(body: bytes, chunk: int, hooks: dict[str, Callable[[Any], Any]], step: Step) -> Any:
    """The body fed to a msgpack.Unpacker a chunk at a time, `step` awaited before each; its
    `unpack` raises OutOfData until the one top-level value is complete.

    The C Unpacker resumes a partly parsed value where the previous feed ended, keeping its
    stack of open containers, rather than parsing the value again from its start. Tried with
    msgpack 1.2.4: a 254 KiB body of 260,028 nested containers made the same 260,028 hook calls
    whether decoded by one unpackb or fed by 16 KiB, 1 KiB or 7 bytes, and took 57 ms fed by
    16 KiB against 61 ms by unpackb (linear: 118 ms even by 7 bytes). unpackb's own answers are
    kept where the Unpacker has others: a body that ends inside the value is "incomplete
    input" (Unpacker: OutOfData), and bytes after the value are ExtraData (Unpacker: left for
    a next `unpack`)."""
    # The buffer holds at most the body (its default bound, 100 MiB, could refuse a body that a
    # larger configured Limits.body_bytes lets through).
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(body), chunk), **hooks, **_MSGPACK_LIMITS)
    view = memoryview(body)
    for start in range(0, len(body), chunk):
        await step()
        unpacker.feed(view[start:start + chunk])
        try:
            value = unpacker.unpack()
        except msgpack.OutOfData:
            continue
        end = unpacker.tell()
        if end != len(body):
            raise msgpack.ExtraData(value, body[end:])  # "unpack(b) received extra data.", as unpackb
        return value
    raise ValueError("Unpack failed: incomplete input")  # unpackb's words


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_packb = msgpack.Packer(use_bin_type=True).pack
_json_chunks = (
    c_make_encoder(None, json.JSONEncoder().default, encode_basestring, None, ":", ",", False, False, False)
    if c_make_encoder is not None else None
)
"""The C encoder `_dumps` builds anew on every call, built once (no indent, no circular check:
answers are trees; NaN refused): the same bytes, and 2.6 -> 1.7 us for a getBalance answer
(timeit). It also makes encoding a batch's answers one by one cost what encoding the list did
(100 getBalance answers: 153 us as a list with `_dumps`, 172 us one by one; 309 us one by one
with `_dumps`)."""


def _encode_json(value: Any) -> bytes:
    if _json_chunks is None:  # no C accelerator (another Python): the pure-Python encoder
        return _dumps(value).encode()
    return "".join(_json_chunks(value, 0)).encode()


Frame = tuple[bytes, bytes, bytes]
"""An array's bytes around its items: before the first, between two, after the last."""
_JSON_FRAME = (b"[", b",", b"]")


def _json_frame(n: int) -> Frame:
    return _JSON_FRAME


def _msgpack_frame(n: int) -> Frame:
    head = bytes((0x90 | n,)) if n < 16 else b"\xdc" + n.to_bytes(2, "big") if n < 1 << 16 else b"\xdd" + n.to_bytes(4, "big")
    return head, b"", b""


@dataclass(frozen=True)
class Codec:
    content_type: str
    _decode: Callable[[bytes, int], Any]
    encode: Callable[[Any], bytes]
    """The value's bytes: the encoder itself (msgpack's Packer.pack, in C), called without a
    method of this class around it."""
    _frame: Callable[[int], Frame]
    _decode_large: Callable[[bytes, int, int, Step], Awaitable[Any]] | None = None

    def decode(self, body: bytes, max_values: int = DEFAULT_ELEMENTS) -> Any:
        """Raises ParseError for anything undecodable, however deep or malformed, and
        PayloadTooLarge for a body of more than `max_values` values (Limits.request_elements).
        In one call: for bodies of at most LARGE_BODY bytes (longer ones: `decode_large`)."""
        try:
            return self._decode(body, max_values)
        except (ValueError, RecursionError, UnicodeDecodeError) as exc:
            raise self._parse_error(exc) from None

    async def decode_large(self, body: bytes, max_values: int = DEFAULT_ELEMENTS, step: Step = next_loop_turn) -> Any:
        """`decode`, with the same answers, for a body longer than LARGE_BODY, awaiting `step`
        before each CHUNK bytes of msgpack. JSON decodes in one step: its values are counted in
        its bytes at C speed first, json.loads of 1 MiB holds the loop ~10 ms (a tenth of what
        msgpack with its counting hooks did), and the json module has no parser to resume."""
        if self._decode_large is None:
            await step()
            return self.decode(body, max_values)
        try:
            return await self._decode_large(body, max_values, CHUNK, step)
        except (ValueError, RecursionError, UnicodeDecodeError) as exc:
            raise self._parse_error(exc) from None

    def _parse_error(self, exc: Exception) -> ParseError:
        return ParseError(f"body is not valid {self.name}: {str(exc)[:120] or type(exc).__name__}")

    def encode_array(self, pieces: list[bytes]) -> bytes:
        """The array of values already encoded one by one: `encode([a, b])` from `encode(a)`, `encode(b)`."""
        head, between, tail = self._frame(len(pieces))
        return head + between.join(pieces) + tail

    def array_frame(self, n: int) -> Frame:
        """What `encode_array` puts around and between `n` pieces, for a caller joining them itself."""
        return self._frame(n)

    @property
    def name(self) -> str:
        return "JSON" if self.content_type == JSON_TYPE else "msgpack"


JSON = Codec(JSON_TYPE, _decode_json, _encode_json, _json_frame)
CODECS: dict[str, Codec] = {JSON_TYPE: JSON} | {t: Codec(t, _decode_msgpack, _packb, _msgpack_frame, _decode_msgpack_large) for t in MSGPACK_TYPES}


def codec_for(content_type: str) -> Codec | None:
    """The codec for a (parameter-free, lower-case) media type, or None if unsupported."""
    return CODECS.get(content_type)


def negotiate(default: Codec, accept: str | None) -> Codec:
    """The response codec: the request's own, unless Accept names only other supported ones."""
    if not accept:
        return default
    named = [t.split(";", 1)[0].strip().lower() for t in accept.split(",")]
    if default.content_type in named or "*/*" in named or "application/*" in named:
        return default
    for t in named:
        if t in CODECS:
            return CODECS[t]
    return default
