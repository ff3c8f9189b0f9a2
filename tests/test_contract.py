"""The contract, driven by the schema files: for every method of every .zap file under
schemas/, on ZAP/JSON, ZAP/msgpack, REST and the generated client (sync and async):

- a valid call (the method's example in schemas/examples/) answers a result with exactly the
  declared fields, each of the declared type;
- leaving out each required parameter gives the contract's `<name> is required` error;
- a wrongly typed value for each parameter gives invalid params naming that parameter;
- a parameter the method does not declare gives `unknown parameter: <name>` (in a struct or a
  list of structs: `<param>[i].<name>`), ahead of a missing or wrongly typed one.

A method without an example fails here, so a method cannot be added to the schema untested.
"""
from __future__ import annotations

import asyncio
import enum
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import zapbilling_client as zc
from conftest import Api, Reply, ERROR_TABLE, on_this_backend
from examples import Example, load_examples, missing_examples, prepare
from zapbilling.codegen.python_client import py_name
from zapbilling.schema import Field, Method, Schema, TypeRef, load

SCHEMAS = sorted((Path(__file__).resolve().parent.parent / "schemas").glob("*.zap"))
TRANSPORTS = on_this_backend(("zap-json", "zap-msgpack", "rest", "client-sync", "client-async"))
INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)


def _cases() -> list[Any]:
    cases = []
    for path in SCHEMAS:
        schema = load(path)
        for iface in schema.interfaces.values():
            if Path(iface.file).resolve() != path.resolve():
                continue
            for m in iface.methods:
                cases.append(pytest.param(path, schema, f"{iface.service}.{m.name}", m, id=f"{iface.service}.{m.name}"))
    return cases


CASES = _cases()


def test_there_are_schemas_and_methods():
    assert SCHEMAS and CASES


@pytest.mark.parametrize("path", SCHEMAS, ids=[p.name for p in SCHEMAS])
def test_every_method_of_every_schema_has_an_example(path):
    missing = missing_examples(load(path))
    assert not missing, f"methods without an example in schemas/examples/{path.stem}.json: {', '.join(missing)}"


def example_for(path: Path, schema: Schema, wire: str) -> Example:
    examples = load_examples(path, schema)
    assert wire in examples, f"{wire} has no example in schemas/examples/{path.stem}.json"
    return examples[wire]


# -- calling one method over one transport -------------------------------------------------------

class Caller:
    """One method call over a transport, answered as a Reply; the client's results are kept as
    models (in `result`) so their types can be checked as the client gives them."""

    def __init__(self, api: Api, transport: str):
        self.api, self.transport = api, transport

    async def call(self, method: Method, params: dict[str, Any]) -> Reply:
        if not self.transport.startswith("client"):
            return await self.api.using(self.transport).call(method.name, params)
        kwargs = {py_name(k): v for k, v in params.items()}
        try:
            if self.transport == "client-async":
                async with zc.AsyncBillingClient(self.api.base, api_key=self.api.key, max_retries=0) as client:
                    result = await getattr(client, method.name)(**kwargs)
            else:
                def run() -> Any:
                    with zc.BillingClient(self.api.base, api_key=self.api.key, max_retries=0) as client:
                        return getattr(client, method.name)(**kwargs)
                result = await asyncio.to_thread(run)
        except zc.ZapBillingError as e:
            return Reply(e.status or 0, error={"kind": e.data.get("kind"), "message": e.message, "param": e.param, "code": e.code})
        return Reply(200, result=result)


def missing_message(transport: str, method: Method, name: str) -> str:
    if transport == "rest" and method.http and method.http.verb in ("GET", "DELETE"):
        return f"{name} query parameter is required"
    return f"{name} is required"


def assert_invalid_params(transport: str, r: Reply, message: str | None, param: str) -> None:
    assert r.error is not None, f"expected invalid params for {param}, got {r.result!r}"
    assert r.error["kind"] == "invalid_params", r.error
    assert r.error["param"] == param, r.error
    if message is not None:
        assert message in r.error["message"], r.error
    rest_status, zap_code, zap_status = ERROR_TABLE["invalid_params"]
    if transport == "rest":
        assert r.status == rest_status
    else:
        assert r.error["code"] == zap_code
        if transport.startswith("zap"):
            assert r.status == zap_status


# -- result shape --------------------------------------------------------------------------------

def conforms(value: Any, t: TypeRef, schema: Schema, where: str) -> None:
    """`value` as decoded from the wire is exactly of the declared type."""
    n = t.name
    if n in ("Int64", "Int32"):
        lo, hi = INT64 if n == "Int64" else INT32
        assert type(value) is int and lo <= value <= hi, f"{where}: {value!r} is not {n}"
    elif n == "Float64":
        assert type(value) in (int, float), f"{where}: {value!r} is not Float64"
    elif n == "Bool":
        assert type(value) is bool, f"{where}: {value!r} is not Bool"
    elif n == "Text":
        assert type(value) is str, f"{where}: {value!r} is not Text"
    elif n == "Data":
        pass
    elif n == "List":
        assert type(value) is list, f"{where}: {value!r} is not a List"
        for i, v in enumerate(value):
            conforms(v, t.args[0], schema, f"{where}[{i}]")
    elif n == "Map":
        assert type(value) is dict, f"{where}: {value!r} is not a Map"
        for k, v in value.items():
            conforms(k, t.args[0], schema, f"{where} key")
            conforms(v, t.args[1], schema, f"{where}.{k}")
    elif n in schema.enums:
        assert value in schema.enums[n].values, f"{where}: {value!r} is not one of {n}"
    else:
        struct = schema.structs[n]
        assert type(value) is dict, f"{where}: {value!r} is not a {n}"
        declared = {f.name: f for f in struct.fields}
        assert not (extra := set(value) - set(declared)), f"{where}: undeclared fields {sorted(extra)}"
        absent = {f.name for f in struct.fields if not f.optional} - set(value)
        assert not absent, f"{where}: missing fields {sorted(absent)}"
        for name, v in value.items():
            f = declared[name]
            if v is None and f.optional:
                continue
            conforms(v, f.type, schema, f"{where}.{name}")


def model_conforms(value: Any, t: TypeRef, schema: Schema, where: str) -> None:
    """The client's result is made of the generated classes, with nothing undeclared."""
    n = t.name
    if n in schema.enums:
        assert isinstance(value, getattr(zc, n)), f"{where}: {value!r} is not a {n}"
    elif n in schema.structs:
        assert isinstance(value, getattr(zc, n)) and isinstance(value, BaseModel), f"{where}: {value!r} is not a {n}"
        assert not value.model_extra, f"{where}: undeclared fields {value.model_extra}"
        for f in schema.structs[n].fields:
            if f.name in {(info.alias or k) for k, info in type(value).model_fields.items() if k in value.model_fields_set}:
                model_conforms(getattr(value, py_name(f.name)), f.type, schema, f"{where}.{f.name}")
            else:
                assert f.optional, f"{where}: {f.name} absent from the answer"
    elif n == "List":
        assert isinstance(value, list)
        for i, v in enumerate(value):
            model_conforms(v, t.args[0], schema, f"{where}[{i}]")
    elif n == "Map":
        assert isinstance(value, dict)
        for k, v in value.items():
            model_conforms(v, t.args[1], schema, f"{where}.{k}")
    else:
        conforms(value, t, schema, where)


def wire_form(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return {k: wire_form(v) for k, v in value.model_dump(by_alias=True, exclude_unset=True).items()}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return [wire_form(v) for v in value]
    if isinstance(value, dict):
        return {k: wire_form(v) for k, v in value.items()}
    return value


BALANCE = TypeRef("Balance")
GOOD_BALANCE = {"user": "u", "currency": "usd", "balance": 5, "holds": 0, "available": 5}


@pytest.mark.parametrize("bad", [
    {**GOOD_BALANCE, "extra": 1},
    {k: v for k, v in GOOD_BALANCE.items() if k != "holds"},
    {**GOOD_BALANCE, "balance": "5"},
    {**GOOD_BALANCE, "balance": 5.0},
    {**GOOD_BALANCE, "balance": True},
    {**GOOD_BALANCE, "balance": 2**63},
    {**GOOD_BALANCE, "user": 7},
    [GOOD_BALANCE],
])
def test_the_shape_checker_rejects_what_the_schema_does_not_declare(bad):
    schema = load(SCHEMAS[0])
    conforms(GOOD_BALANCE, BALANCE, schema, "ok")
    with pytest.raises(AssertionError):
        conforms(bad, BALANCE, schema, "bad")


def test_the_model_checker_rejects_extra_fields_and_plain_dicts():
    schema = load(SCHEMAS[0])
    model_conforms(zc.Balance(**GOOD_BALANCE), BALANCE, schema, "ok")
    with pytest.raises(AssertionError):
        model_conforms(zc.Balance(**GOOD_BALANCE, surprise=1), BALANCE, schema, "bad")
    with pytest.raises(AssertionError):
        model_conforms(GOOD_BALANCE, BALANCE, schema, "bad")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("path, schema, wire, method", CASES)
async def test_valid_call_answers_exactly_the_declared_result(api, path, schema, wire, method, transport):
    params, _ = await prepare(api, example_for(path, schema, wire))
    r = await Caller(api, transport).call(method, params)
    assert r.ok, (transport, r)
    assert method.result is not None
    if transport.startswith("client"):
        model_conforms(r.result, method.result.type, schema, method.result.name)
        conforms(wire_form(r.result), method.result.type, schema, method.result.name)
    else:
        conforms(r.result, method.result.type, schema, method.result.name)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("path, schema, wire, method", CASES)
async def test_each_required_parameter_missing_gives_the_contract_error(api, path, schema, wire, method, transport):
    params, _ = await prepare(api, example_for(path, schema, wire))
    required = [f for f in schema.flat_params(method) if f.required]
    in_path = set(method.http.path_params) if method.http else set()
    checked = 0
    for f in required:
        if transport == "rest" and f.name in in_path:
            continue  # a path without its id is another route
        without = {k: v for k, v in params.items() if k != f.name}
        if transport.startswith("client"):
            without[f.name] = None  # the client leaves None out: the server sees it missing
        r = await Caller(api, transport).call(method, without)
        assert_invalid_params(transport, r, missing_message(transport, method, f.name), f.name)
        checked += 1
    if not required:
        pytest.skip(f"{wire} has no required parameter")
    if not checked:
        pytest.skip(f"{wire}: its required parameters are in the REST path")


def wrong_value(f: Field, schema: Schema, as_text: bool) -> Any:
    """A value of the wrong type for `f`, or None when none can be written (text transports
    cannot send a non-text value for a Text parameter)."""
    n = f.type.name
    if as_text:  # a query string: only values that do not parse as the declared type
        return {"Int64": "twelve", "Int32": "twelve", "Bool": "maybe", "Float64": "x"}.get(n)
    if n in ("Int64", "Int32"):
        return "12"
    if n == "Float64":
        return "1.5"
    if n == "Bool":
        return "yes"
    if n == "Text" or n in schema.enums:
        return 12
    if n == "List":
        return "not a list"
    if n == "Map":
        return ["not", "a", "map"]
    if n in schema.structs:
        return "not a struct"
    return None  # Data takes anything


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("path, schema, wire, method", CASES)
async def test_wrongly_typed_parameter_gives_invalid_params(api, path, schema, wire, method, transport):
    params, _ = await prepare(api, example_for(path, schema, wire))
    as_text = transport == "rest" and method.http is not None and method.http.verb in ("GET", "DELETE")
    in_path = set(method.http.path_params) if method.http and transport == "rest" else set()
    checked = 0
    for f in schema.flat_params(method):
        if f.name in in_path:
            continue
        wrong = wrong_value(f, schema, as_text)
        if wrong is None:
            continue
        r = await Caller(api, transport).call(method, {**params, f.name: wrong})
        assert_invalid_params(transport, r, None, f.name)
        checked += 1
    if not checked:
        pytest.skip(f"{wire}: no parameter can be sent with a wrong type on {transport}")


# -- strict input: undeclared names ------------------------------------------------------------------

NO_UNDECLARED = "the generated client takes only the declared parameters as keyword arguments: it cannot send an undeclared name"


def misspelt(name: str, declared: set[str]) -> str:
    """A likely typo of `name` that is not itself declared (`upTo` -> `upto`, `value` -> `valeu`)."""
    for typo in (name.lower(), name[:-2] + name[-1] + name[-2], name + "s", name + "_x"):
        if typo != name and typo not in declared:
            return typo
    raise AssertionError(f"no typo of {name} is free")


def unknown_top_level(method: Method, schema: Schema, params: dict[str, Any], skip: set[str]) -> tuple[str, Any]:
    """(an undeclared name, a value for it): a typo of a parameter the call sends, else `bogus`."""
    declared = {f.name for f in schema.flat_params(method)}
    sent = [k for k in params if k not in skip]
    if not sent:
        return "bogus", "x"
    return misspelt(sent[0], declared), params[sent[0]]


def nested_unknowns(method: Method, schema: Schema, params: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """For each struct or list-of-struct parameter (the example must fill it): (params with a
    typo of a field the struct sends added to it, or to the list's last item; its path)."""
    cases = []
    for f in schema.flat_params(method):
        value = params.get(f.name)
        item_type = f.type.args[0] if f.type.name == "List" else f.type
        if item_type.name not in schema.structs:
            continue
        assert value, f"{method.name}'s example leaves {f.name} empty: give it a value to check its fields by"
        fields = [g.name for g in schema.structs[item_type.name].fields]
        item = value[-1] if f.type.name == "List" else value
        typo = misspelt(next(iter(item), fields[0]), set(fields))  # tiers[1].upTo -> tiers[1].upto
        if f.type.name == "List":
            i = len(value) - 1
            cases.append(({**params, f.name: [*value[:i], {**item, typo: 1}]}, f"{f.name}[{i}].{typo}"))
        else:
            cases.append(({**params, f.name: {**item, typo: 1}}, f"{f.name}.{typo}"))
    return cases


def from_query(transport: str, method: Method) -> bool:
    return transport == "rest" and method.http is not None and method.http.verb in ("GET", "DELETE")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("path, schema, wire, method", CASES)
async def test_an_undeclared_parameter_is_refused_by_name(api, path, schema, wire, method, transport):
    """At the top level (on a REST GET or DELETE route: in the query string), and inside each
    struct or list-of-struct parameter, where the name is the path to it."""
    if transport.startswith("client"):
        pytest.skip(NO_UNDECLARED)
    params, _ = await prepare(api, example_for(path, schema, wire))
    in_path = set(method.http.path_params) if method.http and transport == "rest" else set()
    name, value = unknown_top_level(method, schema, params, in_path)
    r = await Caller(api, transport).call(method, {**params, name: value})
    assert_invalid_params(transport, r, f"unknown parameter: {name}", name)
    for nested, where in ([] if from_query(transport, method) else nested_unknowns(method, schema, params)):
        r = await Caller(api, transport).call(method, nested)
        assert_invalid_params(transport, r, f"unknown parameter: {where}", where)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("path, schema, wire, method", CASES)
async def test_an_undeclared_parameter_is_reported_before_missing_and_mistyped_ones(api, path, schema, wire, method, transport):
    """Every required parameter left out and one sent with a wrong type, and the undeclared
    name sent last: the undeclared name is what the caller hears about."""
    if transport.startswith("client"):
        pytest.skip(NO_UNDECLARED)
    params, _ = await prepare(api, example_for(path, schema, wire))
    in_path = set(method.http.path_params) if method.http and transport == "rest" else set()
    fields = [f for f in schema.flat_params(method) if f.name not in in_path]
    broken = {k: v for k, v in params.items() if k in in_path}
    wrong = next(((f.name, w) for f in fields if not f.required and (w := wrong_value(f, schema, from_query(transport, method))) is not None), None)
    if wrong is not None:
        broken[wrong[0]] = wrong[1]
    if wrong is None and not any(f.required for f in fields):
        pytest.skip(f"{wire} on {transport}: no parameter can be left out or sent with a wrong type")
    name, value = unknown_top_level(method, schema, params, in_path)
    r = await Caller(api, transport).call(method, {**broken, name: value})
    assert_invalid_params(transport, r, f"unknown parameter: {name}", name)


# -- the value rules the OpenAPI document states ---------------------------------------------------

def beyond_and_at(prop: dict[str, Any], value: Any) -> list[tuple[str, Any, bool]]:
    """(keyword, a value, whether the server must refuse it) for each bound `prop` states, built
    around the example's `value`: just outside the bound, and on it."""
    cases: list[tuple[str, Any, bool]] = []
    for kw, step in (("minimum", -1), ("maximum", 1)):
        if kw in prop and prop[kw] not in (*INT64, *INT32):  # a type's own range is tested above
            cases += [(kw, prop[kw] + step, True), (kw, prop[kw], False)]
    item = value[0] if isinstance(value, list) and value else None
    if "minItems" in prop:
        cases += [("minItems", [item] * (prop["minItems"] - 1), True), ("minItems", [item] * prop["minItems"], False)]
    if "maxItems" in prop:
        cases += [("maxItems", [item] * (prop["maxItems"] + 1), True), ("maxItems", [item] * prop["maxItems"], False)]
    if "pattern" in prop:
        cases += [("pattern", "u5d", True)]
    return cases


def component(schemas: dict[str, Any], ref: dict[str, str]) -> dict[str, Any]:
    """The component a `{"$ref": "#/components/schemas/<Name>"}` names."""
    return schemas[ref["$ref"].removeprefix("#/components/schemas/")]


@pytest.fixture
async def served_openapi(api):
    status, doc = await api.rest("GET", "/api/v1/openapi.json")
    assert status == 200
    return doc


@pytest.mark.parametrize("transport", on_this_backend(("zap-msgpack", "rest")))
@pytest.mark.parametrize("path, schema, wire, method", [c for c in CASES if c.values[0].name == "billing.zap"])
async def test_every_bound_the_openapi_document_states_is_the_one_the_server_enforces(
        api, served_openapi, path, schema, wire, method, transport):
    """Each minimum/maximum/minItems/maxItems/pattern a rule adds to a method's params in the
    served document: a value just beyond it is refused naming the parameter, a value on it is
    not (business rules aside: every bound stated so far lies well inside them)."""
    schemas = served_openapi["components"]["schemas"]
    envelope = next(e for e in (component(schemas, r) for r in schemas["ZapCall"]["oneOf"])
                    if e["properties"]["method"]["const"] == wire)
    props = component(schemas, envelope["properties"]["params"])["properties"]
    params, _ = await prepare(api, example_for(path, schema, wire))
    as_text = transport == "rest" and method.http is not None and method.http.verb in ("GET", "DELETE")
    checked = 0
    for name, prop in props.items():
        for kw, value, refused in beyond_and_at(prop, params.get(name)):
            if as_text and isinstance(value, list):
                continue
            if kw in ("minItems", "maxItems") and params.get(name) in (None, []):
                raise AssertionError(f"{wire}: the example gives no {name} item to repeat")
            r = await Caller(api, transport).call(method, {**params, name: value})
            if refused:
                assert_invalid_params(transport, r, None, name)
            else:
                assert r.error is None or r.error.get("param") != name, (name, kw, value, r.error)
            checked += 1
    if not checked:
        pytest.skip(f"{wire}: the document states no bound for its parameters")
