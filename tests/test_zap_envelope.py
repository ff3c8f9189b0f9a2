"""The ZAP envelope on a real server: the error table, id and jsonrpc echo, batches, codecs and
content negotiation, the second mount, zap.discover, idempotency keys (envelope field and REST
header) and decoding limits (contract: "Errors" and "The ZAP envelope")."""
from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest

from conftest import REGISTRY

pytestmark = pytest.mark.sqlite_only("the ZAP envelope, before the store")

MIB = 1 << 20
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")
USER = "hanzo/alice"


# -- helpers -----------------------------------------------------------------------------------

def decode(ctype: str, raw: bytes) -> Any:
    media = ctype.split(";", 1)[0].strip().lower()
    if media in MSGPACK_TYPES:
        return msgpack.unpackb(raw, raw=False)
    assert media == "application/json", f"unexpected response Content-Type {ctype!r}"
    return json.loads(raw)


async def post_raw(api, body: Any, content_type: str = "application/json", headers: dict[str, str] | None = None,
                   path: str = "/api/v1/zap") -> tuple[int, str, Any]:
    """POST raw bytes (or an async generator, for a chunked body); returns status, response
    Content-Type and the decoded body."""
    h = dict(api.headers, **{"Content-Type": content_type}, **(headers or {}))
    async with api.session.post(api.base + path, data=body, headers=h) as r:
        raw = await r.read()
        ctype = r.headers.get("Content-Type", "")
        return r.status, ctype, decode(ctype, raw)


def assert_error(body: Any, code: int, kind: str, id: Any = None) -> dict[str, Any]:
    assert isinstance(body, dict), body
    assert "result" not in body, body
    assert body["id"] == id, body
    err = body["error"]
    assert err["code"] == code, body
    assert err["data"]["kind"] == kind, body
    assert isinstance(err["message"], str) and err["message"], body
    return err


async def balance(api, user: str = USER, currency: str = "usd") -> int:
    r = await api.call("getBalance", {"user": user, "currency": currency})
    assert r.ok, r
    return r.result["balance"]


def envelope(method: str = "billing.getBalance", id: Any = 1, **params: Any) -> dict[str, Any]:
    return {"method": method, "id": id, "params": params or {"user": USER}}


# -- parse error -----------------------------------------------------------------------------

@pytest.mark.parametrize("body", [b'{"method": "billing.getBalance", ', b"not json", b"{'method': 1}", b"NaN", b"\xff\xfe"])
async def test_undecodable_json_body_is_parse_error_400(api, body):
    status, ctype, answer = await post_raw(api, body, "application/json")
    assert status == 400
    assert_error(answer, -32700, "parse_error", None)


@pytest.mark.parametrize("body", [b"\xc1", b"\x82\xa6method", b"\x81\xa6method\xa3abc\xc0\xc0", b"\xdb\xff\xff\xff\xff"])
async def test_undecodable_msgpack_body_is_parse_error_400_in_msgpack(api, body):
    status, ctype, answer = await post_raw(api, body, "application/msgpack")
    assert status == 400
    assert ctype.split(";")[0] in MSGPACK_TYPES
    assert_error(answer, -32700, "parse_error", None)


# -- invalid request -------------------------------------------------------------------------

@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.parametrize("env", [
    {"id": 7, "params": {"user": USER}},
    {"id": 7, "method": "", "params": {}},
    {"id": 7, "method": 5, "params": {}},
    {"id": 7, "method": None},
], ids=["no-method", "empty-method", "method-not-text", "method-null"])
async def test_envelope_without_method_is_invalid_request_400(api, env, codec):
    status, answer = await api.zap_raw(env, codec=codec)
    assert status == 400
    assert_error(answer, -32600, "invalid_request", 7)


@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.parametrize("params", [[USER], "user", 5, True], ids=["list", "text", "int", "bool"])
async def test_params_not_a_map_is_invalid_request_400(api, params, codec):
    status, answer = await api.zap_raw({"method": "billing.getBalance", "id": 7, "params": params}, codec=codec)
    assert status == 400
    assert_error(answer, -32600, "invalid_request", 7)


@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.parametrize("bad_id", [1.5, True, False, [1], {"a": 1}], ids=["float", "true", "false", "list", "map"])
async def test_id_of_a_bad_type_is_invalid_request_400_with_null_id(api, bad_id, codec):
    status, answer = await api.zap_raw({"method": "billing.getBalance", "id": bad_id, "params": {"user": USER}}, codec=codec)
    assert status == 400
    assert_error(answer, -32600, "invalid_request", None)


@pytest.mark.parametrize("body", [5, "billing.getBalance", None, True], ids=["int", "text", "null", "bool"])
async def test_body_neither_envelope_nor_batch_is_invalid_request_400(api, body):
    status, answer = await api.zap_raw(body)
    assert status == 400
    assert_error(answer, -32600, "invalid_request", None)


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_empty_batch_is_one_invalid_request_400(api, codec):
    status, answer = await api.zap_raw([], codec=codec)
    assert status == 400
    assert isinstance(answer, dict), "an empty batch is answered by one envelope, not a list"
    assert_error(answer, -32600, "invalid_request", None)


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_batch_of_101_is_one_invalid_request_400_and_runs_nothing(api, codec):
    batch = [{"method": "billing.deposit", "id": i, "params": {"user": USER, "amount": 1}} for i in range(101)]
    status, answer = await api.zap_raw(batch, codec=codec)
    assert status == 400
    assert isinstance(answer, dict), "an oversized batch is answered by one envelope, not a list"
    assert_error(answer, -32600, "invalid_request", None)
    assert await balance(api) == 0


async def test_batch_of_100_is_accepted(api):
    batch = [{"method": "billing.getBalance", "id": i, "params": {"user": f"u{i}"}} for i in range(100)]
    status, answer = await api.zap_raw(batch)
    assert status == 200
    assert [a["id"] for a in answer] == list(range(100))
    assert [a["result"]["user"] for a in answer] == [f"u{i}" for i in range(100)]


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_malformed_entries_in_a_batch_get_their_own_invalid_request_in_a_200_list(api, codec):
    batch = [
        {"method": "billing.getBalance", "id": "ok-1", "params": {"user": USER}},
        {"id": "no-method", "params": {}},
        {"method": "billing.getBalance", "id": "bad-params", "params": [USER]},
        {"method": "billing.getBalance", "id": 2.5, "params": {"user": USER}},
        5,
        "billing.getBalance",
        [],
        {"method": "billing.getBalance", "id": "ok-2", "params": {"user": "hanzo/bob"}},
    ]
    status, answer = await api.zap_raw(batch, codec=codec)
    assert status == 200
    assert isinstance(answer, list) and len(answer) == len(batch)
    assert answer[0] == {"id": "ok-1", "result": {"user": USER, "currency": "usd", "balance": 0, "holds": 0, "available": 0}}
    assert_error(answer[1], -32600, "invalid_request", "no-method")
    assert_error(answer[2], -32600, "invalid_request", "bad-params")
    for a in answer[3:7]:
        assert_error(a, -32600, "invalid_request", None)
    assert answer[7]["id"] == "ok-2" and answer[7]["result"]["user"] == "hanzo/bob"


# -- unknown method, invalid params ----------------------------------------------------------------

@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.parametrize("method", ["billing.nope", "getBalance", "billing.getbalance", "zap.nope", "billing."])
async def test_unknown_method_is_method_not_found_http_200(api, method, codec):
    status, answer = await api.zap_raw({"method": method, "id": 3, "params": {"user": USER}}, codec=codec)
    assert status == 200
    assert_error(answer, -32601, "method_not_found", 3)


@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.parametrize("params, param, message", [
    ({"amount": 100}, "user", "user is required"),
    ({"user": USER, "amount": "100"}, "amount", "amount must be an integer"),
    ({"user": USER, "amount": 1.5}, "amount", "amount must be an integer"),
    ({"user": USER, "amount": 0}, "amount", "amount must be positive"),
    ({"user": USER, "amount": 5, "currency": "xyz"}, "currency", "unknown currency: xyz"),
], ids=["missing", "string-for-int", "float-for-int", "rule", "currency"])
async def test_invalid_params_is_32602_http_200_with_kind_and_param(api, params, param, message, codec):
    status, answer = await api.zap_raw({"method": "billing.deposit", "id": 4, "params": params}, codec=codec)
    assert status == 200
    err = assert_error(answer, -32602, "invalid_params", 4)
    assert err["data"]["param"] == param
    assert message in err["message"]
    assert await balance(api) == 0


# -- 401, 403, 413, 415 ------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.parametrize("key", [None, "zb_live_not-a-real-key"], ids=["missing", "unknown"])
async def test_unauthorized_is_a_zap_envelope_32001_http_401_in_the_request_codec(api, key, codec):
    status, ctype, answer = await post_raw(
        api.with_key(key), msgpack.packb(envelope(id=9)) if codec == "msgpack" else json.dumps(envelope(id=9)).encode(),
        "application/msgpack" if codec == "msgpack" else "application/json",
    )
    assert status == 401
    if codec == "msgpack":
        assert ctype.split(";")[0] in MSGPACK_TYPES
    else:
        assert ctype.split(";")[0] == "application/json"
    assert_error(answer, -32001, "unauthorized", None)


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_read_key_calling_a_mutating_method_is_32003_http_403(api, make_key, codec):
    reader = api.with_key(await make_key("acme", "live", "read"))
    status, answer = await reader.zap_raw({"method": "billing.deposit", "id": "w", "params": {"user": USER, "amount": 100}}, codec=codec)
    assert status == 403
    assert_error(answer, -32003, "forbidden", "w")
    assert await balance(api) == 0


def _padded(size: int) -> bytes:
    """A valid JSON getBalance envelope of exactly `size` bytes, padded with JSON whitespace (a
    padding param would be refused as an unknown parameter)."""
    head = b'{"method":"billing.getBalance","id":1,"params":{"user":"hanzo/alice"}'
    tail = b'}'
    return head + b" " * (size - len(head) - len(tail)) + tail


async def test_body_of_exactly_1_mib_is_accepted(api):
    body = _padded(MIB)
    assert len(body) == MIB
    status, _, answer = await post_raw(api, body)
    assert status == 200
    assert answer["result"]["user"] == USER


async def test_body_over_1_mib_with_content_length_is_413(api):
    body = _padded(MIB + 1)
    status, ctype, answer = await post_raw(api, body)
    assert status == 413
    assert_error(answer, -32013, "payload_too_large", None)


async def test_chunked_body_over_1_mib_without_content_length_is_413(api):
    body = _padded(MIB + 1024)

    async def chunks():
        for i in range(0, len(body), 64 * 1024):
            yield body[i:i + 64 * 1024]

    h = dict(api.headers, **{"Content-Type": "application/json"})
    async with api.session.post(api.base + "/api/v1/zap", data=chunks(), headers=h) as r:
        sent = r.request_info.headers
        status, answer = r.status, decode(r.headers.get("Content-Type", ""), await r.read())
    assert "Content-Length" not in sent and sent.get("Transfer-Encoding", "").lower() == "chunked"
    assert status == 413
    assert_error(answer, -32013, "payload_too_large", None)


@pytest.mark.parametrize("ctype", ["text/plain", "application/xml", "application/octet-stream", "application/jsonx"])
async def test_unsupported_content_type_is_32015_http_415(api, ctype):
    status, _, answer = await post_raw(api, json.dumps(envelope()).encode(), ctype)
    assert status == 415
    assert_error(answer, -32015, "unsupported_media_type", None)


async def test_json_content_type_with_charset_parameter_is_accepted(api):
    status, _, answer = await post_raw(api, json.dumps(envelope(id=1)).encode(), "application/json; charset=utf-8")
    assert status == 200
    assert answer["result"]["user"] == USER


# -- id and jsonrpc echo, params default ---------------------------------------------------------------

@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.parametrize("id", ["abc", "", "42", 42, 0, -7, 2**53 + 1, None], ids=repr)
async def test_id_is_echoed_on_results_and_errors(api, id, codec):
    status, ok = await api.zap_raw({"method": "billing.getBalance", "id": id, "params": {"user": USER}}, codec=codec)
    assert status == 200 and ok["id"] == id and type(ok["id"]) is type(id) and "result" in ok
    status, err = await api.zap_raw({"method": "billing.nope", "id": id}, codec=codec)
    assert status == 200 and err["id"] == id and type(err["id"]) is type(id) and "error" in err


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_absent_id_is_answered_with_null_id(api, codec):
    status, ok = await api.zap_raw({"method": "billing.getBalance", "params": {"user": USER}}, codec=codec)
    assert status == 200 and "id" in ok and ok["id"] is None and "result" in ok
    status, err = await api.zap_raw({"method": "billing.nope"}, codec=codec)
    assert status == 200 and "id" in err and err["id"] is None and "error" in err


@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.parametrize("outcome", ["result", "method-not-found", "invalid-params", "invalid-request"])
async def test_jsonrpc_is_echoed_only_when_sent(api, outcome, codec):
    env = {
        "result": {"method": "billing.getBalance", "id": 1, "params": {"user": USER}},
        "method-not-found": {"method": "billing.nope", "id": 1},
        "invalid-params": {"method": "billing.deposit", "id": 1, "params": {"user": USER}},
        "invalid-request": {"id": 1, "params": {}},
    }[outcome]
    _, plain = await api.zap_raw(env, codec=codec)
    _, rpc = await api.zap_raw(dict(env, jsonrpc="2.0"), codec=codec)
    assert "jsonrpc" not in plain
    assert rpc.get("jsonrpc") == "2.0"
    assert {k: v for k, v in rpc.items() if k != "jsonrpc"} == plain
    _, batch = await api.zap_raw([env, dict(env, jsonrpc="2.0")], codec=codec)
    assert "jsonrpc" not in batch[0] and batch[1].get("jsonrpc") == "2.0"


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_missing_params_means_empty_map(api, codec):
    _, absent = await api.zap_raw({"method": "billing.getBalance", "id": 1}, codec=codec)
    _, null = await api.zap_raw({"method": "billing.getBalance", "id": 1, "params": None}, codec=codec)
    _, empty = await api.zap_raw({"method": "billing.getBalance", "id": 1, "params": {}}, codec=codec)
    assert absent == null == empty
    err = assert_error(absent, -32602, "invalid_params", 1)
    assert err["data"]["param"] == "user" and "user is required" in err["message"]
    status, discovered = await api.zap_raw({"method": "zap.discover", "id": 2}, codec=codec)
    assert status == 200 and "methods" in discovered["result"]


# -- batches -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_batch_with_mixed_outcomes_answers_each_in_order(api, codec):
    batch = [
        {"method": "billing.deposit", "id": "dep", "params": {"user": USER, "amount": 250}},
        {"method": "billing.nope", "id": "unknown"},
        {"method": "billing.deposit", "id": "bad", "params": {"user": USER, "amount": "x"}},
        {"method": "billing.getBalance", "id": 4, "params": {"user": "hanzo/bob", "currency": "eur"}},
        {"params": {}, "id": "malformed"},
        {"method": "billing.refund", "id": "missing", "params": {"user": USER, "amount": 1, "originalTransactionId": "tx_nope"}},
    ]
    status, answer = await api.zap_raw(batch, codec=codec)
    assert status == 200
    assert [a["id"] for a in answer] == ["dep", "unknown", "bad", 4, "malformed", "missing"]
    assert answer[0]["result"]["amount"] == 250 and answer[0]["result"]["type"] == "deposit"
    assert_error(answer[1], -32601, "method_not_found", "unknown")
    assert assert_error(answer[2], -32602, "invalid_params", "bad")["data"]["param"] == "amount"
    assert answer[3]["result"] == {"user": "hanzo/bob", "currency": "eur", "balance": 0, "holds": 0, "available": 0}
    assert_error(answer[4], -32600, "invalid_request", "malformed")
    assert_error(answer[5], -32004, "not_found", "missing")
    assert await balance(api) == 250


# -- codecs ----------------------------------------------------------------------------------------------

async def test_msgpack_request_with_json_accept_gets_json(api):
    status, ctype, answer = await post_raw(api, msgpack.packb(envelope(id=1)), "application/msgpack", {"Accept": "application/json"})
    assert status == 200
    assert ctype.split(";")[0] == "application/json"
    assert answer["id"] == 1 and answer["result"]["user"] == USER


@pytest.mark.parametrize("accept", MSGPACK_TYPES)
async def test_json_request_with_msgpack_accept_gets_msgpack(api, accept):
    status, ctype, answer = await post_raw(api, json.dumps(envelope(id=1)).encode(), "application/json", {"Accept": accept})
    assert status == 200
    assert ctype.split(";")[0] in MSGPACK_TYPES
    assert answer["id"] == 1 and answer["result"]["user"] == USER


async def test_errors_follow_accept_too(api):
    status, ctype, answer = await post_raw(api, msgpack.packb({"method": "billing.nope", "id": 1}), "application/msgpack",
                                           {"Accept": "application/json"})
    assert status == 200 and ctype.split(";")[0] == "application/json"
    assert_error(answer, -32601, "method_not_found", 1)


@pytest.mark.parametrize("ctype", MSGPACK_TYPES)
async def test_every_msgpack_content_type_is_accepted_and_answered_in_msgpack(api, ctype):
    r = await api.call("deposit", {"user": USER, "amount": 10})
    assert r.ok, r
    status, rtype, answer = await post_raw(api, msgpack.packb(envelope(id=5)), ctype)
    assert status == 200
    assert rtype.split(";")[0] in MSGPACK_TYPES
    assert answer == {"id": 5, "result": {"user": USER, "currency": "usd", "balance": 10, "holds": 0, "available": 10}}


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_endpoint_is_also_mounted_at_billing_zap(api, codec):
    await api.call("deposit", {"user": USER, "amount": 77})
    env = envelope(id="m")
    status_a, a = await api.zap_raw(env, codec=codec)
    status_b, b = await api.zap_raw(env, codec=codec, path="/api/v1/billing/zap")
    assert status_a == status_b == 200
    assert a == b and b["result"]["balance"] == 77
    status, err = await api.zap_raw({"method": "billing.nope", "id": 1}, codec=codec, path="/api/v1/billing/zap")
    assert status == 200
    assert_error(err, -32601, "method_not_found", 1)


# -- zap.discover ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_discover_lists_every_schema_method_with_params_result_route_and_mutates(api, codec):
    status, answer = await api.zap_raw({"method": "zap.discover", "id": 1}, codec=codec)
    assert status == 200
    methods = answer["result"]["methods"]
    assert set(methods) == set(REGISTRY.commands)
    for wire, command in REGISTRY.commands.items():
        entry = methods[wire]
        assert [p["name"] for p in entry["params"]] == [f.name for f in command.fields], wire
        for p, f in zip(entry["params"], command.fields):
            assert p["type"] == str(f.type), (wire, p)
            assert p["required"] == f.required, (wire, p)
        assert entry["result"] == (str(command.method.result.type) if command.method.result else None), wire
        assert entry["mutates"] is command.mutates, wire
        if command.http is None:
            assert entry["http"] is None, wire
        else:
            assert entry["http"] == {"method": command.http.verb, "path": command.http.path, "status": command.http.status}, wire
        assert "doc" in entry, wire


# -- idempotency: the envelope field ---------------------------------------------------------------------

def _deposit(amount: int = 100, key: str | None = "idem-1", id: Any = "d", **extra: Any) -> dict[str, Any]:
    env: dict[str, Any] = {"method": "billing.deposit", "id": id, "params": {"user": USER, "amount": amount, **extra}}
    if key is not None:
        env["idempotencyKey"] = key
    return env


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_idempotency_key_replays_the_identical_result_and_writes_once(api, codec):
    s1, first = await api.zap_raw(_deposit(metadata={"a": [1, {"b": None}]}), codec=codec)
    s2, second = await api.zap_raw(_deposit(metadata={"a": [1, {"b": None}]}), codec=codec)
    assert s1 == s2 == 200
    assert "result" in first
    assert first == second
    assert await balance(api) == 100


async def test_idempotency_key_replay_is_byte_identical(api):
    body = json.dumps(_deposit()).encode()
    h = dict(api.headers, **{"Content-Type": "application/json"})
    raws = []
    for _ in range(2):
        async with api.session.post(api.base + "/api/v1/zap", data=body, headers=h) as r:
            assert r.status == 200
            raws.append(await r.read())
    assert raws[0] == raws[1]
    assert await balance(api) == 100


async def test_without_idempotency_key_each_call_writes(api):
    _, first = await api.zap_raw(_deposit(key=None))
    _, second = await api.zap_raw(_deposit(key=None))
    assert first["result"]["transactionId"] != second["result"]["transactionId"]
    assert await balance(api) == 200


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_idempotency_key_with_different_params_is_conflict_32009(api, codec):
    _, first = await api.zap_raw(_deposit(100), codec=codec)
    assert "result" in first
    status, answer = await api.zap_raw(_deposit(999, id="again"), codec=codec)
    assert status == 200
    assert_error(answer, -32009, "conflict", "again")
    assert await balance(api) == 100


async def test_idempotency_key_reused_for_another_method_is_conflict(api):
    _, first = await api.zap_raw({"method": "billing.grantStarterCredit", "id": 1, "params": {"user": USER}, "idempotencyKey": "k"})
    assert "result" in first
    status, answer = await api.zap_raw(_deposit(500, key="k", id=2))
    assert status == 200
    assert_error(answer, -32009, "conflict", 2)
    assert await balance(api) == 500


async def test_idempotency_key_compares_validated_params(api):
    _, first = await api.zap_raw(_deposit(100))
    _, second = await api.zap_raw(_deposit(100, currency="USD", tags="", expiresIn=0))
    assert "result" in first and second == first
    assert await balance(api) == 100


async def test_idempotency_keys_are_scoped_per_org_and_mode(api, make_key):
    others = [api.with_key(await make_key("acme", "test")), api.with_key(await make_key("globex", "live"))]
    tx_ids = []
    for a in [api, *others]:
        status, answer = await a.zap_raw(_deposit(100, key="shared"))
        assert status == 200 and "result" in answer, answer
        tx_ids.append(answer["result"]["transactionId"])
        assert await balance(a) == 100
    assert len(set(tx_ids)) == 3
    # different params under the same key in yet another tenant is not a conflict either
    third = api.with_key(await make_key("initech", "live"))
    status, answer = await third.zap_raw(_deposit(999, key="shared"))
    assert "result" in answer and await balance(third) == 999


async def test_read_only_method_ignores_idempotency_key(api):
    env = {"method": "billing.getBalance", "id": 1, "params": {"user": USER}, "idempotencyKey": "ro"}
    _, before = await api.zap_raw(env)
    assert before["result"]["balance"] == 0
    _, dep = await api.zap_raw(_deposit(40, key="ro"))
    assert "result" in dep, "a key seen only on a read-only call must not be claimed"
    _, after = await api.zap_raw(env)
    assert after["result"]["balance"] == 40


# -- idempotency: the REST header ------------------------------------------------------------------------

async def _rest_deposit(api, body: dict[str, Any], key: str | None) -> tuple[int, bytes]:
    h = dict(api.headers, **({"Idempotency-Key": key} if key else {}))
    async with api.session.post(api.base + "/api/v1/billing/deposit", json=body, headers=h) as r:
        return r.status, await r.read()


async def test_rest_idempotency_header_replays_byte_identical_and_writes_once(api):
    body = {"user": USER, "amount": 100, "metadata": {"x": 1}}
    s1, first = await _rest_deposit(api, body, "rest-1")
    s2, second = await _rest_deposit(api, body, "rest-1")
    assert s1 == s2 == 201
    assert first == second
    assert await balance(api) == 100


async def test_rest_idempotency_header_with_different_params_is_409(api):
    s1, _ = await _rest_deposit(api, {"user": USER, "amount": 100}, "rest-2")
    s2, raw = await _rest_deposit(api, {"user": USER, "amount": 101}, "rest-2")
    assert s1 == 201
    assert s2 == 409
    err = json.loads(raw)["error"]
    assert err["type"] == "api-error" and err["code"] == "conflict"
    assert await balance(api) == 100


async def test_rest_read_only_route_ignores_idempotency_header(api):
    h = {"Idempotency-Key": "rest-ro"}
    s1, before = await api.rest("GET", "/api/v1/billing/balance", headers=h, params={"user": USER})
    assert s1 == 200 and before["balance"] == 0
    s2, _ = await _rest_deposit(api, {"user": USER, "amount": 30}, "rest-ro")
    assert s2 == 201, "a key seen only on a read-only call must not be claimed"
    s3, after = await api.rest("GET", "/api/v1/billing/balance", headers=h, params={"user": USER})
    assert s3 == 200 and after["balance"] == 30


# -- decoding limits -------------------------------------------------------------------------------------

def _nested(depth: int) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v]
    return v


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_deeply_nested_body_is_parse_error_not_a_fault(api, codec):
    if codec == "json":
        body, ctype = b"[" * 200_000 + b"]" * 200_000, "application/json"
    else:
        body, ctype = b"\x91" * 200_000 + b"\xc0", "application/msgpack"
    status, _, answer = await post_raw(api, body, ctype)
    assert status == 400
    assert_error(answer, -32700, "parse_error", None)


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_deeply_nested_params_value_is_refused_not_a_fault(api, codec):
    # built by hand: the client-side encoders refuse this depth themselves
    if codec == "json":
        head = json.dumps(_deposit(key=None, metadata="DEEP")).encode()
        body, ctype = head.replace(b'"DEEP"', b"[" * 5000 + b"1" + b"]" * 5000), "application/json"
    else:
        head = msgpack.packb(_deposit(key=None, metadata="DEEP"))
        body, ctype = head.replace(msgpack.packb("DEEP"), b"\x91" * 5000 + b"\x01"), "application/msgpack"
    status, _, answer = await post_raw(api, body, ctype)
    assert (status, answer["error"]["code"]) in {(400, -32700), (200, -32602)}, answer
    assert await balance(api) == 0


@pytest.mark.parametrize("codec", ["json", "msgpack"])
async def test_metadata_nested_beyond_32_levels_is_invalid_params(api, codec):
    status, answer = await api.zap_raw(_deposit(key=None, metadata=_nested(40)), codec=codec)
    assert status == 200
    assert assert_error(answer, -32602, "invalid_params", "d")["data"]["param"] == "metadata"
    assert await balance(api) == 0


@pytest.mark.parametrize("ext", [msgpack.ExtType(5, b"abc"), msgpack.Timestamp(1_700_000_000)], ids=["ext5", "timestamp"])
async def test_msgpack_extension_types_are_refused(api, ext):
    body = msgpack.packb(_deposit(key=None, metadata={"when": ext}), datetime=False)
    status, _, answer = await post_raw(api, body, "application/msgpack")
    assert "error" in answer, answer
    assert (status, answer["error"]["code"]) in {(400, -32700), (200, -32602)}, answer
    assert await balance(api) == 0


async def test_msgpack_binary_in_data_is_refused(api):
    body = msgpack.packb(_deposit(key=None, metadata={"blob": b"\x00\x01"}), use_bin_type=True)
    status, _, answer = await post_raw(api, body, "application/msgpack")
    assert "error" in answer, answer
    assert (status, answer["error"]["code"]) in {(400, -32700), (200, -32602)}, answer
    assert await balance(api) == 0


@pytest.mark.parametrize("header", [b"\xdd\x7f\xff\xff\xff", b"\xdf\x7f\xff\xff\xff", b"\xdb\x7f\xff\xff\xff"],
                         ids=["array32", "map32", "str32"])
async def test_msgpack_length_beyond_the_body_is_parse_error(api, header):
    status, _, answer = await post_raw(api, header + b"\xc0" * 16, "application/msgpack")
    assert status == 400
    assert_error(answer, -32700, "parse_error", None)
