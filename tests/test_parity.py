"""REST and ZAP agree, for every method of the registry (so a new schema method is covered as
soon as it exists, and this file fails until it has an example in schemas/examples/billing.json):

(a) the REST route, ZAP/JSON and ZAP/msgpack give the same result for the same params, and
    leave the same state behind;
(b) a read-scope key is refused a mutating method with 403 on REST and 403/-32003 on ZAP, and
    is allowed a non-mutating one on both: the ZAP endpoint applies exactly the REST route's
    per-method permission.

Read-only methods are called on one tenant through all three transports and must answer
identically. A mutating method is run, after the same setup, on three fresh tenants (one per
transport); the answers are compared after replacing ids the server made with placeholders.
Timestamps are compared as they are: the server's clock is frozen (FakeClock), so every tenant
sees the same instant.
"""
from __future__ import annotations

import re
from typing import Any

import pytest

from conftest import REGISTRY, TRANSPORTS, Api
from examples import REPO, Example, examples_path, load_examples, missing_examples, prepare, resolve
from zapbilling.registry import default_schema_path

SCHEMA_FILE = default_schema_path()
EXAMPLES = load_examples(SCHEMA_FILE)
"""By wire name; the data is schemas/examples/billing.json (format: schemas/examples/README.md)."""
EXAMPLES_FILE = examples_path(SCHEMA_FILE)
if EXAMPLES_FILE.is_relative_to(REPO):
    EXAMPLES_FILE = EXAMPLES_FILE.relative_to(REPO)


async def _ok(api: Api, method: str, params: dict[str, Any]) -> dict[str, Any]:
    r = await api.call(method, params)
    assert r.ok, (method, params, r)
    return r.result


METHODS = sorted(REGISTRY.commands)
MUTATING = [m for m in METHODS if REGISTRY.commands[m].mutates]
READ_ONLY = [m for m in METHODS if not REGISTRY.commands[m].mutates]


def example(wire: str) -> Example:
    assert wire in EXAMPLES, f"{wire} is in the schema but has no example in {EXAMPLES_FILE}: add one under \"methods\""
    return EXAMPLES[wire]


SERVER_ID = re.compile(r"[a-z][a-z0-9]*_[0-9a-f]{16,}\Z|whsec_[A-Za-z0-9+/]{32}\Z")  # ids, and webhook secrets (random too)


def normalise(value: Any, refs: dict[str, str]) -> Any:
    """Ids the server made -> placeholders: setup ids by name, others in order of appearance."""
    names = {v: f"<{k}>" for k, v in refs.items()}
    seen: dict[str, str] = {}

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: walk(v[k]) for k in sorted(v)}
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, str):
            if v in names:
                return names[v]
            if SERVER_ID.match(v):
                return seen.setdefault(v, f"<id{len(seen)}>")
        return v

    return walk(value)


def expected_status(wire: str, transport: str) -> int:
    http = REGISTRY.commands[wire].http
    return http.status if transport == "rest" else 200


# -- the examples themselves -------------------------------------------------------------------------

def test_every_registry_method_has_an_example():
    missing = missing_examples(REGISTRY.schema)
    assert not missing, f"schema methods without an example in {EXAMPLES_FILE}: {', '.join(missing)}"
    unknown = sorted(set(EXAMPLES) - set(REGISTRY.commands))
    assert not unknown, f"examples for methods the schema does not declare: {', '.join(unknown)}"


@pytest.mark.parametrize("wire", METHODS)
def test_example_sends_every_parameter(wire):
    command = REGISTRY.commands[wire]
    assert set(example(wire).params) == {f.name for f in command.fields}


# -- (a) identical results ------------------------------------------------------------------------------

@pytest.mark.parametrize("wire", READ_ONLY)
async def test_read_only_method_answers_identically_on_rest_and_zap(api, wire):
    command = REGISTRY.commands[wire]
    params, _ = await prepare(api, example(wire))
    replies = {t: await api.using(t).call(command.name, dict(params)) for t in TRANSPORTS if t != "rest" or command.http}
    for t, r in replies.items():
        assert r.ok, (t, r)
        assert r.status == expected_status(wire, t), (t, r)
    results = list(replies.values())
    for t, r in replies.items():
        assert r.result == results[0].result, f"{t} differs from {next(iter(replies))}"


@pytest.mark.parametrize("wire", MUTATING)
async def test_mutating_method_gives_identical_results_and_effects_on_rest_and_zap(api, make_key, wire):
    command = REGISTRY.commands[wire]
    ex = example(wire)
    results, states = {}, {}
    for t in TRANSPORTS:
        if t == "rest" and command.http is None:
            continue
        admin = api.with_key(await make_key(f"parity-{t}", "live", "admin"))  # a fresh tenant per transport
        params, refs = await prepare(admin, ex)
        r = await admin.using(t).call(command.name, params)
        assert r.ok, (t, r)
        assert r.status == expected_status(wire, t), (t, r)
        results[t] = normalise(r.result, refs)
        states[t] = [normalise(await _ok(admin, m, resolve(p, refs)), refs) for m, p in ex.state]
    first = next(iter(results))
    for t in results:
        assert results[t] == results[first], f"{t} answered differently from {first}"
        assert states[t] == states[first], f"{t} left a different state from {first}"


# -- (b) the same permission on both transports ---------------------------------------------------------

@pytest.mark.parametrize("wire", MUTATING)
async def test_read_key_is_refused_a_mutating_method_on_rest_and_zap(api, make_key, wire):
    command = REGISTRY.commands[wire]
    ex = example(wire)
    params, refs = await prepare(api, ex)
    before = [await _ok(api, m, resolve(p, refs)) for m, p in ex.state]
    reader = api.with_key(await make_key("acme", "live", "read"))
    for t in TRANSPORTS:
        if t == "rest" and command.http is None:
            continue
        r = await reader.using(t).call(command.name, dict(params))
        assert r.status == 403, (t, r)
        assert r.error is not None and r.error["kind"] == "forbidden", (t, r)
        if t != "rest":
            assert r.error["code"] == -32003, (t, r)
    assert [await _ok(api, m, resolve(p, refs)) for m, p in ex.state] == before, "a refused call changed something"


@pytest.mark.parametrize("wire", READ_ONLY)
async def test_read_key_is_allowed_a_read_only_method_on_rest_and_zap(api, make_key, wire):
    command = REGISTRY.commands[wire]
    params, _ = await prepare(api, example(wire))
    admin = await api.call(command.name, dict(params)) if command.http else await api.using("zap-json").call(command.name, dict(params))
    assert admin.ok, admin
    reader = api.with_key(await make_key("acme", "live", "read"))
    for t in TRANSPORTS:
        if t == "rest" and command.http is None:
            continue
        r = await reader.using(t).call(command.name, dict(params))
        assert r.ok, (t, r)
        assert r.status == expected_status(wire, t), (t, r)
        assert r.result == admin.result, t


@pytest.mark.parametrize("wire", METHODS)
async def test_discover_mutates_flag_matches_the_permission_applied(api, make_key, wire):
    """zap.discover's `mutates` is the permission rule both transports apply: a read key is
    refused exactly the methods it marks as mutating."""
    _, answer = await api.zap_raw({"method": "zap.discover", "id": 1})
    mutates = answer["result"]["methods"][wire]["mutates"]
    assert mutates is REGISTRY.commands[wire].mutates
    params, _ = await prepare(api, example(wire))
    reader = api.with_key(await make_key("acme", "live", "read"))
    r = await reader.using("zap-json").call(REGISTRY.commands[wire].name, params)
    assert (r.error is not None and r.error["kind"] == "forbidden") is mutates, r
