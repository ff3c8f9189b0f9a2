"""Shared fixtures: a real server (aiohttp's test server, real sockets) on a real database (a
SQLite file; with ZAPBILLING_TEST_BACKEND=postgres, a fresh PostgreSQL database: see pg.py),
API keys made through the store, and a client that calls any schema method over REST, ZAP/JSON
or ZAP/msgpack and normalises the answer, so one test can run on all three transports."""
from __future__ import annotations

import functools
import json
import sqlite3
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import msgpack
import pytest
from aiohttp import ClientSession

import pg
from zapbilling.app import STORE, create_app
from zapbilling.config import Config, server_options
from zapbilling.limits import Limits
from zapbilling.registry import Registry, load_registry
from zapbilling.times import system_clock
from zapbilling.transport import plain_routes

TRANSPORTS = ("rest", "zap-json", "zap-msgpack")


@functools.cache
def _registry(data_bytes: int, data_keys: int) -> Registry:
    return load_registry(limits=Limits(data_bytes=data_bytes, data_keys=data_keys))


REGISTRY = _registry(Limits().data_bytes, Limits().data_keys)


def make_app(config: Config) -> Any:
    """create_app with a registry built once per run (per bounds of free-form values, the only
    limits it depends on): building one (a pydantic model for each method's params and result)
    took ~200 ms of the ~240 ms a test server took to start, and most tests start one."""
    return create_app(config, _registry(config.limits.data_bytes, config.limits.data_keys))


class FakeClock:
    """Microseconds since the epoch; starts at the real time and moves only when told."""

    def __init__(self) -> None:
        self.now = system_clock()

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float = 0, days: float = 0) -> None:
        self.now += int((seconds + days * 86_400) * 1_000_000)


@dataclass
class Reply:
    status: int
    result: Any = None
    error: dict[str, Any] | None = None
    """{kind, message, param} on either transport."""

    @property
    def ok(self) -> bool:
        return self.error is None


class Api:
    """Calls schema methods by name over one transport with one key."""

    def __init__(self, session: ClientSession, base: str, key: str | None, transport: str = "rest"):
        self.session, self.base, self.key, self.transport = session, base, key, transport

    def using(self, transport: str) -> "Api":
        return Api(self.session, self.base, self.key, transport)

    def with_key(self, key: str | None) -> "Api":
        return Api(self.session, self.base, key, self.transport)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    async def call(self, method: str, params: dict[str, Any] | None = None, idempotency_key: str | None = None) -> Reply:
        params = dict(params or {})
        if self.transport == "rest":
            return await self._rest(method, params, idempotency_key)
        envelope: dict[str, Any] = {"method": f"billing.{method}", "id": "t", "params": params}
        if idempotency_key:
            envelope["idempotencyKey"] = idempotency_key
        status, body = await self.zap_raw(envelope, codec=self.transport.split("-")[1])
        if "error" in body:
            err = body["error"]
            return Reply(status, error={"kind": err["data"]["kind"], "message": err["message"], "param": err["data"].get("param"), "code": err["code"]})
        return Reply(status, result=body["result"])

    async def _rest(self, method: str, params: dict[str, Any], idempotency_key: str | None) -> Reply:
        http = REGISTRY.commands[f"billing.{method}"].http
        path = http.path
        for name in http.path_params:
            path = path.replace("{" + name + "}", quote(str(params.pop(name)), safe=""))
        headers = dict(self.headers)
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        if http.verb in ("GET", "DELETE"):
            query = [(k, _text(v)) for k, v in params.items()]
            async with self.session.request(http.verb, self.base + path, params=query, headers=headers) as r:
                return _rest_reply(r.status, await r.json())
        async with self.session.request(http.verb, self.base + path, json=params, headers=headers) as r:
            return _rest_reply(r.status, await r.json())

    async def zap_raw(self, envelope: Any, codec: str = "json", headers: dict[str, str] | None = None, path: str = "/api/v1/zap") -> tuple[int, Any]:
        h = dict(self.headers, **(headers or {}))
        if codec == "json":
            h.setdefault("Content-Type", "application/json")
            data = json.dumps(envelope).encode()
        else:
            h.setdefault("Content-Type", "application/msgpack")
            data = msgpack.packb(envelope, use_bin_type=True)
        async with self.session.post(self.base + path, data=data, headers=h) as r:
            raw = await r.read()
            ctype = r.headers.get("Content-Type", "")
            return r.status, (msgpack.unpackb(raw, raw=False) if "msgpack" in ctype else json.loads(raw))

    async def rest(self, verb: str, path: str, body: Any = None, headers: dict[str, str] | None = None, params: Any = None) -> tuple[int, Any]:
        h = dict(self.headers, **(headers or {}))
        async with self.session.request(verb, self.base + path, json=body, headers=h, params=params) as r:
            raw = await r.read()
            return r.status, (json.loads(raw) if raw else None)


def _text(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def _rest_reply(status: int, body: Any) -> Reply:
    if isinstance(body, dict) and "error" in body and isinstance(body["error"], dict) and body["error"].get("type") == "api-error":
        e = body["error"]
        return Reply(status, error={"kind": e["code"], "message": e["message"], "param": e.get("param")})
    return Reply(status, result=body)


# The contract's error table (billing-api.md, Errors), written out here on its own rather than
# read from zapbilling/errors.py, so that a wrong row there fails the tests.
ERROR_TABLE = {  # kind: (REST status, ZAP code, HTTP status of a ZAP answer)
    "parse_error": (400, -32700, 400),
    "invalid_request": (400, -32600, 400),
    "method_not_found": (404, -32601, 200),
    "invalid_params": (400, -32602, 200),
    "unauthorized": (401, -32001, 401),
    "forbidden": (403, -32003, 403),
    "not_found": (404, -32004, 200),
    "conflict": (409, -32009, 200),
    "insufficient_funds": (402, -32002, 200),
    "spend_cap_reached": (402, -32005, 200),  # Part 2
    "payload_too_large": (413, -32013, 413),
    "unsupported_media_type": (415, -32015, 415),
    "rate_limited": (429, -32029, 429),
    "internal_error": (500, -32000, 200),
}


def assert_error(api: Api, r: Reply, kind: str, message: str, param: str | None = None) -> None:
    """The error the contract prescribes, with its status and code on `api`'s transport."""
    assert r.error is not None, f"expected a {kind} error, got {r.status} {r.result!r}"
    assert r.error["kind"] == kind, r.error
    assert message in r.error["message"], r.error
    if param is not None:
        assert r.error["param"] == param, r.error
    rest_status, zap_code, zap_status = ERROR_TABLE[kind]
    if api.transport == "rest":
        assert r.status == rest_status, (r.status, r.error)
    else:
        assert r.status == zap_status, (r.status, r.error)
        assert r.error["code"] == zap_code, r.error


def created_status(api: Api) -> int:
    """What a creating call answers with: 201 on REST, 200 on ZAP."""
    return 201 if api.transport == "rest" else 200


async def ok(api: Api, method: str, params: dict[str, Any], **kw: Any) -> Any:
    """The result of a call that must succeed."""
    r = await api.call(method, params, **kw)
    assert r.ok, (method, params, r.status, r.error)
    return r.result


async def balance(api: Api, user: str = "hanzo/alice", currency: str = "usd") -> int:
    return (await ok(api, "getBalance", {"user": user, "currency": currency}))["balance"]


def ledger_rows(db_path: str, user: str, **where: Any) -> list[dict[str, Any]]:
    """Ledger rows of one user, read-only from the server's database, in insertion order."""
    clauses = "".join(f" AND {k} = ?" for k in where)
    if pg.is_url(db_path):
        con = pg.Connection(db_path)
        try:
            return [dict(r) for r in con.execute(f"SELECT * FROM ledger WHERE user_id = ?{clauses} ORDER BY seq", (user, *where.values()))]
        finally:
            con.close()
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(f"SELECT * FROM ledger WHERE user_id = ?{clauses} ORDER BY seq", (user, *where.values()))]
    finally:
        con.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


BACKEND = pg.backend()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only(why): what the test checks exists on SQLite only (a file, a PRAGMA, the writer thread)")
    config.addinivalue_line("markers", "postgres_only(why): what the test checks exists on PostgreSQL only (several servers on one database)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    other = "sqlite_only" if BACKEND == "postgres" else "postgres_only"
    for item in items:
        mark = item.get_closest_marker(other)
        if mark is not None:
            why = mark.args[0] if mark.args else other
            item.add_marker(pytest.mark.skip(reason=f"{other.replace('_', ' ')}: {why}"))


@pytest.fixture
def db_path(tmp_path):
    """The server's `--db`: a SQLite file in the test's folder, or on PostgreSQL the URL of a
    fresh database of the test's own (migrated), dropped after the test."""
    if BACKEND == "sqlite":
        yield str(tmp_path / "billing.db")
        return
    url = pg.admin().new_database()
    yield url
    pg.admin().drop(url)


@pytest.fixture
async def sqlite_store(tmp_path):
    """A SqliteStore of its own file in the test's folder, opened, for the tests of the SQLite
    store's own modules (they are marked sqlite_only)."""
    from zapbilling.store import SqliteStore

    s = SqliteStore(str(tmp_path / "store.db"))
    await s.open()
    yield s
    await s.close()


@pytest.fixture
async def server(aiohttp_server, db_path, clock):
    config = Config(db=db_path, clock=clock, sweep_seconds=3600)
    served = await aiohttp_server(make_app(config), **server_options(config))
    assert plain_routes.install(served.runner)  # as `zapbilling serve` does (graceful.py)
    return served


@pytest.fixture
async def session():
    async with ClientSession() as s:
        yield s


@pytest.fixture
def make_key(server):
    """make_key(org="acme", mode="live", scope="admin") -> a new API key for the running server."""
    async def make(org: str = "acme", mode: str = "live", scope: str = "admin") -> str:
        _, secret = await server.app[STORE].create_key(org, mode, scope, system_clock())
        return secret

    return make


@pytest.fixture
async def api(server, session, make_key) -> Api:
    """An admin key of acme/live over REST; `.using("zap-json")` etc. for the other transports."""
    return Api(session, str(server.make_url("")).rstrip("/"), await make_key())


def on_this_backend(transports: tuple[str, ...]) -> tuple[str, ...]:
    """The transports a test runs over in this pass: on PostgreSQL, REST alone. The transports
    reach the same handlers with the same validated params, and the SQLite pass runs them all;
    the PostgreSQL pass is about the store. Running `any_api` thrice there would add ~2/3 to
    CI's time, and test_contract's five transports were 1,172 of the pass's 2,118 tests."""
    return transports if BACKEND == "sqlite" else ("rest",)


API_TRANSPORTS = on_this_backend(TRANSPORTS)


@pytest.fixture(params=API_TRANSPORTS)
async def any_api(request, api) -> Api:
    """The same admin client over each transport in turn."""
    return api.using(request.param)
