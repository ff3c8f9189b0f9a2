"""REST routes generated from the registry: one view per schema method with an @http route,
calling the same Caller.call as the ZAP endpoint."""
from __future__ import annotations

import re
from typing import Any, Awaitable, Callable, Mapping

from aiohttp import web

from ..context import Unchanged
from ..errors import ApiError, InvalidParams, InvalidRequest, NotFound, UnsupportedMediaType
from ..registry import Command
from ..schema import Field, TypeRef
from ..store import Principal
from .admission import Admitted, Refuse
from .lane import Lane, Steps
from .calls import Caller, authorize
from .codec import JSON, LARGE_BODY, codec_for, negotiate
from .facts import FACTS, Call, Facts, refused
from .faults import error_id_of
from .http import respond, respond_error

View = Admitted
"""A route's view: run behind the admission gates (transport/admission.py), which checked the
key, read the body (b"" for GET and DELETE) and hold its slots; it gets the caller and the body."""
Wrap = Callable[[View, Refuse, bool], Callable[[web.Request], Awaitable[web.StreamResponse]]]
"""(view, how to refuse, whether it reads a body) -> the route's handler."""
_INT = re.compile(r"[+-]?[0-9]+\Z")
"""Linear: one class under one star, then the end (a query value is at most the request line, 8 KiB)."""
_BOOLS = {"true": True, "false": False, "1": True, "0": False}
SHARED_FACTS_KEPT = 1024
"""Keys whose successful requests of one route share one Facts (the others make their own)."""


def error_body(exc: ApiError) -> dict[str, Any]:
    err: dict[str, Any] = {"type": "api-error", "code": exc.kind, "message": exc.message}
    if exc.param:
        err["param"] = exc.param
    return {"error": err}


def refuse(request: web.Request, exc: ApiError) -> web.Response:
    """A request refused before its view ran (no key, rate limited, body too large or late)."""
    refused(request, "rest", exc.kind, error_id_of(exc))
    return respond_error(negotiate(JSON, request.headers.get("Accept")), error_body(exc), exc.info.rest_status, exc)


def _from_text(t: TypeRef, text: str) -> Any:
    """A query or path value parsed by its declared type. What does not parse is passed on as
    text, so that the params model reports it in the contract's parameter order."""
    if t.name in ("Int32", "Int64"):
        return int(text) if _INT.match(text) else text
    if t.name == "Bool":
        return _BOOLS.get(text.lower(), text)
    if t.name == "Float64":
        try:
            return float(text)
        except ValueError:
            return text
    return text


def text_params(fields: list[Field], query: Mapping[str, str], path: Mapping[str, str]) -> dict[str, Any]:
    """Params from a query string and path: an empty value counts as absent. Names the route
    does not take were refused before (refuse_unknown_query)."""
    raw: dict[str, Any] = {}
    for f in fields:
        if f.name in path:
            raw[f.name] = _from_text(f.type, path[f.name])
        elif f.type.name == "List":
            values = [v for v in query.getall(f.name, []) if v != ""]  # type: ignore[attr-defined]
            if values:
                raw[f.name] = [_from_text(f.type.args[0], v) for v in values]
        else:
            value = query.get(f.name)
            if value:
                raw[f.name] = _from_text(f.type, value)
    return raw


def refuse_unknown_query(query: Mapping[str, str], takes: frozenset[str], elsewhere: Mapping[str, str],
                         lists: frozenset[str] = frozenset()) -> None:
    """Strict input for a query string: the first name, in the order sent, that the route does
    not read from it (`takes`) is `unknown parameter: <name>`. A name the method takes from the
    body or the path instead would be dropped as silently: refused too, with `elsewhere`'s hint.
    Then a name sent twice (`?user=a&user=b`) that is not a list's (`lists`: a list is its name
    repeated) is `parameter given more than once: <name>`: which value was meant cannot be told,
    and taking the first, as the query's `get` does, read another account without a word."""
    for name in query:
        if name not in takes:
            raise InvalidParams(f"unknown parameter: {name}{elsewhere.get(name, '')}", param=name)
    if len(query) > 1 and len(set(query)) < len(query):  # len counts every (name, value) pair sent
        seen: set[str] = set()
        for name, _ in query.items():
            if name in seen and name not in lists:
                raise InvalidParams(f"parameter given more than once: {name}", param=name)
            seen.add(name)


def query_names(command: Command) -> tuple[frozenset[str], dict[str, str]]:
    """(the names a route reads from its query string, {other declared name: where it goes})."""
    assert command.http is not None
    route = f"{command.http.verb} {command.http.path}"
    in_path = {n: f" ({route} takes it in the path)" for n in command.http.path_params}
    if command.http.verb not in ("GET", "DELETE"):
        return frozenset(), {f.name: f" ({route} takes it in the body)" for f in command.fields} | in_path
    return frozenset(f.name for f in command.fields if f.name not in in_path), in_path


def make_view(caller: Caller, command: Command, lane: Lane) -> View:
    assert command.http is not None
    from_query = command.http.verb in ("GET", "DELETE")
    success = command.http.status
    path_fields = [f for f in command.fields if f.name in command.http.path_params]
    query_takes, elsewhere = query_names(command)
    lists = frozenset(f.name for f in command.fields if f.type.name == "List")
    in_path = {f.name: elsewhere[f.name] for f in path_fields}  # the query's hint for each: "(... takes it in the path)"
    wire = command.wire
    succeeded: dict[str, Facts] = {}
    """The facts of this route's requests that succeed, by key id, shared (facts.py: read-only):
    no object made per request (facts.py says why that matters)."""

    async def view(request: web.Request, principal: Principal, body: bytes) -> web.Response:
        codec = negotiate(JSON, request.headers.get("Accept"))
        facts = succeeded.get(principal.key_id)
        if facts is None:
            facts = Facts("rest", principal.org, principal.mode, [Call(wire)])
            if len(succeeded) < SHARED_FACTS_KEPT:
                succeeded[principal.key_id] = facts
        request[FACTS] = facts
        try:
            authorize(command, principal)
            # After the key (auth refuses a key sent here) and permission, before any param. One
            # more pass over a query that is parsed anyway, and a set of its names to find a
            # repeat: 185 -> 367 ns for getBalance's two names (timeit).
            if request.query_string:
                refuse_unknown_query(request.query, query_takes, elsewhere, lists)
            if from_query:
                raw = text_params(command.fields, request.query, request.match_info)
            else:  # body params, and the path's beside them
                raw = (_body_params(request, body, caller.limits.request_elements) if len(body) <= LARGE_BODY
                       else await _large_body_params(request, body, caller.limits.request_elements, lane.steps(principal.org)))
                if in_path:
                    # A path parameter in the body too would be dropped silently (the path's
                    # wins): refused as a query string's is, also when the two agree.
                    for name in in_path:
                        if name in raw:
                            raise InvalidParams(f"unknown parameter: {name}{in_path[name]}", param=name)
                    raw |= text_params(path_fields, {}, request.match_info)
            result = await caller.call(
                command, principal, raw, query=from_query, idempotency_key=request.headers.get("Idempotency-Key") or None
            )
            return respond(codec, result, 200 if isinstance(result, Unchanged) else success)
        except ApiError as exc:
            request[FACTS] = Facts("rest", principal.org, principal.mode, [Call(wire, None, exc.kind)], False, exc.kind, error_id_of(exc))
            return respond_error(codec, error_body(exc), exc.info.rest_status, exc)

    view.__name__ = command.name
    return view


def _body_params(request: web.Request, body: bytes, max_values: int) -> dict[str, Any]:
    if not body:
        return {}
    body_codec = codec_for(request.content_type)
    if body_codec is None:
        raise UnsupportedMediaType(f"unsupported Content-Type {request.content_type!r}: send application/json or application/msgpack")
    params = body_codec.decode(body, max_values)
    if not isinstance(params, dict):
        raise InvalidRequest("the request body must be an object")
    return params


async def _large_body_params(request: web.Request, body: bytes, max_values: int, steps: Steps) -> dict[str, Any]:
    """`_body_params` for a body longer than LARGE_BODY, decoded as long work, in turns
    (transport/lane.py; a function apart, so that the usual bodies pay no coroutine)."""
    try:
        body_codec = codec_for(request.content_type)
        if body_codec is None:
            return _body_params(request, body, max_values)  # its refusal
        params = await body_codec.decode_large(body, max_values, steps.next)
    finally:
        steps.close()
    if not isinstance(params, dict):
        raise InvalidRequest("the request body must be an object")
    return params


def unknown_route() -> View:
    """Behind the gates like every /api/v1 route: a caller without a key learns no more."""

    async def view(request: web.Request, principal: Principal, body: bytes) -> web.Response:
        request[FACTS] = Facts("rest", principal.org, principal.mode)
        return refuse(request, NotFound(f"no such route: {request.method} {request.path}"))

    return view


def document_route(document: Any) -> View:
    """A fixed JSON document (the OpenAPI description), encoded once, behind an API key like
    every /api/v1 route: any scope may read it."""
    encoded = JSON.encode(document)

    async def view(request: web.Request, principal: Principal, body: bytes) -> web.Response:
        request[FACTS] = Facts("rest", principal.org, principal.mode)
        return web.Response(body=encoded, content_type="application/json")

    return view


def refuse_json(request: web.Request, exc: ApiError) -> web.Response:
    """Refusals of the JSON document's route: always JSON, whatever was asked."""
    refused(request, "rest", exc.kind, error_id_of(exc))
    return respond_error(JSON, error_body(exc), exc.info.rest_status, exc)


def add_routes(app: web.Application, caller: Caller, wrap: Wrap, lane: Lane) -> None:
    for command in caller.registry.commands.values():
        if command.http is not None:
            reads_body = command.http.verb not in ("GET", "DELETE")
            app.router.add_route(command.http.verb, _any_segment(command.http.path), wrap(make_view(caller, command, lane), refuse, reads_body))


def _any_segment(path: str) -> str:
    """`{id}` as any one path segment: aiohttp's default pattern leaves out `{` and `}`, and an
    unknown id of any shape must be the entity's 404, not "no such route"."""
    return re.sub(r"\{(\w+)\}", r"{\1:[^/]+}", path)
