"""Broken object level authorisation, schema-driven: every operation of the registry, with the
valid call of schemas/examples/billing.json, over REST, ZAP/JSON and ZAP/msgpack.

Tenant A is an org in live mode (a fresh one per transport); its objects are made by the
example's setup with A's admin key. The same call is then made

- by an admin key of another org (live), and
- by an admin key of A's own org in *test* mode,

and each answer must be exactly what a brand-new empty tenant gets for the same call (after
replacing server-made ids with placeholders): a 404 `... not found` where the call names one of
A's objects, zeros and empty lists where it names a user; A's rows in every table, and what A's
own reads answer, are the same before and after; no error body holds A's ids, users or amounts
beyond what the caller sent. A read of A's own key does see the data (so the probe can fail).

Then: a revoked key is refused from the very next request; a read-scoped key can call no
mutating method by any route (REST, ZAP/JSON, ZAP/msgpack, inside a ZAP batch, with or without
an idempotency key) and changes nothing; zap.discover lists every method for any key and shows
no tenant data. check_invariants(db_path) holds after every test (autouse fixture).
"""
from __future__ import annotations

import json
import re
import sqlite3
from typing import Any

import pytest
import pg
from conftest import REGISTRY, TRANSPORTS, Api, Reply, assert_error, ok
from examples import Example, load_examples, prepare, resolve
from invariants import check_invariants
from zapbilling.app import STORE
from zapbilling.registry import default_schema_path
from zapbilling.times import system_clock

EXAMPLES = load_examples(default_schema_path())
METHODS = sorted(REGISTRY.commands)
MUTATING = [w for w in METHODS if REGISTRY.commands[w].mutates]
READ_ONLY = [w for w in METHODS if not REGISTRY.commands[w].mutates]
ALICE, BOB = "hanzo/alice", "hanzo/bob"
A = ("acme", "live")
OTHERS = {"another org": ("globex", "live"), "A's test mode": ("acme", "test")}
SERVER_ID = re.compile(r"\b[a-z][a-z0-9]*_[0-9a-f]{16,}\b")
SECRET_TEXT_COLUMNS = {"id", "user_id", "meter_id", "refund_of", "idempotency_key", "dedupe_key", "event_name",
                       "name", "plan_id", "hint", "hash", "key", "transaction_id", "request_id", "notes", "tags"}
SECRET_INT_COLUMNS = {"amount", "balance", "remaining", "refunded", "value", "unit_price", "holds", "captured_amount"}


@pytest.fixture(autouse=True)
async def invariants_hold_after_the_test(server, db_path):
    yield
    check_invariants(db_path)


def example(wire: str) -> Example:
    assert wire in EXAMPLES, f"{wire} has no example in schemas/examples/billing.json"
    return EXAMPLES[wire]


def uses_refs(value: Any) -> bool:
    """Whether example params name an object the setup made (an id of tenant A)."""
    if isinstance(value, dict):
        return "$ref" in value or any(uses_refs(v) for v in value.values())
    if isinstance(value, list):
        return any(uses_refs(v) for v in value)
    return False


# -- A's state: every row of the tenant, and what its own reads answer -------------------------------

def tenant_id(db_path: str, org: str, mode: str) -> int:
    con = pg.read_only(db_path)
    try:
        (tid,), = con.execute("SELECT id FROM tenants WHERE org = ? AND mode = ?", (org, mode)).fetchall()
        return tid
    finally:
        con.close()


SENDER_OWNED = {"events": ("dispatched",), "webhook_endpoints": ("failed_in_row", "status")}
"""Columns the background webhook sender changes on its own schedule, whatever call runs (its
deliveries table is left out whole): the call under test is judged by everything else."""


def tenant_rows(db_path: str, tenant: int) -> dict[str, list[dict[str, Any]]]:
    """Every row of `tenant` in every table that has a tenant column, but the sender's own."""
    con = pg.read_only(db_path)
    con.row_factory = sqlite3.Row
    try:
        out = {}
        for table in pg.table_names(con):
            if "tenant" in pg.column_names(con, table):
                if table == "deliveries":
                    continue
                rows = [{k: v for k, v in dict(r).items() if k not in SENDER_OWNED.get(table, ())}
                        for r in con.execute(f"SELECT * FROM {table} WHERE tenant = ?", (tenant,))]
                out[table] = sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))
        return out
    finally:
        con.close()


def default_read_params(wire: str) -> dict[str, Any] | None:
    """Params for a read-only method that needs nothing but a user (None: it needs more)."""
    params: dict[str, Any] = {}
    for f in REGISTRY.commands[wire].fields:
        if f.name in ("user", "userId"):
            params[f.name] = ALICE
        elif f.name == "limit":
            params[f.name] = 1000
        elif f.required:
            return None
    return params


async def own_reads(admin: Api, ex: Example, refs: dict[str, str]) -> list[Any]:
    """What tenant A's own key reads: the example's state reads, every read-only method that takes
    only a user (for alice and bob), each meter by id and its summary."""
    reads: list[tuple[str, dict[str, Any]]] = [(m, resolve(p, refs)) for m, p in ex.state]
    for wire in READ_ONLY:
        params = default_read_params(wire)
        if params is None:
            continue
        reads.append((REGISTRY.commands[wire].name, params))
        if any(k in params for k in ("user", "userId")):
            reads.append((REGISTRY.commands[wire].name, {k: (BOB if v == ALICE else v) for k, v in params.items()}))
    for meter in (await ok(admin, "listMeters", {}))["meters"]:
        reads += [("getMeter", {"id": meter["id"]}), ("getMeterEventsSummary", {"meterId": meter["id"]})]
    answers = []
    for method, params in reads:
        r = await admin.call(method, params)
        answers.append((method, params, r.status, r.result, r.error))
    return answers


async def snapshot(admin: Api, db_path: str, tenant: int, ex: Example, refs: dict[str, str]) -> tuple[Any, Any]:
    return tenant_rows(db_path, tenant), await own_reads(admin, ex, refs)


def secrets_of(rows: dict[str, list[dict[str, Any]]]) -> tuple[set[str], set[int]]:
    """A's ids, user names, names and amounts, as they sit in its rows."""
    texts, numbers = set(), set()
    for table_rows in rows.values():
        for row in table_rows:
            for column, value in row.items():
                if column in SECRET_TEXT_COLUMNS and isinstance(value, str) and len(value) >= 3:
                    texts.add(value)
                elif column in SECRET_INT_COLUMNS and isinstance(value, int) and abs(value) >= 10:
                    numbers.add(value)
    return texts, numbers


def assert_no_leak(error: dict[str, Any], sent: dict[str, Any], secrets: tuple[set[str], set[int]], who: str) -> None:
    body = json.dumps(error, sort_keys=True)
    sent_text = json.dumps(sent, sort_keys=True)
    texts, numbers = secrets
    leaked = sorted(t for t in texts if t in body and t not in sent_text)
    assert not leaked, f"{who}: the error body shows tenant A's data it was not sent: {leaked}: {body}"
    sent_numbers = {int(n) for n in re.findall(r"-?\d+", sent_text)}
    shown = {int(n) for n in re.findall(r"-?\d+", error.get("message", ""))}
    leaked_numbers = sorted((shown & numbers) - sent_numbers)
    assert not leaked_numbers, f"{who}: the error message shows tenant A's amounts {leaked_numbers}: {body}"


def normalised(r: Reply) -> Any:
    """An answer with server-made ids replaced by placeholders in order of appearance."""
    seen: dict[str, str] = {}
    text = json.dumps({"status": r.status, "result": r.result, "error": r.error}, sort_keys=True)
    text = re.sub(r"whsec_[A-Za-z0-9+/]{32}", "<webhook secret>", text)  # random, as ids are
    return json.loads(SERVER_ID.sub(lambda m: seen.setdefault(m.group(0), f"<id{len(seen)}>"), text))


# -- (1) another tenant sees and touches nothing of A's ------------------------------------------------

@pytest.mark.parametrize("wire", METHODS)
async def test_another_tenant_sees_and_changes_nothing_of_a_tenants_objects(api, make_key, db_path, wire):
    """Per transport a fresh tenant A (org acme-<transport>, live) with the example's objects,
    probed by another org and by A's own org in test mode, each against a never-used tenant."""
    command = REGISTRY.commands[wire]
    ex = example(wire)
    names_an_object = uses_refs(ex.params)
    for transport in TRANSPORTS:
        if transport == "rest" and command.http is None:
            continue
        org = f"acme-{transport}"
        admin = api.with_key(await make_key(org, "live"))
        params, refs = await prepare(admin, ex)
        others = {"another org": (f"globex-{transport}", "live"), "A's test mode": (org, "test")}
        probes = {who: api.with_key(await make_key(*tenant)).using(transport) for who, tenant in others.items()}
        empties = {who: api.with_key(await make_key(f"empty-{transport}-{n}", "live")).using(transport) for n, who in enumerate(others)}
        a_tenant = tenant_id(db_path, org, "live")
        before = await snapshot(admin, db_path, a_tenant, ex, refs)
        secrets = secrets_of(before[0])

        for who, probe in probes.items():
            where = f"{who} over {transport}"
            r = await probe.call(command.name, dict(params))
            fresh = await empties[who].call(command.name, dict(params))
            assert normalised(r) == normalised(fresh), f"{where} answers differently from a tenant that never had data: {r} vs {fresh}"
            if names_an_object:
                assert r.error is not None and r.error["kind"] == "not_found" and "not found" in r.error["message"], (where, r)
                assert_error(probe, r, "not_found", "not found")
            if r.error is not None:
                assert_no_leak(r.error, params, secrets, where)

        after = await snapshot(admin, db_path, a_tenant, ex, refs)
        assert after[0] == before[0], f"a call by another tenant over {transport} changed tenant A's rows"
        assert after[1] == before[1], f"a call by another tenant over {transport} changed what tenant A reads"
        if not command.mutates:  # A's own key does see its data: the probes above could have seen it too
            own = await admin.using(transport).call(command.name, dict(params))
            assert own.ok, (transport, own)
            assert normalised(own) != normalised(await empties["another org"].call(command.name, dict(params))), (transport, own)


def test_every_method_naming_an_object_is_probed_with_one_of_a_tenants_ids():
    """The examples give every id-taking parameter an id made by the setup, so the probe above
    really names one of A's objects (a literal id would prove nothing)."""
    id_params = {"id", "meterId", "originalTransactionId", "startingAfter", "eligibility", "events", "holdId", "transactionId",
                 "grantId"}
    # listings paged by user: their startingAfter is a user name (any text), not an object's id
    user_cursors = {"billing.listAccounts": {"startingAfter"},
                    "billing.createWebhookEndpoint": {"events"}}  # and a webhook endpoint's events are event types
    for wire in METHODS:
        params = example(wire).params
        takes_ids = {f.name for f in REGISTRY.commands[wire].fields} & id_params - user_cursors.get(wire, set())
        for name in takes_ids:
            if params.get(name) is not None:
                assert uses_refs(params[name]), f"{wire}: example param {name} is not an id made by the setup"
    # and the probe saw at least these as 404 from another tenant
    assert {w for w in METHODS if uses_refs(example(w).params)} >= {
        "billing.getMeter", "billing.voidCreditGrant", "billing.deletePricingRule", "billing.refund", "billing.getUsage",
        "billing.getMeterEventsSummary", "billing.recordMeterEvents", "billing.createPricingRule", "billing.burnCredits",
        "billing.listTransactions", "billing.listCreditTransactions",
    }


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_idempotency_and_dedupe_keys_belong_to_one_tenant(api, make_key, transport):
    """The same Idempotency-Key, requestId, starter credit, meter eventName and event key used by
    A and then by another tenant: the other tenant gets writes of its own, never A's answers."""
    a = api.using(transport)
    a_meter = (await ok(a, "createMeter", {"name": "usage", "eventName": "api-usage"}))["id"]
    mine = {
        "deposit": (await ok(a, "deposit", {"user": ALICE, "amount": 100}, idempotency_key="same-key"))["transactionId"],
        "usage": (await ok(a, "recordUsage", {"user": ALICE, "amount": 10, "requestId": "r1"}))["transactionId"],
        "starter": (await ok(a, "grantStarterCredit", {"user": ALICE}))["transactionId"],
        "event": (await ok(a, "recordMeterEvents", {"events": [{"meterId": a_meter, "userId": ALICE, "idempotency": "ev-1"}]}))["events"][0]["id"],
    }
    for who, (org, mode) in OTHERS.items():
        o = api.with_key(await make_key(org, mode)).using(transport)
        meter = await o.call("createMeter", {"name": "usage", "eventName": "api-usage"})
        assert meter.ok, (who, "eventName is unique per tenant, not across tenants", meter)
        theirs = {
            "deposit": await o.call("deposit", {"user": ALICE, "amount": 250}, idempotency_key="same-key"),
            "usage": await o.call("recordUsage", {"user": ALICE, "amount": 10, "requestId": "r1"}),
            "starter": await o.call("grantStarterCredit", {"user": ALICE}),
        }
        for what, r in theirs.items():
            assert r.ok, (who, what, r)
            assert r.result["transactionId"] != mine[what], f"{who} was answered with tenant A's {what}"
        assert theirs["deposit"].result["amount"] == 250, f"{who} got A's stored idempotent response"
        ev = await ok(o, "recordMeterEvents", {"events": [{"meterId": meter.result["id"], "userId": ALICE, "idempotency": "ev-1"}]})
        assert ev["events"][0]["status"] == "created" and ev["events"][0]["id"] != mine["event"], (who, ev)
        assert (await ok(o, "getBalance", {"user": ALICE}))["balance"] == 250 - 10 + 500, who
        summary = await ok(o, "getMeterEventsSummary", {"meterId": meter.result["id"], "userId": ALICE})
        assert summary["eventCount"] == 2, (who, "its own usage event and its own keyed event", summary)
    assert (await ok(a, "getBalance", {"user": ALICE}))["balance"] == 100 - 10 + 500
    assert (await ok(a, "getMeterEventsSummary", {"meterId": a_meter, "userId": ALICE}))["eventCount"] == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_tenant_named_in_params_or_envelope_is_ignored(api, make_key, db_path, transport):
    """The tenant comes from the key alone. Naming A's org, mode or tenant id in the params is
    refused as an unknown parameter (strict input: never silently ignored) and reads or writes
    nothing; in the ZAP envelope, outside params, it is ignored: the call reads and writes the
    caller's own tenant."""
    await ok(api, "deposit", {"user": ALICE, "amount": 100})
    a_tenant = tenant_id(db_path, *A)
    claims = {"tenant": a_tenant, "org": A[0], "mode": A[1], "livemode": True, "tenantId": a_tenant}
    for who, (org, mode) in OTHERS.items():
        o = api.with_key(await make_key(org, mode)).using(transport)
        for name, value in claims.items():
            for method, params in (("getBalance", {"user": ALICE}), ("deposit", {"user": ALICE, "amount": 7})):
                r = await o.call(method, {**params, name: value})
                assert_error(o, r, "invalid_params", f"unknown parameter: {name}", name)
        assert (await ok(o, "getBalance", {"user": ALICE}))["balance"] == 0, who
        if transport != "rest":
            codec = transport.split("-")[1]
            status, answer = await o.zap_raw({"method": "billing.deposit", "id": 1, "params": {"user": ALICE, "amount": 7}, **claims},
                                             codec=codec)
            assert status == 200 and answer["result"]["amount"] == 7, (who, answer)
            status, answer = await o.zap_raw({"method": "billing.getBalance", "id": 1, "params": {"user": ALICE}, **claims},
                                             codec=codec)
            assert status == 200 and answer["result"]["balance"] == 7, (who, answer)
    assert (await ok(api, "getBalance", {"user": ALICE}))["balance"] == 100


# -- (2) revoked keys -------------------------------------------------------------------------------------

@pytest.mark.parametrize("scope", ["admin", "read"])
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_revoked_key_is_refused_from_the_very_next_request(api, server, transport, scope):
    store = server.app[STORE]
    key_id, secret = await store.create_key(*A, scope, system_clock())
    _, sibling = await store.create_key(*A, scope, system_clock())
    await ok(api, "deposit", {"user": ALICE, "amount": 100})
    mine = api.with_key(secret).using(transport)
    assert (await mine.call("getBalance", {"user": ALICE})).result["balance"] == 100  # works, and is now cached if anything caches

    assert await store.revoke_key(key_id, system_clock())
    unknown = api.with_key("zb_live_" + "x" * 32).using(transport)
    for method, params in (("getBalance", {"user": ALICE}), ("deposit", {"user": ALICE, "amount": 5})):
        r = await mine.call(method, params)
        assert_error(mine, r, "unauthorized", "API key")
        assert r == await unknown.call(method, params), "a revoked key is answered differently from an unknown one"
    if transport != "rest":
        codec = transport.split("-")[1]
        for body in ({"method": "zap.discover", "id": 1}, [{"method": "billing.getBalance", "id": 1, "params": {"user": ALICE}}]):
            status, answer = await mine.zap_raw(body, codec=codec)
            assert status == 401 and answer["error"]["code"] == -32001 and "result" not in answer, answer
    assert (await api.call("getBalance", {"user": ALICE})).result["balance"] == 100, "the revoked key's deposit was written"
    assert (await api.with_key(sibling).using(transport).call("getBalance", {"user": ALICE})).ok, "revoking one key refused another"


# -- (3) a read-scoped key mutates nothing, by any route ------------------------------------------------

@pytest.mark.parametrize("wire", MUTATING)
async def test_read_key_can_call_no_mutating_method_on_any_route(api, make_key, db_path, wire):
    command = REGISTRY.commands[wire]
    ex = example(wire)
    params, refs = await prepare(api, ex)
    reader = api.with_key(await make_key(*A, "read"))
    a_tenant = tenant_id(db_path, *A)
    before = await snapshot(api, db_path, a_tenant, ex, refs)

    for t in TRANSPORTS:
        if t == "rest" and command.http is None:
            continue
        for key in (None, f"idem-{t}"):
            r = await reader.using(t).call(command.name, dict(params), idempotency_key=key)
            assert_error(reader.using(t), r, "forbidden", "read-only")
    read_entry = {"method": "billing.getBalance", "id": "read", "params": {"user": ALICE}}
    batch = [
        read_entry,
        {"method": wire, "id": "plain", "params": params},
        {"method": wire, "id": "keyed", "params": params, "idempotencyKey": "idem-batch"},
        {"jsonrpc": "2.0", "method": wire, "id": 7, "params": params},
    ]
    for codec in ("json", "msgpack"):
        for path in ("/api/v1/zap", "/api/v1/billing/zap"):
            status, answers = await reader.zap_raw(batch, codec=codec, path=path)
            assert status == 200 and isinstance(answers, list) and len(answers) == len(batch), (codec, path, status, answers)
            assert "result" in answers[0], answers[0]
            for entry, answer in zip(batch[1:], answers[1:]):
                assert answer["id"] == entry["id"] and "result" not in answer, (codec, path, answer)
                assert answer["error"]["code"] == -32003 and answer["error"]["data"]["kind"] == "forbidden", (codec, path, answer)
            status, answer = await reader.zap_raw(batch[1], codec=codec, path=path)
            assert status == 403 and answer["error"]["code"] == -32003, (codec, path, status, answer)

    after = await snapshot(api, db_path, a_tenant, ex, refs)
    assert after == before, f"a read key's refused {wire} changed something"
    # the same call with the tenant's admin key is valid: the refusals above were about scope alone
    assert (await api.call(command.name, dict(params)) if command.http else await api.using("zap-json").call(command.name, dict(params))).ok


# -- (4) zap.discover ----------------------------------------------------------------------------------------

async def test_discover_lists_every_method_for_any_key_and_no_tenant_data(api, make_key, db_path):
    for wire in ("billing.getUsage", "billing.burnCredits", "billing.refund"):
        await prepare(api, example(wire))
    keys = {
        "A admin": api.key,
        "A read": await make_key(*A, "read"),
        "A test admin": await make_key("acme", "test"),
        "other org admin": await make_key("globex", "live"),
        "other org read": await make_key("globex", "live", "read"),
    }
    rows = [r for table in tenant_rows(db_path, tenant_id(db_path, *A)).values() for r in table]
    ids = {v for r in rows for v in r.values() if isinstance(v, str) and SERVER_ID.fullmatch(v)}
    users = {r["user_id"] for r in rows if "user_id" in r}
    assert ids and ALICE in users, "tenant A has data to hide"
    answers = {}
    for who, key in keys.items():
        for codec in ("json", "msgpack"):
            status, answer = await api.with_key(key).zap_raw({"method": "zap.discover", "id": 1}, codec=codec)
            assert status == 200 and "result" in answer, (who, codec, answer)
            methods = answer["result"]["methods"]
            assert set(methods) == set(REGISTRY.commands), (who, codec, sorted(set(REGISTRY.commands) ^ set(methods)))
            assert all(methods[w]["mutates"] is REGISTRY.commands[w].mutates for w in methods), (who, codec)
            answers[(who, codec)] = answer["result"]
            status, batch = await api.with_key(key).zap_raw([{"method": "zap.discover", "id": 2}], codec=codec)
            assert status == 200 and batch[0]["result"] == answer["result"], (who, codec)
    first = next(iter(answers.values()))
    assert all(a == first for a in answers.values()), "zap.discover answers differently for different keys"
    text = json.dumps(first)
    shown = sorted(x for x in ids | users if x in text)
    assert not shown, f"zap.discover shows tenant data: {shown}"
