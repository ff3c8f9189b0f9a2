"""API keys on a real server (contract: "Authentication", and the org/mode rule of
"Conventions"): accepted header forms, refusals on REST and ZAP, no keys in query strings, every
/api/v1 route guarded, revocation and creation seen from the next request, hashed storage, and
isolation between orgs and between an org's live and test modes."""
from __future__ import annotations

import asyncio
import base64
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yarl

import pg
from conftest import REGISTRY, TRANSPORTS
from zapbilling.app import STORE
from zapbilling.store import make_store
from zapbilling.store.sqlite.keys import KeyEpoch
from zapbilling.times import system_clock

USER = "hanzo/alice"
ZAP_PATHS = ("/api/v1/zap", "/api/v1/billing/zap")


# -- helpers -----------------------------------------------------------------------------------

def decode(ctype: str, raw: bytes) -> Any:
    if not raw:
        return None
    if "msgpack" in ctype:
        return msgpack.unpackb(raw, raw=False)
    if ctype.split(";")[0].strip() == "application/json":
        return json.loads(raw)
    return f"<{ctype}> {raw[:200]!r}"  # not an API answer: the assertions show it as is


async def request(api, verb: str, path: str, authorization: str | None, *, body: Any = None,
                  params: Any = None, content_type: str = "application/json") -> tuple[int, Any]:
    """One request with exactly the Authorization header given (None: no header at all)."""
    headers = {} if authorization is None else {"Authorization": authorization}
    data = None
    if body is not None:
        headers["Content-Type"] = content_type
        data = msgpack.packb(body) if "msgpack" in content_type else json.dumps(body).encode()
    async with api.session.request(verb, api.base + path, data=data, headers=headers, params=params) as r:
        return r.status, decode(r.headers.get("Content-Type", ""), await r.read())


async def rest_balance(api, authorization: str | None, **params: str) -> tuple[int, Any]:
    return await request(api, "GET", "/api/v1/billing/balance", authorization, params={"user": USER, **params})


async def zap_balance(api, authorization: str | None, codec: str = "json", path: str = "/api/v1/zap", params: Any = None) -> tuple[int, Any]:
    env = {"method": "billing.getBalance", "id": "auth", "params": {"user": USER}}
    ctype = "application/msgpack" if codec == "msgpack" else "application/json"
    return await request(api, "POST", path, authorization, body=env, content_type=ctype, params=params)


def assert_rest_401(status: int, body: Any) -> None:
    assert status == 401, body
    assert body["error"]["type"] == "api-error", body
    assert body["error"]["code"] == "unauthorized", body


def assert_zap_401(status: int, body: Any) -> None:
    assert status == 401, body
    assert "result" not in body, body
    assert body["id"] is None, body
    assert body["error"]["code"] == -32001, body
    assert body["error"]["data"]["kind"] == "unauthorized", body


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
async def funded(api) -> str:
    """acme/live's admin key, after a 1234-cent deposit for USER (so a read shows which tenant answered)."""
    r = await api.call("deposit", {"user": USER, "amount": 1234})
    assert r.ok, r
    return api.key


# -- accepted forms --------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["bearer", "bare", "basic"])
async def test_accepted_header_forms_on_rest(api, funded, form):
    header = {"bearer": f"Bearer {funded}", "bare": funded, "basic": basic(funded)}[form]
    status, body = await rest_balance(api, header)
    assert status == 200, body
    assert body["balance"] == 1234


@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.parametrize("form", ["bearer", "bare", "basic"])
async def test_accepted_header_forms_on_zap(api, funded, form, codec):
    header = {"bearer": f"Bearer {funded}", "bare": funded, "basic": basic(funded)}[form]
    status, body = await zap_balance(api, header, codec)
    assert status == 200, body
    assert body["result"]["balance"] == 1234


# -- refusals ---------------------------------------------------------------------------------------

def _bad_headers(key: str) -> dict[str, str | None]:
    return {
        "missing": None,
        "empty": "",
        "unknown-bearer": "Bearer zb_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "unknown-bare": "zb_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "unknown-basic": basic("zb_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        "bearer-without-key": "Bearer",
        "bearer-blank": "Bearer    ",
        "basic-not-base64": "Basic !!!not-base64!!!",
        "basic-empty-user": basic(""),
        "basic-no-credentials": "Basic",
        "other-scheme": f"Token {key}",
        "key-with-trailing-junk": f"Bearer {key} junk",
        "key-truncated": f"Bearer {key[:-1]}",
        "key-with-suffix": f"Bearer {key}x",
        "two-bare-words": f"{key} {key}",
    }


BAD = list(_bad_headers("k"))


@pytest.mark.parametrize("case", BAD)
async def test_missing_unknown_or_malformed_key_is_401_api_error_on_rest(api, funded, case):
    status, body = await rest_balance(api, _bad_headers(funded)[case])
    assert_rest_401(status, body)


@pytest.mark.parametrize("path", ZAP_PATHS)
@pytest.mark.parametrize("codec", ["json", "msgpack"])
@pytest.mark.parametrize("case", BAD)
async def test_missing_unknown_or_malformed_key_is_32001_envelope_on_zap(api, funded, case, codec, path):
    status, body = await zap_balance(api, _bad_headers(funded)[case], codec, path)
    assert_zap_401(status, body)


async def test_zap_discover_needs_a_key_too(api):
    status, body = await request(api, "POST", "/api/v1/zap", None, body={"method": "zap.discover", "id": 1})
    assert_zap_401(status, body)


async def test_zap_batch_without_key_is_one_401_envelope(api):
    batch = [{"method": "billing.getBalance", "id": i, "params": {"user": USER}} for i in range(3)]
    status, body = await request(api, "POST", "/api/v1/zap", None, body=batch)
    assert isinstance(body, dict), body
    assert_zap_401(status, body)


async def test_missing_unknown_and_revoked_keys_get_the_same_answer(api, server):
    store = server.app[STORE]
    key_id, secret = await store.create_key("acme", "live", "admin", system_clock())
    assert (await rest_balance(api, f"Bearer {secret}"))[0] == 200
    assert await store.revoke_key(key_id, system_clock())
    answers = [
        await rest_balance(api, None),
        await rest_balance(api, "Bearer zb_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        await rest_balance(api, f"Bearer {secret}"),
    ]
    assert answers[0] == answers[1] == answers[2]
    assert_rest_401(*answers[0])
    zap = [await zap_balance(api, h) for h in (None, "Bearer zb_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", f"Bearer {secret}")]
    assert zap[0] == zap[1] == zap[2]
    assert_zap_401(*zap[0])


# -- keys in the query string ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["key", "token"])
async def test_valid_key_in_query_string_is_refused_on_rest(api, funded, name):
    status, body = await rest_balance(api, None, **{name: funded})
    assert_rest_401(status, body)


@pytest.mark.parametrize("path", ZAP_PATHS)
@pytest.mark.parametrize("name", ["key", "token"])
async def test_valid_key_in_query_string_is_refused_on_zap(api, funded, name, path):
    status, body = await zap_balance(api, None, path=path, params={name: funded})
    assert_zap_401(status, body)


@pytest.mark.parametrize("query", ["ke%79={key}", "user=x&apiKey={key}", "a=1;b=2&token", "api%5Fkey={key}&x=%26"])
@pytest.mark.parametrize("path", ["/api/v1/zap", "/api/v1/billing/balance"])
async def test_key_names_in_the_raw_query_string_are_refused_however_encoded(api, funded, query, path):
    """The query string is read as sent: an escaped name is still a key parameter."""
    url = yarl.URL(f"{api.base}{path}?{query.format(key=funded)}", encoded=True)
    verb = "POST" if path.endswith("/zap") else "GET"
    body = json.dumps({"method": "billing.getBalance", "id": 1, "params": {"user": USER}}).encode() if verb == "POST" else None
    headers = {"Authorization": f"Bearer {funded}", "Content-Type": "application/json"}
    async with api.session.request(verb, url, data=body, headers=headers) as r:
        status, answer = r.status, decode(r.headers.get("Content-Type", ""), await r.read())
    (assert_zap_401 if verb == "POST" else assert_rest_401)(status, answer)


# -- every /api/v1 route ----------------------------------------------------------------------------

def _route_path(path: str) -> str:
    for name in re.findall(r"\{(\w+)\}", path):
        path = path.replace("{" + name + "}", "x_123")
    return path


SCHEMA_ROUTES = sorted({(c.http.verb, _route_path(c.http.path)) for c in REGISTRY.commands.values() if c.http is not None})
UNKNOWN_ROUTES = [
    ("GET", "/api/v1"),
    ("POST", "/api/v1"),
    ("GET", "/api/v1/"),
    ("GET", "/api/v1/nope"),
    ("POST", "/api/v1/nope"),
    ("GET", "/api/v1/billing"),
    ("GET", "/api/v1/billing/nope"),
    ("POST", "/api/v1/billing/nope"),
    ("PUT", "/api/v1/billing/whatever/deeper/still"),
    ("DELETE", "/api/v1/keys/x"),
    ("GET", "/api/v1/billing/balance/all/extra"),
]


@pytest.mark.parametrize("verb, path", SCHEMA_ROUTES, ids=[f"{v} {p}" for v, p in SCHEMA_ROUTES])
async def test_every_schema_route_needs_a_key(api, verb, path):
    body = {"user": USER, "amount": 1} if verb not in ("GET", "DELETE") else None
    status, answer = await request(api, verb, path, None, body=body, params={"user": USER} if body is None else None)
    assert_rest_401(status, answer)


@pytest.mark.parametrize("path", ZAP_PATHS)
async def test_zap_endpoints_need_a_key(api, path):
    status, answer = await zap_balance(api, None, path=path)
    assert_zap_401(status, answer)


@pytest.mark.parametrize("verb, path", UNKNOWN_ROUTES, ids=[f"{v} {p}" for v, p in UNKNOWN_ROUTES])
async def test_unknown_api_path_is_401_without_key_and_404_with(api, verb, path):
    status, answer = await request(api, verb, path, None)
    assert_rest_401(status, answer)
    status, answer = await request(api, verb, path, f"Bearer {api.key}")
    assert status == 404, answer
    assert answer["error"]["type"] == "api-error" and answer["error"]["code"] == "not_found", answer


# -- revocation and creation while running -----------------------------------------------------------

@pytest.mark.parametrize("transport", ["rest", "zap"])
async def test_revoked_key_is_refused_from_the_next_request(api, server, transport):
    store = server.app[STORE]
    key_id, secret = await store.create_key("acme", "live", "admin", system_clock())
    call = rest_balance if transport == "rest" else zap_balance
    for _ in range(3):  # warm any cache the server may keep
        status, body = await call(api, f"Bearer {secret}")
        assert status == 200, body
    assert await store.revoke_key(key_id, system_clock())
    status, body = await call(api, f"Bearer {secret}")
    (assert_rest_401 if transport == "rest" else assert_zap_401)(status, body)
    # the other key of the same tenant still works
    assert (await call(api, f"Bearer {api.key}"))[0] == 200


@pytest.mark.parametrize("transport", ["rest", "zap"])
async def test_key_created_while_running_works_at_once(api, funded, server, transport):
    call = rest_balance if transport == "rest" else zap_balance
    assert (await call(api, f"Bearer {funded}"))[0] == 200  # the server is warm
    _, secret = await server.app[STORE].create_key("acme", "live", "read", system_clock())
    status, body = await call(api, f"Bearer {secret}")
    assert status == 200, body
    assert (body if transport == "rest" else body["result"])["balance"] == 1234


async def test_key_of_a_new_org_created_while_running_works_at_once(api, funded, server):
    _, secret = await server.app[STORE].create_key("newco", "test", "admin", system_clock())
    status, body = await rest_balance(api, f"Bearer {secret}")
    assert status == 200, body
    assert body["balance"] == 0


# -- storage -------------------------------------------------------------------------------------------

async def test_keys_are_stored_hashed(api, funded, server, make_key, db_path):
    secrets = [funded, await make_key("acme", "live", "read"), await make_key("globex", "test", "admin")]
    for s in secrets:
        assert (await rest_balance(api, f"Bearer {s}"))[0] == 200
    conn = pg.read_only(db_path)
    try:
        rows = conn.execute("SELECT * FROM api_keys").fetchall()
        tables = pg.table_names(conn)
        everything = [str(v) for t in tables for row in conn.execute(f'SELECT * FROM "{t}"') for v in row]
    finally:
        conn.close()
    assert len(rows) == 3
    for s in secrets:
        assert not any(s in str(v) for row in rows for v in row), "the key text is in api_keys"
        assert not any(s in v for v in everything), "the key text is stored somewhere"
    if pg.is_url(db_path):
        return  # PostgreSQL's files are its own: what its tables hold was checked above
    raw = b"".join(p.read_bytes() for p in Path(db_path).parent.glob(Path(db_path).name + "*"))
    for s in secrets:
        assert s.encode() not in raw, "the key text is in the database files"


# -- isolation -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("other", ["other-org", "same-org-test-mode"])
async def test_other_tenants_see_nothing_of_a_live_keys_data(api, make_key, transport, other):
    live = api.using(transport)
    dep = await live.call("deposit", {"user": USER, "amount": 1000, "currency": "eur"})
    use = await live.call("recordUsage", {"user": USER, "amount": 300, "currency": "eur", "requestId": "r1"})
    assert dep.ok and use.ok, (dep, use)
    # a read key of the same org/mode does see the data: the probes below can see something
    same = live.with_key(await make_key("acme", "live", "read"))
    assert (await same.call("getBalance", {"user": USER, "currency": "eur"})).result["balance"] == 700
    assert (await same.call("getUsage", {"user": USER})).result["count"] == 1

    key = await (make_key("globex", "live") if other == "other-org" else make_key("acme", "test"))
    them = live.with_key(key)
    r = await them.call("getBalance", {"user": USER, "currency": "eur"})
    assert r.ok and r.result == {"user": USER, "currency": "eur", "balance": 0, "holds": 0, "available": 0}
    r = await them.call("getBalanceAll", {"user": USER})
    assert r.ok and r.result == {"user": USER, "balances": []}
    r = await them.call("getUsage", {"user": USER})
    assert r.ok and r.result["count"] == 0 and r.result["usage"] == [] and r.result["hasMore"] is False
    r = await them.call("getUsage", {"user": USER, "startingAfter": use.result["transactionId"]})
    assert r.status == (404 if transport == "rest" else 200) and r.error and r.error["kind"] == "not_found", r
    for tx in (dep.result["transactionId"], use.result["transactionId"]):
        r = await them.call("refund", {"user": USER, "currency": "eur", "amount": 100, "originalTransactionId": tx})
        assert r.status == (404 if transport == "rest" else 200), r
        assert r.error and r.error["kind"] == "not_found" and "original transaction not found" in r.error["message"], r

    r = await live.call("getBalance", {"user": USER, "currency": "eur"})
    assert r.result["balance"] == 700, "a refused refund changed the live balance"
    r = await them.call("getBalanceAll", {"user": USER})
    assert r.result["balances"] == [], "a refused refund wrote into the other tenant"


# -- the per-process key cache and its epoch -----------------------------------------------------------

@pytest.mark.parametrize("transport", ["rest", "zap"])
async def test_key_revoked_through_another_store_is_refused_from_the_next_request(api, server, transport, db_path):
    """Another store on the same database stands for another process (the CLI, another worker
    or server): it shares nothing with the server's cache but the key epoch beside the SQLite
    file, or on PostgreSQL the notification its change sends."""
    store = server.app[STORE]
    key_id, secret = await store.create_key("acme", "live", "admin", system_clock())
    call = rest_balance if transport == "rest" else zap_balance
    for _ in range(3):  # the key is now in the server's cache
        assert (await call(api, f"Bearer {secret}"))[0] == 200
    other = make_store(db_path)
    await other.open()
    try:
        assert await other.revoke_key(key_id, system_clock())
        status, body = await call(api, f"Bearer {secret}")
        (assert_rest_401 if transport == "rest" else assert_zap_401)(status, body)
        _, fresh = await other.create_key("acme", "live", "read", system_clock())
    finally:
        await other.close()
    assert (await call(api, f"Bearer {fresh}"))[0] == 200
    assert (await call(api, f"Bearer {api.key}"))[0] == 200


@pytest.mark.parametrize("call", ["getBalance", "deposit", "recordUsage", "recordMeterEvents", "getUsage", "zap.discover", "batch"])
async def test_a_key_revoked_elsewhere_is_refused_whatever_the_next_request_does(api, server, db_path, call):
    """On PostgreSQL a server lets a key it has seen in from memory, and the database checks it
    within the request (store/postgres/keys.py): getBalance's read carries the check, a write's
    transaction checks before it writes, any other request is checked before it is answered.
    Each way, the first request after a revocation made by another process is 401 and writes
    nothing. (On SQLite the key epoch does the same: the test holds there too.)"""
    key_id, secret = await server.app[STORE].create_key("acme", "live", "admin", system_clock())
    revoked = api.using("zap-json").with_key(secret)
    meter = (await api.call("createMeter", {"name": "Tokens", "eventName": "tokens"})).result["id"]
    for _ in range(2):  # now in the server's cache
        assert (await revoked.call("getBalance", {"user": "u1", "currency": "usd"})).ok
        assert (await revoked.call("deposit", {"user": "u1", "amount": 5, "currency": "usd"})).ok
    assert (await revoked.call("recordMeterEvents", {"events": [{"meterId": meter, "userId": "u1", "value": 1}]})).ok
    other = make_store(db_path)
    await other.open()
    try:
        assert await other.revoke_key(key_id, system_clock())
    finally:
        await other.close()
    if call == "batch":
        status, body = await revoked.zap_raw([
            {"method": "billing.getBalance", "id": 1, "params": {"user": "u1", "currency": "usd"}},
            {"method": "billing.deposit", "id": 2, "params": {"user": "u1", "amount": 100, "currency": "usd"}},
        ])
        assert_zap_401(status, body)
    elif call == "zap.discover":
        assert_zap_401(*await revoked.zap_raw({"method": "zap.discover", "id": 1}))
    elif call == "recordMeterEvents":  # usual events: on PostgreSQL one statement that checks the key itself
        params = {"events": [{"meterId": meter, "userId": "u1", "value": 1}]}
        assert_zap_401(*await revoked.zap_raw({"method": "billing.recordMeterEvents", "id": 1, "params": params}))
        assert (await api.call("getMeterEventsSummary", {"meterId": meter})).result["eventCount"] == 1, "a revoked key's events were written"
    else:
        params = {"user": "u1", "currency": "usd"} | ({"amount": 100} if call in ("deposit", "recordUsage") else {})
        params |= {"model": "m"} if call == "recordUsage" else {}
        status, body = await revoked.zap_raw({"method": f"billing.{call}", "id": 1, "params": params})
        assert_zap_401(status, body)
    balance = await api.call("getBalance", {"user": "u1", "currency": "usd"})
    assert balance.result["balance"] == 10, "a revoked key's request wrote"
    assert (await api.call("getBalance", {"user": "u1", "currency": "usd"})).ok  # the tenant's other key still works


async def test_a_valid_key_s_header_is_parsed_once_and_nothing_else_is_remembered(server, monkeypatch):
    """transport/auth.py remembers a valid key's Authorization header with its parsed key: the
    caller's next requests parse nothing, on either backend (PostgreSQL's store never knows a
    key at hand, so `authenticate` must remember it too). An unknown key's header is not kept,
    and the memo stops growing at its bound."""
    from zapbilling.errors import Unauthorized
    from zapbilling.transport import auth

    store = server.app[STORE]
    _, secret = await store.create_key("acme", "live", "admin", system_clock())
    _, second = await store.create_key("acme", "live", "admin", system_clock())
    monkeypatch.setattr(auth, "_secrets", {})
    parsed: list[str | None] = []
    real = auth.key_from_header
    monkeypatch.setattr(auth, "key_from_header", lambda value: parsed.append(value) or real(value))

    async def principal(header: str):
        return auth.known(store, header, "") or await auth.authenticate(store, header, "")

    header = f"Bearer {secret}"
    assert (await principal(header)) is not None
    assert parsed, "the first request parses its header"
    parsed.clear()
    for _ in range(3):
        assert (await principal(header)) is not None
    assert parsed == []
    with pytest.raises(Unauthorized):
        await principal("Bearer zb_live_unknown")
    assert auth._secrets == {header: secret}
    monkeypatch.setattr(auth, "MAX_REMEMBERED_HEADERS", 1)
    assert (await principal(f"Bearer {second}")) is not None
    assert auth._secrets == {header: secret}


@pytest.mark.sqlite_only("point reads on the loop's thread and the key-epoch file")
async def test_point_reads_of_one_loop_turn_share_a_snapshot_but_a_key_lookup_does_not(server, db_path):
    """A revocation committed (and its epoch bumped) by another process in the middle of a loop
    turn: the balance read of that turn may still see the old snapshot, but the key lookup that
    follows must not, or the revoked key would be cached under the new epoch for good."""
    store = server.app[STORE]
    key_id, secret = await store.create_key("acme", "live", "admin", system_clock())
    assert await store.authenticate(secret) is not None  # cached
    principal = await store.authenticate(secret)
    await asyncio.sleep(0)
    before = await store.balance(principal.tenant, "snap", "usd", system_clock())  # opens this turn's snapshot
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE api_keys SET revoked_at = 1 WHERE id = ?", (key_id,))
    conn.commit()
    conn.close()
    KeyEpoch(db_path).bump()
    assert await store.authenticate(secret) is None
    await asyncio.sleep(0)
    assert await store.authenticate(secret) is None
    assert await store.balance(principal.tenant, "snap", "usd", system_clock()) == before


def test_key_epoch_changes_on_every_bump_and_is_none_where_it_cannot_live(tmp_path):
    epoch = KeyEpoch(str(tmp_path / "x.db"))
    epoch.open()
    seen = {epoch.read()}
    for _ in range(20):
        epoch.bump()
        seen.add(epoch.read())
    epoch.close()
    assert len(seen) == 21 and None not in seen
    nowhere = KeyEpoch(str(tmp_path / "missing-folder" / "x.db"))
    nowhere.open()
    assert nowhere.read() is None
