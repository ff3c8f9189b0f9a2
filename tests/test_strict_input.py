"""Strict input (issue 15, item 1; contract Part 2, "Strict input"): a parameter the method does
not declare is invalid params `unknown parameter: <name>` (`param` = the name, a path inside
lists and structs), in JSON and msgpack bodies, ZAP params and REST query strings, reported
before any other failure and writing nothing. Free-form maps (metadata, dimensions), envelope
members and REST path segments are not parameters and are not reported.

The schema-driven cases (every method, every transport) are in test_contract.py; these are the
issue's own example and the edges around the rule."""
from __future__ import annotations

from typing import Any

import pytest

from conftest import assert_error, balance, ledger_rows, ok

pytestmark = pytest.mark.sqlite_only("input validation, before the store")

ALICE = "hanzo/alice"
USAGE = "/api/v1/billing/usage"


async def nothing_written(api, db_path: str) -> None:
    """The account as the `funded` fixture left it: 1000 deposited, no usage."""
    assert await balance(api) == 1000
    assert (await ok(api.using("rest"), "getUsage", {"user": ALICE}))["usage"] == []
    assert [r["type"] for r in ledger_rows(db_path, ALICE)] == ["deposit"]


@pytest.fixture
async def funded(api) -> None:
    await ok(api, "deposit", {"user": ALICE, "amount": 1000})


def refused(api, r: Any, name: str) -> None:
    assert_error(api, r, "invalid_params", f"unknown parameter: {name}", param=name)


# -- the issue's example ----------------------------------------------------------------------------

async def test_the_issues_example_over_rest_is_the_unknown_name_not_the_missing_user(api, funded, db_path):
    """POST /api/v1/billing/usage {"ammount": 500}: 400 `unknown parameter: ammount`, not
    `user is required`, and nothing is charged."""
    status, body = await api.rest("POST", USAGE, {"ammount": 500})
    assert status == 400, body
    assert body == {"error": {"type": "api-error", "code": "invalid_params", "message": "unknown parameter: ammount", "param": "ammount"}}
    await nothing_written(api, db_path)


@pytest.mark.parametrize("params", [
    {"ammount": 500},
    {"user": ALICE, "ammount": 500},
    {"user": ALICE, "ammount": 500, "model": "gpt-x", "requestId": "req-typo"},
], ids=["alone", "with-user", "with-more"])
async def test_a_misspelt_amount_charges_nothing_on_any_transport(any_api, funded, db_path, params):
    r = await any_api.call("recordUsage", params)
    refused(any_api, r, "ammount")
    await nothing_written(any_api, db_path)


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_a_misspelt_amount_inside_a_batch_fails_that_entry_alone(api, funded, db_path, codec):
    batch = [
        {"method": "billing.recordUsage", "id": "typo", "params": {"user": ALICE, "ammount": 500}},
        {"method": "billing.getBalance", "id": "read", "params": {"user": ALICE}},
    ]
    status, body = await api.zap_raw(batch, codec=codec)
    assert status == 200, body
    typo, read = body
    assert typo["id"] == "typo" and "result" not in typo, typo
    assert typo["error"] == {"code": -32602, "message": "unknown parameter: ammount", "data": {"kind": "invalid_params", "param": "ammount"}}
    assert read["result"]["balance"] == 1000, read
    await nothing_written(api, db_path)


async def test_a_refused_call_does_not_claim_its_idempotency_key(api, funded, db_path):
    """Nothing is stored for the key, so the corrected call under the same key is charged."""
    for transport in ("rest", "zap-msgpack"):
        refused(api.using(transport), await api.using(transport).call(
            "recordUsage", {"user": ALICE, "ammount": 5}, idempotency_key=f"typo-{transport}"), "ammount")
    await nothing_written(api, db_path)
    for transport in ("rest", "zap-msgpack"):
        await ok(api.using(transport), "recordUsage", {"user": ALICE, "amount": 5}, idempotency_key=f"typo-{transport}")
    assert await balance(api) == 990


# -- which unknown name, and before what -----------------------------------------------------------

@pytest.mark.parametrize("params, first", [
    ({"user": ALICE, "zeta": 1, "alpha": 2, "amount": 5}, "zeta"),
    ({"alpha": 2, "zeta": 1, "user": ALICE, "amount": 5}, "alpha"),
], ids=["zeta-first", "alpha-first"])
async def test_of_several_unknown_names_the_first_sent_is_reported(any_api, funded, params, first):
    refused(any_api, await any_api.call("recordUsage", params), first)


async def test_the_first_unknown_name_as_sent_whether_nested_or_top_level(any_api):
    meter = await ok(any_api, "createMeter", {"name": "calls", "eventName": "calls"})
    event = {"meterId": meter["id"], "userId": ALICE, "value": 1}
    nested_first = {"events": [event, {**event, "valeu": 3}], "bogus": 1}
    top_first = {"bogus": 1, "events": [event, {**event, "valeu": 3}]}
    refused(any_api, await any_api.call("recordMeterEvents", nested_first), "events[1].valeu")
    refused(any_api, await any_api.call("recordMeterEvents", top_first), "bogus")
    summary = await ok(any_api, "getMeterEventsSummary", {"meterId": meter["id"], "userId": ALICE})
    assert summary["eventCount"] == 0, summary


async def test_a_misspelt_tier_field_is_named_by_its_path(any_api):
    meter = await ok(any_api, "createMeter", {"name": "calls", "eventName": "calls"})
    tiers = [{"upTo": 100, "price": 2}, {"upto": 0, "price": 1}]
    r = await any_api.call("createPricingRule", {"meterId": meter["id"], "model": "tiered", "tiers": tiers})
    refused(any_api, r, "tiers[1].upto")
    assert (await ok(any_api, "listPricingRules", {}))["rules"] == []


@pytest.mark.parametrize("params", [
    {"amount": "500", "ammount": 500},               # wrongly typed, then unknown
    {"user": "", "currency": "xyz", "ammount": 500},  # missing, invalid, then unknown
    {"user": ALICE, "amount": 2**63, "ammount": 500},  # out of range, then unknown
])
async def test_an_unknown_name_is_reported_before_every_other_failure(any_api, params):
    refused(any_api, await any_api.call("recordUsage", params), "ammount")


async def test_permission_is_checked_before_params(api, funded, make_key, db_path):
    """A read key is 403 for a mutating method whatever its params say (auth first, then params);
    the admin key hears about the unknown name."""
    reader = api.with_key(await make_key(scope="read"))
    for transport in ("rest", "zap-json"):
        r = await reader.using(transport).call("recordUsage", {"user": ALICE, "ammount": 500})
        assert_error(reader.using(transport), r, "forbidden", "read-only")
        refused(api.using(transport), await api.using(transport).call("recordUsage", {"user": ALICE, "ammount": 500}), "ammount")
    await nothing_written(api, db_path)


async def test_a_key_that_is_not_text_is_an_unknown_parameter(api, funded, db_path):
    """msgpack maps may have binary keys (the decoder takes text and binary keys only): not a
    declared name either."""
    env = {"method": "billing.recordUsage", "id": 1, "params": {"user": ALICE, "amount": 5, b"amount": 1}}
    status, body = await api.zap_raw(env, codec="msgpack")
    assert status == 200, body
    assert body["error"]["message"] == "unknown parameter: b'amount'" and body["error"]["data"]["param"] == "b'amount'", body
    await nothing_written(api, db_path)


# -- what is not a parameter ---------------------------------------------------------------------------

async def test_free_form_maps_take_any_keys(any_api):
    """metadata (Data) and dimensions (Map) take any keys; the same names one level up are refused."""
    meta = {"ammount": 1, "nested": {"anything": [1, {"goes": True}]}, "": None}
    dep = await ok(any_api, "deposit", {"user": ALICE, "amount": 1000, "metadata": meta})
    assert dep["metadata"] == meta
    refused(any_api, await any_api.call("deposit", {"user": ALICE, "amount": 1000, "ammount": 1}), "ammount")
    hold = await ok(any_api, "createHold", {"user": ALICE, "amount": 10, "metadata": {"valeu": 1}})
    captured = await ok(any_api, "captureHold", {"id": hold["holdId"], "amount": 5, "metadata": {"upto": 2}})
    assert captured["status"] == "captured"
    meter = await ok(any_api, "createMeter", {"name": "calls", "eventName": "calls", "dimensions": ["model"]})
    event = {"meterId": meter["id"], "userId": ALICE, "value": 2}
    dimensions = {"model": "m", "valeu": "x", "anything": "y"}
    assert (await ok(any_api, "recordMeterEvents", {"events": [{**event, "dimensions": dimensions}]}))["count"] == 1
    refused(any_api, await any_api.call("recordMeterEvents", {"events": [{**event, "valeu": "x"}]}), "events[0].valeu")


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_envelope_members_are_not_parameters(api, funded, codec):
    env = {"jsonrpc": "2.0", "method": "billing.recordUsage", "id": 9, "idempotencyKey": "env-1",
           "params": {"user": ALICE, "amount": 7, "requestId": f"env-{codec}"}}
    status, body = await api.zap_raw(env, codec=codec)
    assert status == 200 and body["result"]["transactionId"], body
    assert body["jsonrpc"] == "2.0" and body["id"] == 9, body
    # the same names inside params are parameters, and undeclared ones
    env["params"] |= {"jsonrpc": "2.0", "idempotencyKey": "env-2"}
    status, body = await api.zap_raw(env, codec=codec)
    assert status == 200 and body["error"]["message"] == "unknown parameter: jsonrpc", body


async def test_rest_path_segments_are_not_parameters(api, funded):
    hold = await ok(api, "createHold", {"user": ALICE, "amount": 10})
    status, body = await api.rest("POST", f"/api/v1/billing/holds/{hold['holdId']}/capture", {"amount": 4, "model": "m"})
    assert status == 200 and body["capturedAmount"] == 4, body
    status, body = await api.rest("GET", f"/api/v1/billing/holds/{hold['holdId']}")
    assert status == 200 and body["status"] == "captured", body
    status, body = await api.rest("POST", f"/api/v1/billing/holds/{hold['holdId']}/release", {"holdId": hold["holdId"]})
    assert status == 400 and body["error"]["message"] == "unknown parameter: holdId", body


# -- REST query strings ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path, query, name", [
    ("/api/v1/billing/balance", [("user", ALICE), ("curency", "eur")], "curency"),
    ("/api/v1/billing/balance", [("usr", ALICE)], "usr"),  # unknown, not `user query parameter is required`
    ("/api/v1/billing/usage", [("user", ALICE), ("limt", "5"), ("x", "")], "limt"),
    ("/api/v1/billing/meters", [("limit", "5"), ("startingBefore", "mtr_1")], "startingBefore"),
    ("/api/v1/billing/holds", [("user", ALICE), ("status", "pending"), ("state", "pending")], "state"),
])
async def test_an_unknown_query_parameter_on_a_get_route_is_refused(api, funded, path, query, name):
    status, body = await api.rest("GET", path, params=query)
    assert status == 400, body
    assert body["error"]["code"] == "invalid_params" and body["error"]["param"] == name, body
    assert body["error"]["message"] == f"unknown parameter: {name}", body


@pytest.mark.parametrize("second", ["bob", ALICE, ""])
async def test_a_query_parameter_given_twice_is_refused_not_taken_first(api, funded, second):
    """`?user=alice&user=bob` read alice's balance: which one was meant cannot be told."""
    status, body = await api.rest("GET", "/api/v1/billing/balance", params=[("user", ALICE), ("currency", "usd"), ("user", second)])
    assert status == 400, body
    assert body["error"] == {"type": "api-error", "code": "invalid_params", "message": "parameter given more than once: user",
                             "param": "user"}, body
    status, body = await api.rest("GET", "/api/v1/billing/balance", params=[("user", ALICE), ("user", "bob"), ("limt", "1")])
    assert status == 400 and body["error"]["message"] == "unknown parameter: limt", body  # an unknown name first


def test_a_list_is_its_name_repeated():
    from zapbilling.errors import InvalidParams
    from zapbilling.transport.rest import refuse_unknown_query
    from multidict import MultiDict

    query = MultiDict([("tag", "a"), ("user", "u"), ("tag", "b")])
    refuse_unknown_query(query, frozenset({"tag", "user"}), {}, lists=frozenset({"tag"}))
    with pytest.raises(InvalidParams, match="parameter given more than once: tag"):
        refuse_unknown_query(query, frozenset({"tag", "user"}), {})


async def test_a_query_parameter_on_a_body_route_is_refused_not_dropped(api, funded, db_path):
    status, body = await api.rest("POST", USAGE, {"user": ALICE, "amount": 5}, params={"model": "gpt-x"})
    assert status == 400 and body["error"]["param"] == "model", body
    assert body["error"]["message"].startswith("unknown parameter: model (POST /api/v1/billing/usage takes it in the body)"), body
    await nothing_written(api, db_path)


async def test_a_path_parameter_sent_in_the_query_is_refused(api, funded):
    hold = await ok(api, "createHold", {"user": ALICE, "amount": 10})
    status, body = await api.rest("GET", f"/api/v1/billing/holds/{hold['holdId']}", params={"id": "hold_other"})
    assert status == 400 and body["error"]["param"] == "id", body
    assert body["error"]["message"].startswith("unknown parameter: id"), body


@pytest.mark.parametrize("sent", ["hold_other", None])  # another hold's id, or the same as the path's
async def test_a_path_parameter_sent_in_the_body_is_refused_not_dropped(api, funded, sent):
    """The path's id won silently over a body's `id` (a capture of hold A with {"id": "other"}
    captured A): refused like a path parameter in the query, even when the two agree."""
    hold = await ok(api, "createHold", {"user": ALICE, "amount": 10})
    path = f"/api/v1/billing/holds/{hold['holdId']}/capture"
    status, body = await api.rest("POST", path, {"amount": 5, "id": sent or hold["holdId"]})
    assert status == 400 and body["error"]["param"] == "id", body
    assert body["error"]["message"] == "unknown parameter: id (POST /api/v1/billing/holds/{id}/capture takes it in the path)", body
    assert (await ok(api, "getHold", {"id": hold["holdId"]}))["status"] == "pending"
    status, body = await api.rest("POST", path, {"amount": 5})
    assert status == 200 and body["capturedAmount"] == 5, body


async def test_an_api_key_in_the_query_string_is_still_refused_as_unauthorized(api):
    """Authentication comes first: `key` is refused as a key in the URL, `keys` as unknown."""
    status, body = await api.rest("GET", "/api/v1/billing/balance", params={"user": ALICE, "key": "k"})
    assert status == 401 and body["error"]["code"] == "unauthorized", body
    status, body = await api.rest("GET", "/api/v1/billing/balance", params={"user": ALICE, "keys": "k"})
    assert status == 400 and body["error"]["message"] == "unknown parameter: keys", body


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_zap_params_with_msgpack_and_json_bodies_alike(api, funded, codec):
    env = {"method": "billing.getBalance", "id": 1, "params": {"user": ALICE, "currency": "usd", "curency": "eur"}}
    status, body = await api.zap_raw(env, codec=codec)
    assert status == 200, body
    assert body["error"]["message"] == "unknown parameter: curency" and body["error"]["code"] == -32602, body

