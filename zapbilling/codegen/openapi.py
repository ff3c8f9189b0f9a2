"""The OpenAPI 3.1 document of the REST routes and the ZAP endpoint, derived from the schema,
the parameter rules the server enforces (those that say what they enforce in JSON Schema) and
the error table, so it cannot describe an operation the server does not have."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import KINDS
from ..models import SizeBounds
from ..registry import Registry
from ..schema import MISSING, Field, Method, Schema, TypeRef
from ..transport.calls import MAX_IDEMPOTENCY_KEY
from ..transport.zap import MAX_BATCH, PATHS as ZAP_PATHS

Rule = Callable[..., Any]
"""A parameter rule as models.py takes it; its `json_schema`, if any, joins the field's schema."""

INT64 = {"type": "integer", "format": "int64", "minimum": -(2**63), "maximum": 2**63 - 1}
INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
_SCALARS: dict[str, dict[str, Any]] = {
    "Bool": {"type": "boolean"}, "Int32": INT32, "Int64": INT64, "Float64": {"type": "number"},
    "Text": {"type": "string"}, "Data": {},
}
MEDIA = ("application/json", "application/msgpack")
"""Bodies and answers in either codec: an answer uses the request's, or the one Accept names."""


def content(schema: dict[str, Any]) -> dict[str, Any]:
    return {t: {"schema": schema} for t in MEDIA}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def pascal(name: str) -> str:
    return name[:1].upper() + name[1:]


def type_schema(t: TypeRef, schema: Schema) -> dict[str, Any]:
    if t.name in _SCALARS:
        return dict(_SCALARS[t.name])
    if t.name == "List":
        return {"type": "array", "items": type_schema(t.args[0], schema)}
    if t.name == "Map":
        return {"type": "object", "additionalProperties": type_schema(t.args[1], schema)}
    return ref(t.name)


def sized(s: dict[str, Any], t: TypeRef, name: str, bounds: SizeBounds | None) -> dict[str, Any]:
    """`s`, the schema of a parameter of type `t`, with the size bounds the server enforces on it
    (models.py SizeBounds): maxLength on text, its items' or values' maxLength, and maxProperties
    for a free-form value (its top-level keys; the server counts them at every depth, and bounds
    its encoding to `data_bytes`, which JSON Schema cannot say)."""
    if bounds is None:
        return s
    if t.name == "Text":
        return {**s, "maxLength": bounds.text_bound(name)}
    if t.name == "List" and t.args[0].name == "Text":
        return {**s, "items": {**s["items"], "maxLength": bounds.text_bound(name)}}
    if t.name in ("Map", "Data"):
        out = {**s, "maxProperties": bounds.data_keys}
        if t.name == "Map" and t.args[1].name == "Text":
            out["additionalProperties"] = {**s["additionalProperties"], "maxLength": bounds.text_bound(name)}
        return out
    return s


def refused_default(f: Field, rule: Rule | None) -> bool:
    """The server judges a default with the field's rule too (an absent `events` is `at least one
    event is required`): such a field is in effect required, and its default no value to show."""
    if rule is None or f.default is MISSING:
        return False
    try:
        rule(f.default, f.name)
    except Exception:  # noqa: BLE001 - a rule refuses with its own error type
        return True
    return False


def field_schema(f: Field, schema: Schema, rule: Rule | None = None, bounds: SizeBounds | None = None) -> dict[str, Any]:
    """`bounds`: for a parameter (what callers send), None for a result's field."""
    s = sized(type_schema(f.type, schema), f.type, f.name, bounds)
    stated = getattr(rule, "json_schema", None)
    if stated:
        s = {**s, **stated} if "$ref" not in s else {"allOf": [s, stated]}
    if f.doc:
        s = {**s, "description": f.doc} if "$ref" not in s else {"allOf": [s], "description": f.doc}
    if f.default is not MISSING and not refused_default(f, rule):
        s["default"] = f.default
    if f.deprecated:
        s["deprecated"] = True
    return s


def object_schema(fields: list[Field], schema: Schema, doc: str = "", closed: bool = True,
                  rules: Mapping[str, Rule] | None = None, bounds: SizeBounds | None = None) -> dict[str, Any]:
    rules = rules or {}
    out: dict[str, Any] = {"type": "object", "properties": {f.name: field_schema(f, schema, rules.get(f.name), bounds) for f in fields}}
    required = [f.name for f in fields if f.required or refused_default(f, rules.get(f.name))]
    if required:
        out["required"] = required
    if closed:
        out["additionalProperties"] = False
    if doc:
        out["description"] = doc
    return out


def _sent(schema: Schema) -> set[str]:
    """The structs some method's params contain, at any depth: those callers send."""
    seen: set[str] = set()
    stack = [f.type for _, m in schema.methods() for f in m.params]
    while stack:
        t = stack.pop()
        stack += t.args
        if t.name in schema.structs and t.name not in seen:
            seen.add(t.name)
            stack += [f.type for f in schema.structs[t.name].fields]
    return seen


def _type_components(schema: Schema, field_rules: Mapping[str, Rule], bounds: SizeBounds | None = None) -> dict[str, Any]:
    """The schema's enums and structs, under their own names, in declaration order; the structs
    callers send with the size bounds and the rules of their fields. The rules are the params'
    (by name) and only a struct sent is checked by them: on an answer's struct they would
    misstate it (a spend cap's `limit` is cents, not the page size `limit` of the listings)."""
    sent = _sent(schema)
    schemas: dict[str, Any] = {}
    for name in sorted(schema.order, key=schema.order.__getitem__):
        if name in schema.enums:
            e = schema.enums[name]
            schemas[name] = {"type": "string", "enum": list(e.values), **({"description": e.doc} if e.doc else {})}
        elif name in schema.structs:
            s = schema.structs[name]
            schemas[name] = object_schema(s.fields, schema, s.doc, rules=field_rules if name in sent else None,
                                          bounds=bounds if name in sent else None)
    return schemas


def _error_components() -> dict[str, Any]:
    """REST's error body, and ZAP's error object on its own (referenced, never reached by a
    property path: generators resolve only references to whole components)."""
    return {
        "Error": {
            "type": "object", "required": ["error"],
            "properties": {"error": {
                "type": "object", "required": ["type", "code", "message"],
                "properties": {
                    "type": {"const": "api-error"},
                    "code": {"type": "string", "enum": list(KINDS)},
                    "message": {"type": "string"},
                    "param": {"type": "string", "description": "the offending field"},
                },
            }},
        },
        "ZapErrorObject": {
            "type": "object", "required": ["code", "message"],
            "properties": {
                "code": {"type": "integer", "enum": sorted({k.zap_code for k in KINDS.values()}, reverse=True)},
                "message": {"type": "string"},
                "data": {"type": "object", "properties": {"kind": {"type": "string", "enum": list(KINDS)}, "param": {"type": "string"}}},
            },
        },
        "ZapError": {
            "type": "object", "required": ["id", "error"],
            "properties": {"jsonrpc": {"const": "2.0"}, "id": {"type": ["string", "integer", "null"]}, "error": ref("ZapErrorObject")},
        },
    }


def _result_schema(m: Method, schema: Schema) -> dict[str, Any]:
    return type_schema(m.result.type, schema) if m.result else {"type": "null"}


def _error_responses(statuses: set[int]) -> dict[str, Any]:
    return {str(s): {"description": ", ".join(k for k, v in KINDS.items() if v.rest_status == s),
                     "content": content(ref("Error"))} | _headers(s)
            for s in sorted(statuses)}


def _headers(status: int) -> dict[str, Any]:
    """A 429 (rate_limited) says when to come back, on REST and ZAP alike."""
    if status != 429:
        return {}
    return {"headers": {"Retry-After": {"description": "seconds until the call would be accepted", "schema": {"type": "integer", "minimum": 1}}}}


def _rest_operation(wire: str, m: Method, schema: Schema, rules: Mapping[str, Rule], bounds: SizeBounds | None = None) -> dict[str, Any]:
    assert m.http is not None
    fields = schema.flat_params(m)
    in_path = set(m.http.path_params)
    op: dict[str, Any] = {
        "operationId": m.name, "summary": m.doc.splitlines()[0] if m.doc else m.name, "description": m.doc,
        "tags": [wire.split(".")[0]], "x-zap-method": wire,
    }
    if m.deprecated:
        op["deprecated"] = True
    params = [{"name": f.name, "in": "path", "required": True, "schema": sized(type_schema(f.type, schema), f.type, f.name, bounds)}
              for f in fields if f.name in in_path]
    rest = [f for f in fields if f.name not in in_path]
    if m.http.verb in ("GET", "DELETE"):
        for f in rest:
            p: dict[str, Any] = {"name": f.name, "in": "query", "required": f.required or refused_default(f, rules.get(f.name)),
                                 "schema": field_schema(f, schema, rules.get(f.name), bounds)}
            if f.type.name == "List":
                p["explode"] = True
            params.append(p)
    elif rest:
        # closed: the server refuses a name the operation does not take (strict input: `unknown parameter`)
        op["requestBody"] = {"required": False, "content": content(object_schema(rest, schema, rules=rules, bounds=bounds))}
    if params:
        op["parameters"] = params
    success = {"description": "the result", "content": content(_result_schema(m, schema))}
    op["responses"] = {str(m.http.status): success}
    if m.name == "recordUsage" and m.http.status != 200:  # the one route whose status depends on the outcome
        op["responses"]["200"] = {"description": "nothing recorded (amount <= 0)", "content": success["content"]}
    errors = {400, 401, 404, 409, 413, 415, 429, 500} | ({403} if m.mutates else set()) | ({402} if m.mutates else set())
    op["responses"].update(_error_responses(errors))
    if m.mutates:
        op["parameters"] = op.get("parameters", []) + [{
            "name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string", "maxLength": MAX_IDEMPOTENCY_KEY},
            "description": "a retry with the same key and params returns the stored answer; other params: 409",
        }]
    return op


def _envelope(wire: str, m: Method, params: str) -> dict[str, Any]:
    """One method's call; its params are a component of their own (`params`), so generators name
    each model after the component instead of inventing names that collide."""
    return {
        "type": "object", "required": ["method"], "description": m.doc or wire,
        "properties": {
            "method": {"const": wire},
            "id": {"type": ["string", "integer", "null"]},
            "jsonrpc": {"const": "2.0"},
            "idempotencyKey": {"type": "string", "maxLength": MAX_IDEMPOTENCY_KEY},
            "params": ref(params),
        },
    }


def params_name(m: Method) -> str:
    """`<Method>Params`: one component name per model, made from the method's name (unique, as
    REST's operationId is), so no generator has to invent one (and two invent the same)."""
    return f"{pascal(m.name)}Params"


def envelope_name(m: Method) -> str:
    return f"{pascal(m.name)}Envelope"


def _method_components(wire: str, m: Method, schema: Schema, rules: Mapping[str, Rule], bounds: SizeBounds) -> dict[str, Any]:
    return {params_name(m): object_schema(schema.flat_params(m), schema, rules=rules, bounds=bounds),
            envelope_name(m): _envelope(wire, m, params_name(m))}


DISCOVER = {"ZapDiscoverEnvelope": {
    "type": "object", "required": ["method"], "description": "zap.discover: the methods this server has",
    "properties": {"method": {"const": "zap.discover"}, "id": {"type": ["string", "integer", "null"]}},
}}


def _zap_components(envelopes: list[str]) -> dict[str, Any]:
    """The endpoint's body and answer; ZapCall is one of the `envelopes`, in the schema's order."""
    call, answer = ref("ZapCall"), ref("ZapAnswer")
    return {
        "ZapCall": {"oneOf": [ref(name) for name in envelopes]},
        "ZapRequest": {"oneOf": [call, {"type": "array", "minItems": 1, "maxItems": MAX_BATCH, "items": call}]},
        "ZapAnswer": {"type": "object", "required": ["id"], "properties": {
            "id": {}, "jsonrpc": {"const": "2.0"}, "result": {}, "error": ref("ZapErrorObject")}},
        "ZapResponse": {"oneOf": [answer, {"type": "array", "items": answer}]},
    }


def merge_unique(*parts: Mapping[str, Any]) -> dict[str, Any]:
    """Component names must not repeat: a schema type named like a generated component (say a
    struct `GetBalanceParams`) would otherwise be overwritten silently."""
    out: dict[str, Any] = {}
    for part in parts:
        clash = sorted(out.keys() & part.keys())
        if clash:
            raise ValueError(f"OpenAPI component names used twice: {', '.join(clash)}")
        out.update(part)
    return out


def components(registry: Registry) -> dict[str, Any]:
    """Every component schema, each under a name of its own; ZAP's models are referenced by name
    (never inlined in a oneOf), which is what lets generators give them stable class names."""
    schema = registry.schema
    methods = [_method_components(f"{i.service}.{m.name}", m, schema, registry.rules(m.name), registry.bounds) for i, m in schema.methods()]
    envelopes = [envelope_name(m) for _, m in schema.methods()] + list(DISCOVER)
    return merge_unique(_type_components(schema, registry.field_rules, registry.bounds), _error_components(),
                        *methods, DISCOVER, _zap_components(envelopes))


def _zap_operation(suffix: str) -> dict[str, Any]:
    errors = {str(s): {"description": ", ".join(k for k, v in KINDS.items() if v.zap_http_status == s),
                       "content": content(ref("ZapError"))} | _headers(s)
              for s in sorted({k.zap_http_status for k in KINDS.values()} - {200})}
    return {
        "operationId": f"zap{suffix}", "tags": ["zap"],
        "summary": f"One ZAP envelope {{method, id, params}} or a batch of 1..{MAX_BATCH}",
        "description": "Every operation of the REST routes, by wire name (billing.<method>), plus zap.discover. "
                       "Errors of a call are answered in-band with HTTP 200, except the ones listed below.",
        "requestBody": {"required": True, "content": content(ref("ZapRequest"))},
        "responses": {"200": {"description": "the answer, or a list of answers in request order",
                              "content": content(ref("ZapResponse"))}, **errors},
    }


def openapi(registry: Registry, version: str = "0.1.0") -> dict[str, Any]:
    schema = registry.schema

    def rules(m: Method) -> Mapping[str, Rule]:
        return registry.rules(m.name)

    paths: dict[str, Any] = {}
    for iface, m in schema.methods():
        if m.http:
            paths.setdefault(m.http.path, {})[m.http.verb.lower()] = _rest_operation(f"{iface.service}.{m.name}", m, schema, rules(m), registry.bounds)
    for i, path in enumerate(ZAP_PATHS):
        paths[path] = {"post": _zap_operation("" if i == 0 else "Billing")}
    return {
        "openapi": "3.1.0",
        "info": {"title": "zapbilling", "version": version,
                 "description": f"Generated from {', '.join(Path(f).name for f in schema.files) or 'the schema'}; do not edit."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": components(registry),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "an API key made by `zapbilling keys create`"}},
        },
    }


__all__ = ["openapi"]
