"""Quotas (issue 17, requirement 5): meters per org and mode, pricing rules per meter. Meters
were unlimited (5,000 made in 0.4 s made one invoicePreview take 0.56 s, and listMeters answer
everything). A create beyond the quota is refused with `conflict` and a message naming the
bound; the count and the insert are one transaction, so concurrent creates at the bound never
overshoot it."""
from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from aiohttp import ClientSession

from conftest import TRANSPORTS, Api, assert_error, ok, make_app
from zapbilling.app import STORE
from zapbilling.config import Config, server_options
from zapbilling.limits import Limits
from zapbilling.times import system_clock

METERS, RULES = 5, 3

_names = itertools.count()


@pytest.fixture
async def small(aiohttp_server, db_path, clock):
    """A server whose quotas are METERS meters per org and mode and RULES rules per meter;
    make(org, mode) -> an admin Api of that org and mode over REST."""
    config = Config(db=db_path, clock=clock, sweep_seconds=3600, limits=Limits(meters_per_tenant=METERS, rules_per_meter=RULES))
    server = await aiohttp_server(make_app(config), **server_options(config))
    async with ClientSession() as session:
        async def make(org: str = "acme", mode: str = "live") -> Api:
            _, secret = await server.app[STORE].create_key(org, mode, "admin", system_clock())
            return Api(session, str(server.make_url("")).rstrip("/"), secret)

        yield make


def new_meter() -> dict[str, Any]:
    n = next(_names)
    return {"name": f"m{n}", "eventName": f"ev-{n}"}


async def create_at_once(api: Api, method: str, params: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """Each call its own request, all sent at once, spread over the transports: (answers that
    succeeded, those refused)."""
    replies = await asyncio.gather(*(api.using(TRANSPORTS[i % 3]).call(method, p) for i, p in enumerate(params)))
    done = [r for r in replies if r.ok]
    refused = [r for r in replies if not r.ok]
    return done, refused


async def test_concurrent_creates_at_the_meter_quota_never_pass_it(small):
    acme = await small()
    for _ in range(METERS - 2):
        await ok(acme, "createMeter", new_meter())
    done, refused = await create_at_once(acme, "createMeter", [new_meter() for _ in range(12)])
    assert len(done) == 2 and len(refused) == 10
    for r in refused:
        assert r.error["kind"] == "conflict", r.error
        assert r.error["message"] == f"meter quota reached: an org holds at most {METERS} meters in each mode", r.error
    assert (await ok(acme, "listMeters", {}))["count"] == METERS


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_meter_quota_is_per_org_and_mode_with_a_clear_error(small, transport):
    acme = (await small()).using(transport)
    first = new_meter()
    await ok(acme, "createMeter", first)
    for _ in range(METERS - 1):
        await ok(acme, "createMeter", new_meter())
    assert_error(acme, await acme.call("createMeter", new_meter()), "conflict",
                 f"meter quota reached: an org holds at most {METERS} meters in each mode")
    # an eventName taken already, at the bound: refused as well (the quota is checked first)
    assert_error(acme, await acme.call("createMeter", first), "conflict", "meter quota reached")
    # the org's other mode and another org have quotas of their own
    for other in (await small("acme", "test"), await small("globex", "live")):
        for _ in range(METERS):
            await ok(other.using(transport), "createMeter", new_meter())
    assert (await ok(acme, "listMeters", {}))["count"] == METERS


async def test_concurrent_creates_at_the_rule_quota_never_pass_it(small):
    acme = await small()
    meter, other = (await ok(acme, "createMeter", new_meter()))["id"], (await ok(acme, "createMeter", new_meter()))["id"]
    await ok(acme, "createPricingRule", {"meterId": meter, "unitPrice": 1})
    done, refused = await create_at_once(acme, "createPricingRule", [{"meterId": meter, "unitPrice": 2 + i} for i in range(10)])
    assert len(done) == RULES - 1 and len(refused) == 10 - (RULES - 1)
    for r in refused:
        assert r.error["kind"] == "conflict", r.error
        assert r.error["message"] == f"pricing rule quota reached: a meter holds at most {RULES} pricing rules", r.error
        assert r.error["param"] == "meterId", r.error
    rules = (await ok(acme, "listPricingRules", {"meterId": meter}))["rules"]
    assert len(rules) == RULES
    # another meter has its own quota; a deleted rule makes room
    for i in range(RULES):
        await ok(acme, "createPricingRule", {"meterId": other, "unitPrice": i})
    await ok(acme, "deletePricingRule", {"id": rules[0]["id"]})
    await ok(acme, "createPricingRule", {"meterId": meter, "unitPrice": 9})
    for transport in TRANSPORTS:
        api = acme.using(transport)
        assert_error(api, await api.call("createPricingRule", {"meterId": meter}), "conflict",
                     f"pricing rule quota reached: a meter holds at most {RULES} pricing rules", param="meterId")
    # an unknown meter is still not_found, before any quota
    assert_error(acme, await acme.call("createPricingRule", {"meterId": "mtr_nope"}), "not_found", "meter not found")


async def test_the_default_quotas_are_1000_meters_and_100_rules(api):
    """The defaults (README "Limits"): 1,000 meters per org and mode, 100 rules per meter; the
    1,001st meter is refused."""
    assert (Limits().meters_per_tenant, Limits().rules_per_meter) == (1000, 100)
    for start in range(0, 1000, 100):
        batch = [{"method": "billing.createMeter", "id": i, "params": {"name": f"m{i}", "eventName": f"ev-{i}"}}
                 for i in range(start, start + 100)]
        status, answers = await api.zap_raw(batch, codec="msgpack")
        assert status == 200 and all("result" in a for a in answers), str(answers)[:300]
    assert_error(api, await api.call("createMeter", {"name": "one more", "eventName": "ev-1000"}), "conflict",
                 "meter quota reached: an org holds at most 1000 meters in each mode")
    meter = (await ok(api, "listMeters", {"limit": 1}))["meters"][0]["id"]
    batch = [{"method": "billing.createPricingRule", "id": i, "params": {"meterId": meter, "unitPrice": i}} for i in range(100)]
    status, answers = await api.zap_raw(batch, codec="msgpack")
    assert status == 200 and all("result" in a for a in answers), str(answers)[:300]
    assert_error(api, await api.call("createPricingRule", {"meterId": meter}), "conflict",
                 "pricing rule quota reached: a meter holds at most 100 pricing rules")
