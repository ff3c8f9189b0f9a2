"""Webhook endpoints (operations 30-33): create with its secret shown once, list without secrets,
delete, rotate; the URL rules (events/addresses.py) with and without --webhook-allow-private;
tenants.usage_hooks kept exact in the same transaction; nothing written on bad input; secrets
never logged.

The `server` fixture is overridden here with --webhook-allow-private on, as the tests that
deliver use it; the refusals of private addresses run on `strict`, a server without it."""
from __future__ import annotations

import asyncio
import base64
import ipaddress
import re
from typing import Any

import pytest
from aiohttp import ClientSession

from conftest import TRANSPORTS, Api, assert_error, created_status, ok, make_app
from outbox_rows import sql
from procs import ServerProcess, create_key
from zapbilling import cli
from zapbilling.app import STORE
from zapbilling.config import Config, server_options
from zapbilling.events.addresses import refused
from zapbilling.limits import Limits
from zapbilling.times import format_ts, system_clock

SECRET = re.compile(r"^whsec_[A-Za-z0-9+/]{32}$")
HOOK = "http://127.0.0.1:9/hooks"  # the discard port: nothing listens, whatever tries to deliver
DAY_US = 86_400 * 1_000_000


@pytest.fixture
async def server(aiohttp_server, db_path, clock):
    config = Config(db=db_path, clock=clock, sweep_seconds=3600, limits=Limits(webhook_allow_private=True))
    return await aiohttp_server(make_app(config), **server_options(config))


@pytest.fixture
async def strict(aiohttp_server, tmp_path, clock):
    """A server as deployed by default (no --webhook-allow-private), on a database of its own;
    an admin Api of acme/live over REST."""
    from conftest import BACKEND
    import pg

    db = str(tmp_path / "strict.db") if BACKEND == "sqlite" else pg.admin().new_database()
    config = Config(db=db, clock=clock, sweep_seconds=3600)
    srv = await aiohttp_server(make_app(config), **server_options(config))
    _, key = await srv.app[STORE].create_key("acme", "live", "admin", system_clock())
    async with ClientSession() as session:
        yield Api(session, str(srv.make_url("")).rstrip("/"), key), srv
    await srv.close()
    if BACKEND != "sqlite":
        pg.admin().drop(db)


async def tenant_of(server: Any, org: str = "acme", mode: str = "live") -> int:
    tenant = await server.app[STORE].tenant_id(org, mode)
    assert tenant is not None
    return int(tenant)


async def usage_hooks(server: Any, org: str = "acme") -> int:
    (n,), = await sql(server.app[STORE], "SELECT usage_hooks FROM tenants WHERE id = ?", await tenant_of(server, org))
    return int(n)


async def endpoint_rows(server: Any) -> list[Any]:
    return await sql(server.app[STORE], "SELECT id, secret, old_secret, old_secret_until, deleted_at FROM webhook_endpoints ORDER BY seq")


async def create(api: Api, url: str = HOOK, events: list[str] | None = None, description: str = "") -> dict[str, Any]:
    return await ok(api, "createWebhookEndpoint", {"url": url, "events": events or ["*"], "description": description})  # type: ignore[no-any-return]


# -- create and list ---------------------------------------------------------------------------

async def test_create_answers_the_endpoint_with_its_secret_once_and_lists_it_without(any_api, server, clock):
    r = await any_api.call("createWebhookEndpoint", {"url": HOOK, "events": ["deposit.created", "hold.expired"], "description": "billing sync"})
    assert r.ok and r.status == created_status(any_api), r
    e = r.result
    assert set(e) == {"id", "url", "events", "description", "status", "createdAt", "secret"}
    assert re.fullmatch(r"we_[0-9a-f]{24}", e["id"])
    assert (e["url"], e["events"], e["description"], e["status"], e["createdAt"]) == (
        HOOK, ["deposit.created", "hold.expired"], "billing sync", "enabled", format_ts(clock.now))
    assert SECRET.match(e["secret"]) and len(base64.b64decode(e["secret"][6:])) == 24
    second = await create(any_api, "https://hooks.example.com/zap?token=abc", ["*"])
    third = await create(any_api, HOOK + "/3", ["usage.recorded", "usage.recorded", "grant.depleted"])
    assert third["events"] == ["usage.recorded", "grant.depleted"]  # each type once, in the order given
    assert len({e["secret"], second["secret"], third["secret"]}) == 3

    listed = await ok(any_api, "listWebhookEndpoints", {})
    assert listed["count"] == 3
    assert [x["id"] for x in listed["endpoints"]] == [e["id"], second["id"], third["id"]]  # creation order
    for x, made in zip(listed["endpoints"], (e, second, third)):
        assert x.get("secret") is None
        assert {k: v for k, v in x.items() if k != "secret"} == {k: v for k, v in made.items() if k != "secret"}
    stored = {row[0]: row[1] for row in await endpoint_rows(server)}
    assert stored == {e["id"]: e["secret"], second["id"]: second["secret"], third["id"]: third["secret"]}


async def test_endpoints_belong_to_their_org_and_mode(api, make_key):
    other = api.with_key(await make_key("globex", "live"))
    test_mode = api.with_key(await make_key("acme", "test"))
    mine = await create(api)
    assert (await ok(other, "listWebhookEndpoints", {}))["count"] == 0
    assert (await ok(test_mode, "listWebhookEndpoints", {}))["count"] == 0
    for intruder in (other, test_mode):
        assert_error(intruder, await intruder.call("deleteWebhookEndpoint", {"id": mine["id"]}), "not_found", "webhook endpoint not found", "id")
        assert_error(intruder, await intruder.call("rotateWebhookSecret", {"id": mine["id"]}), "not_found", "webhook endpoint not found", "id")
    assert [x["id"] for x in (await ok(api, "listWebhookEndpoints", {}))["endpoints"]] == [mine["id"]]


BAD_URLS = ["example.com/hooks", "ftp://example.com/hooks", "https:///hooks", "http://", "javascript:alert(1)",
            "https://exa mple.com/", "http://example.com:99999/", "/relative/path", "mailto:ops@example.com"]


async def test_bad_input_is_refused_and_writes_nothing(any_api, server):
    for url in BAD_URLS:
        r = await any_api.call("createWebhookEndpoint", {"url": url, "events": ["*"]})
        assert_error(any_api, r, "invalid_params", "url must be an absolute http:// or https:// URL with a host", "url")
    cases = [
        ([], 'events must name at least one event type, or be ["*"]', "events"),
        (["*", "deposit.created"], 'events must be ["*"] alone or a list of event types', "events"),
        (["deposit.created", "*"], 'events must be ["*"] alone or a list of event types', "events"),
        (["deposit.made"], "unknown event type: deposit.made", "events[0]"),
        (["usage.recorded", "Deposit.Created"], "unknown event type: Deposit.Created", "events[1]"),
        (["usage.recorded", ""], "unknown event type: ", "events[1]"),
    ]
    for events, message, param in cases:
        r = await any_api.call("createWebhookEndpoint", {"url": HOOK, "events": events})
        assert_error(any_api, r, "invalid_params", message, param)
    r = await any_api.call("createWebhookEndpoint", {"url": HOOK, "events": ["*"], "description": "d" * 256})
    assert_error(any_api, r, "invalid_params", "description is too long: at most 255", "description")
    r = await any_api.call("createWebhookEndpoint", {"url": "https://example.com/" + "a" * 2030, "events": ["*"]})
    assert_error(any_api, r, "invalid_params", "url is too long: at most 2048", "url")
    assert (await ok(any_api, "listWebhookEndpoints", {}))["count"] == 0
    assert await endpoint_rows(server) == []
    assert await usage_hooks(server) == 0
    long_url = "https://example.com/" + "a" * 2028  # 2048 characters: the bound itself is fine
    assert (await create(any_api, long_url))["url"] == long_url


PRIVATE = ["http://127.0.0.1/hooks", "http://127.1.2.3:8080/", "http://localhost:8080/hooks", "http://api.localhost/",
           "http://10.0.0.1/", "http://172.16.5.4/", "http://192.168.1.1/", "http://169.254.169.254/latest/meta-data/",
           "http://100.64.0.1/", "http://0.0.0.0/", "http://224.0.0.1/", "http://240.0.0.1/", "http://255.255.255.255/",
           "http://[::1]/", "http://[::]/", "http://[fe80::1]/", "http://[fc00::1]/", "http://[ff02::1]/",
           "http://[::ffff:127.0.0.1]/", "http://[64:ff9b::a00:1]/", "http://[2002:7f00:1::]/",
           "http://2130706433/", "http://0x7f.1/", "http://0177.0.0.1/"]


async def test_private_addresses_are_refused_without_the_flag(strict):
    api, srv = strict
    for url in PRIVATE:
        r = await api.call("createWebhookEndpoint", {"url": url, "events": ["*"]})
        assert_error(api, r, "invalid_params", "url must not point to a private address", "url")
    assert (await ok(api, "listWebhookEndpoints", {}))["count"] == 0
    # Public addresses are fine; a name that does not resolve now is judged at delivery time.
    for url in ("http://93.184.215.14/hooks", "https://[2606:4700::1111]/hooks", "https://hooks.zapbilling.invalid/in"):
        assert (await ok(api, "createWebhookEndpoint", {"url": url, "events": ["*"]}))["url"] == url


async def test_the_flag_lets_private_addresses_in(api):
    for url in PRIVATE[:4]:
        assert (await create(api, url))["url"] == url


def test_refused_addresses():
    """What the sender asks of each address it connects to (events/addresses.refused)."""
    for a in ("127.0.0.1", "10.1.2.3", "172.31.255.255", "192.168.0.1", "169.254.0.1", "100.127.0.1", "0.0.0.0",
              "224.0.0.251", "239.1.1.1", "240.0.0.1", "192.0.2.1", "198.18.0.1", "::1", "::", "fe80::1", "fd12::1",
              "ff05::1", "::ffff:10.0.0.1", "64:ff9b::7f00:1", "2002:c0a8:101::", "2001:db8::1", "not an address"):
        assert refused(a), a
    for a in ("93.184.215.14", "8.8.8.8", "1.1.1.1", "2606:4700::1111", "2a00:1450:4001::200e", "::ffff:8.8.8.8"):
        assert not refused(a), a
    assert refused(ipaddress.ip_address("fe80::1%2")) and not refused(ipaddress.ip_address("8.8.4.4"))


def test_the_flag_and_its_environment_variable(monkeypatch):
    for name in [k for k in __import__("os").environ if k.startswith("ZAPBILLING_")]:
        monkeypatch.delenv(name)
    assert cli._parser().parse_args(["serve"]).limit_webhook_allow_private is False
    assert cli._parser().parse_args(["serve", "--webhook-allow-private"]).limit_webhook_allow_private is True
    assert cli._parser().parse_args(["serve", "--webhook-allow-private", "false"]).limit_webhook_allow_private is False
    monkeypatch.setenv("ZAPBILLING_WEBHOOK_ALLOW_PRIVATE", "true")
    assert cli._parser().parse_args(["serve"]).limit_webhook_allow_private is True
    monkeypatch.setenv("ZAPBILLING_WEBHOOK_ALLOW_PRIVATE", "maybe")
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["serve"])


# -- delete -------------------------------------------------------------------------------------

async def test_delete(any_api, server, clock):
    a, b = await create(any_api), await create(any_api, HOOK + "/b")
    clock.advance(5)
    r = await any_api.call("deleteWebhookEndpoint", {"id": a["id"]})
    assert r.ok and r.status == 200 and r.result == {"id": a["id"], "deleted": True}
    assert [x["id"] for x in (await ok(any_api, "listWebhookEndpoints", {}))["endpoints"]] == [b["id"]]
    rows = {row[0]: row[4] for row in await endpoint_rows(server)}
    assert rows == {a["id"]: clock.now, b["id"]: None}  # kept, for the events' delivery logs
    for missing in (a["id"], "we_000000000000000000000000", "nope"):
        assert_error(any_api, await any_api.call("deleteWebhookEndpoint", {"id": missing}), "not_found", "webhook endpoint not found", "id")
        assert_error(any_api, await any_api.call("rotateWebhookSecret", {"id": missing}), "not_found", "webhook endpoint not found", "id")


# -- rotate -------------------------------------------------------------------------------------

async def test_rotate_answers_a_new_secret_once_and_keeps_the_old_one_for_24_hours(any_api, server, clock):
    e = await create(any_api)
    clock.advance(60)
    r = await any_api.call("rotateWebhookSecret", {"id": e["id"]})
    assert r.ok and r.status == 200 and set(r.result) == {"id", "secret"} and r.result["id"] == e["id"]
    new = r.result["secret"]
    assert SECRET.match(new) and new != e["secret"]
    (row,) = await endpoint_rows(server)
    assert tuple(row[1:4]) == (new, e["secret"], clock.now + DAY_US)
    clock.advance(10)
    newer = (await ok(any_api, "rotateWebhookSecret", {"id": e["id"]}))["secret"]
    (row,) = await endpoint_rows(server)
    assert tuple(row[1:4]) == (newer, new, clock.now + DAY_US)  # the secret rotated away from is the one kept
    assert (await ok(any_api, "listWebhookEndpoints", {}))["endpoints"][0].get("secret") is None


async def test_an_idempotent_retry_answers_the_first_secret(api, server):
    params = {"url": HOOK, "events": ["usage.recorded"], "description": ""}
    first = await ok(api, "createWebhookEndpoint", params, idempotency_key="make-hook-1")
    again = await ok(api, "createWebhookEndpoint", params, idempotency_key="make-hook-1")
    assert again == first
    assert len(await endpoint_rows(server)) == 1 and await usage_hooks(server) == 1
    rotated = await ok(api, "rotateWebhookSecret", {"id": first["id"]}, idempotency_key="rotate-1")
    assert await ok(api, "rotateWebhookSecret", {"id": first["id"]}, idempotency_key="rotate-1") == rotated
    (row,) = await endpoint_rows(server)
    assert (row[1], row[2]) == (rotated["secret"], first["secret"])  # rotated once


# -- tenants.usage_hooks ------------------------------------------------------------------------

async def test_usage_hooks_counts_the_enabled_endpoints_naming_usage_recorded(api, server, make_key):
    other = api.with_key(await make_key("globex", "live"))
    usage = await create(api, events=["usage.recorded"])
    assert await usage_hooks(server) == 1
    await create(api, events=["*"])  # `*` is every type but usage.recorded
    assert await usage_hooks(server) == 1
    both = await create(api, events=["deposit.created", "usage.recorded"])
    assert await usage_hooks(server) == 2
    await create(other, events=["usage.recorded"])
    assert (await usage_hooks(server), await usage_hooks(server, "globex")) == (2, 1)
    r = await api.call("createWebhookEndpoint", {"url": HOOK, "events": ["usage.recorded", "nope"]})
    assert_error(api, r, "invalid_params", "unknown event type: nope", "events[1]")
    assert await usage_hooks(server) == 2
    await ok(api, "deleteWebhookEndpoint", {"id": usage["id"]})
    assert await usage_hooks(server) == 1
    assert not (await api.call("deleteWebhookEndpoint", {"id": usage["id"]})).ok
    assert await usage_hooks(server) == 1  # a second delete changes nothing
    # A disabled endpoint no longer counts (whoever disables it takes it off): deleting it then
    # must not take it off twice.
    await sql(server.app[STORE], "UPDATE webhook_endpoints SET status = 'disabled' WHERE id = ?", both["id"])
    await sql(server.app[STORE], "UPDATE tenants SET usage_hooks = usage_hooks - 1 WHERE id = ?", await tenant_of(server))
    await ok(api, "deleteWebhookEndpoint", {"id": both["id"]})
    assert (await usage_hooks(server), await usage_hooks(server, "globex")) == (0, 1)


async def test_concurrent_deletes_of_one_endpoint_take_it_off_once(api, server):
    """Twelve deletes of one endpoint at once, over every transport: one succeeds, the others
    are 404, and usage_hooks drops by exactly one (on PostgreSQL the row's lock and its
    `deleted_at IS NULL` condition decide; on SQLite the one writer)."""
    keep = await create(api, events=["usage.recorded"])
    doomed = await create(api, events=["usage.recorded", "deposit.created"])
    assert await usage_hooks(server) == 2
    replies = await asyncio.gather(*(api.using(TRANSPORTS[i % 3]).call("deleteWebhookEndpoint", {"id": doomed["id"]}) for i in range(12)))
    assert sum(r.ok for r in replies) == 1
    for r in replies:
        if not r.ok:
            assert r.error is not None and r.error["message"] == "webhook endpoint not found"
    assert await usage_hooks(server) == 1
    assert [x["id"] for x in (await ok(api, "listWebhookEndpoints", {}))["endpoints"]] == [keep["id"]]


async def test_the_endpoints_quota_is_counted_exactly_and_deleted_ones_free_a_place(api, server):
    """Twenty creates at once against the default quota of 16 (on PostgreSQL each counts under
    the tenant's row lock, on SQLite in the one writer): exactly 16 are made, the others are
    the quota's conflict and write nothing; a delete makes room for one more."""
    quota = Limits().webhook_endpoints_per_tenant
    assert quota == 16
    callers = [api.using(TRANSPORTS[i % 3]) for i in range(quota + 4)]
    replies = await asyncio.gather(*(c.call("createWebhookEndpoint", {"url": HOOK, "events": ["*"]}) for c in callers))
    made = [r.result["id"] for r in replies if r.ok]
    assert len(made) == quota
    for caller, r in zip(callers, replies):
        if not r.ok:
            assert_error(caller, r, "conflict", f"webhook endpoint quota reached: an org holds at most {quota} webhook endpoints in each mode", "url")
    assert sorted(x["id"] for x in (await ok(api, "listWebhookEndpoints", {}))["endpoints"]) == sorted(made)
    await ok(api, "deleteWebhookEndpoint", {"id": made[0]})
    await create(api)
    r = await api.call("createWebhookEndpoint", {"url": HOOK, "events": ["*"]})
    assert_error(api, r, "conflict", f"webhook endpoint quota reached: an org holds at most {quota} webhook endpoints in each mode", "url")


# -- secrets are never logged -------------------------------------------------------------------

async def test_secrets_never_reach_the_log(db_path, tmp_path):
    key = create_key(db_path, "acme", "live")
    proc = ServerProcess(db_path, tmp_path, args=("--webhook-allow-private", "--log-level", "debug"))
    await proc.start_ready()
    try:
        async with ClientSession() as session:
            api = Api(session, proc.base, key)
            made = await create(api, HOOK, ["*"], "logged?")
            rotated = await ok(api, "rotateWebhookSecret", {"id": made["id"]})
            zap = await ok(api.using("zap-json"), "createWebhookEndpoint", {"url": HOOK, "events": ["*"]})
            await ok(api, "listWebhookEndpoints", {})
        assert proc.terminate() == 0  # a graceful stop flushes the buffered access log
    finally:
        proc.stop()
    log = proc.log()
    assert "createWebhookEndpoint" in log and "rotateWebhookSecret" in log  # the access log did see them
    for secret in (made["secret"], rotated["secret"], zap["secret"]):
        assert secret[6:] not in log
