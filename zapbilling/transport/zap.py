"""POST /api/v1/zap: one envelope `{method, id, params}` or a batch of them, in JSON or
msgpack, dispatched as a plain pipeline: authenticate, decode, validate, call, encode."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from ..config import MAX_BATCH as MAX_BATCH  # defined there for the settings' checks; re-exported
from ..errors import ApiError, InvalidRequest, MethodNotFound, UnsupportedMediaType
from ..store import Principal
from .admission import Admission
from .calls import Caller
from .answers import answer_batch
from .codec import JSON, LARGE_BODY, Codec, codec_for, negotiate
from .facts import FACTS, Call, Facts, one_call, refused, release
from .faults import Fault, error_id_of
from .http import respond, respond_error

PATHS = ("/api/v1/zap", "/api/v1/billing/zap")
"""Where the endpoint is served: the second sits beside the REST routes, under /billing."""
ID_MIN, ID_MAX = -(2**63), 2**64 - 1
"""Integer ids both codecs can echo (msgpack stops at int64 and uint64)."""
DISCOVER = "zap.discover"
MAX_REMEMBERED_CODECS = 64


def error_envelope(exc: ApiError, id: Any = None, jsonrpc: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {"kind": exc.kind}
    if exc.param:
        data["param"] = exc.param
    out: dict[str, Any] = {"jsonrpc": "2.0"} if jsonrpc else {}
    out["id"] = id
    out["error"] = {"code": exc.info.zap_code, "message": exc.message, "data": data}
    return out


class ZapEndpoint:
    """`handle` runs behind the admission gates (the key checked, the body read, a slot held):
    it sees the caller and the whole body."""

    def __init__(self, caller: Caller, admission: Admission):
        self.caller = caller
        self.admission = admission
        self.commands = caller.registry.commands
        self.catalogue = caller.registry.catalogue
        self._codecs: dict[tuple[str | None, str | None], tuple[Codec | None, Codec]] = {}

    def codecs(self, request: web.Request) -> tuple[Codec | None, Codec]:
        """(request codec or None if unsupported, answer codec), remembered by the raw header
        values: callers send the same few pairs over and over. Bounded: other pairs are
        worked out each time."""
        key = (request.headers.get("Content-Type"), request.headers.get("Accept"))
        pair = self._codecs.get(key)
        if pair is None:
            request_codec = codec_for(request.content_type)
            pair = request_codec, negotiate(request_codec or JSON, key[1])
            if len(self._codecs) < MAX_REMEMBERED_CODECS:
                self._codecs[key] = pair
        return pair

    def refuse(self, request: web.Request, exc: ApiError) -> web.Response:
        """A request refused before `handle` (no key, rate limited, body too large or late)."""
        refused(request, "zap", exc.kind, error_id_of(exc))
        return respond_error(self.codecs(request)[1], error_envelope(exc), exc.info.zap_http_status, exc)

    async def handle(self, request: web.Request, principal: Principal, raw: bytes) -> web.Response:
        # `codecs`' remembered pair looked up here, a call less per request (with the decode's limits
        # written out and Codec.encode the encoder itself, callgrind getBalance 323.5k -> 321.5k)
        headers = request.headers
        pair = self._codecs.get((headers.get("Content-Type"), headers.get("Accept")))
        request_codec, codec = pair if pair is not None else self.codecs(request)
        facts, call = one_call("zap", principal.org, principal.mode)
        request[FACTS] = facts
        steps = None  # long work (a large body, a batch) takes its turns: transport/lane.py
        try:
            if request_codec is None:
                raise UnsupportedMediaType(f"unsupported Content-Type {request.content_type!r}: send application/json or application/msgpack")
            if len(raw) <= LARGE_BODY:
                body = request_codec.decode(raw, self.caller.limits.request_elements)
            else:
                steps = self.admission.lane.steps(principal.org)
                body = await request_codec.decode_large(raw, self.caller.limits.request_elements, steps.next)
                steps.done()
            if type(body) is list and len(body) > 1:  # a token per entry; the first was taken on admission
                self.admission.charge(principal, min(len(body), MAX_BATCH))  # an over-long batch is refused below anyway
            if isinstance(body, list):
                if not 1 <= len(body) <= MAX_BATCH:
                    raise InvalidRequest(f"a batch holds 1 to {MAX_BATCH} envelopes, not {len(body)}")
                release(facts)  # a batch's facts are its own
                calls = [Call("") for _ in body]
                facts = request[FACTS] = Facts("zap", principal.org, principal.mode, calls, True)
                # answer_batch runs the entries in an order of its own: each finds its Call by
                # the entry's identity (identical objects, such as two equal small ints, answer
                # alike, so which of their Calls each takes does not matter)
                pending: dict[int, list[Call]] = {}
                for entry, call in zip(reversed(body), reversed(calls)):
                    pending.setdefault(id(entry), []).append(call)
                steps = steps or self.admission.lane.steps(principal.org)
                response = await answer_batch(body, lambda entry, refusal: self.one(entry, principal, refusal, pending[id(entry)].pop(), facts),
                                              self.commands, codec, self.caller.limits.answer_bytes, steps)
                facts.summarise()
                return response
            if not isinstance(body, dict):
                raise InvalidRequest("the body must be an envelope {method, id, params} or a list of them")
            answer, status = await self.one(body, principal, None, call, facts)
            facts.outcome = call.outcome
            return respond(codec, answer, status)
        except ApiError as exc:  # the request refused whole: no call was made
            request[FACTS] = Facts("zap", principal.org, principal.mode, [], facts.batch, exc.kind, error_id_of(exc))
            release(facts)
            return respond_error(codec, error_envelope(exc), exc.info.zap_http_status, exc)
        finally:
            if steps is not None:
                steps.close()

    async def one(self, envelope: Any, principal: Principal, refusal: ApiError | None = None, call: Call | None = None,
                  facts: Facts | None = None) -> tuple[dict[str, Any], int]:
        """The answer to one envelope and the HTTP status it would have on its own; with a
        `refusal`, the envelope is checked and the refusal answered instead of running it.
        `call` (and `facts`, for a fault's error id) record what it was and how it ended."""
        jsonrpc = isinstance(envelope, dict) and envelope.get("jsonrpc") == "2.0"
        id = None
        try:
            if not isinstance(envelope, dict):
                raise InvalidRequest("an envelope must be a map {method, id, params}")
            id = envelope.get("id")
            if id is not None and (isinstance(id, bool) or not isinstance(id, (str, int)) or isinstance(id, int) and not ID_MIN <= id <= ID_MAX):
                id = None
                raise InvalidRequest("id must be a string, a 64-bit integer or null")
            method = envelope.get("method")
            if not isinstance(method, str) or not method:
                raise InvalidRequest("method is required")
            params = envelope.get("params")
            if params is None:
                params = {}
            elif not isinstance(params, dict):
                raise InvalidRequest("params must be a map")
            key = envelope.get("idempotencyKey")
            if key is not None and not isinstance(key, str):
                raise InvalidRequest("idempotencyKey must be a string")
            command = self.commands.get(method)
            if call is not None and (command is not None or method == DISCOVER):
                call.method = method  # a name the service knows: never the caller's text
            if refusal is not None:
                raise refusal
            if method == DISCOVER:
                result = self.catalogue
            else:
                if command is None:
                    raise MethodNotFound(f"unknown method: {method}")
                result = await self.caller.call(command, principal, params, idempotency_key=key, request_id=id)
        except ApiError as exc:
            if call is not None:
                call.id = id
                call.outcome = exc.kind
                if facts is not None and isinstance(exc, Fault) and not facts.error_id:
                    facts.error_id = exc.error_id
            return error_envelope(exc, id, jsonrpc), exc.info.zap_http_status
        if call is not None:
            call.id = id
        answer: dict[str, Any] = {"jsonrpc": "2.0"} if jsonrpc else {}
        answer["id"] = id
        answer["result"] = result
        return answer, 200
