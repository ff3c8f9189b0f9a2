"""JSON and msgpack bodies: content negotiation, and decoding with limits fit for untrusted
input. The body size limit itself is applied before any of this runs (see http.py)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import msgpack

from ..errors import ParseError

MAX_BODY = 1 << 20
"""1 MiB: larger bodies are refused (413) before they are decoded."""

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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _decode_json(body: bytes) -> Any:
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


def _decode_msgpack(body: bytes) -> Any:
    return msgpack.unpackb(body, **_MSGPACK_LIMITS)


_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_packb = msgpack.Packer(use_bin_type=True).pack


@dataclass(frozen=True)
class Codec:
    content_type: str
    _decode: Callable[[bytes], Any]
    _encode: Callable[[Any], bytes]

    def decode(self, body: bytes) -> Any:
        """Raises ParseError for anything undecodable, however deep or malformed."""
        try:
            return self._decode(body)
        except (ValueError, RecursionError, UnicodeDecodeError) as exc:
            raise ParseError(f"body is not valid {self.name}: {str(exc)[:120] or type(exc).__name__}") from None

    def encode(self, value: Any) -> bytes:
        return self._encode(value)

    @property
    def name(self) -> str:
        return "JSON" if self.content_type == JSON_TYPE else "msgpack"


JSON = Codec(JSON_TYPE, _decode_json, lambda v: _dumps(v).encode())
CODECS: dict[str, Codec] = {JSON_TYPE: JSON} | {t: Codec(t, _decode_msgpack, _packb) for t in MSGPACK_TYPES}


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
