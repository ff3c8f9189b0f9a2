"""The application factory: wires the store, the registry and both transports behind the
admission gates (transport/admission.py), and ties the database and the expiry sweeper to the
application's lifecycle."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import AsyncIterator, Awaitable, Callable

from aiohttp import web

from .billing.events import HERALD
from .billing.ledger import LOTS
from .config import Config
from .events.sender import Sender
from .metrics.exposition import metrics_route
from .metrics.tally import Sampler
from .registry import Registry, check_enum_tables, load_registry
from .store import Store, make_store
from .store.migrations import scripts
from .times import DAY, SECOND
from .transport.calls import Caller
from .transport.console.mount import add_console
from .transport.admission import Admission, Admitted, Refuse
from .transport.http import BODY_LIMITS, hide_server_version
from .codegen.openapi import openapi
from .transport.rest import add_routes, document_route, refuse, refuse_json, unknown_route
from .transport.zap import ZapEndpoint

log = logging.getLogger("zapbilling")

STORE = web.AppKey("store", Store)
CALLER = web.AppKey("caller", Caller)
ADMISSION = web.AppKey("admission", Admission)
IDEMPOTENCY_KEEP = DAY
EVENTS_KEEP = 30 * DAY
"""The contract keeps events (and so their delivery logs) at least 30 days, as Stripe does; past
that the outbox would only grow: one event per recordUsage call while an endpoint takes
usage.recorded. The purge's minute of slack is the idempotency purge's."""


def create_app(config: Config, registry: Registry | None = None) -> web.Application:
    registry = registry or load_registry(limits=config.limits)
    store = make_store(config.db, config.durability)
    store.announce_with(HERALD)  # every write records its events (billing/events.py)
    check_enum_tables(registry.schema, {"AggregationType": store.AGGREGATIONS, "HoldStatus": store.HOLD_STATUSES}, "the store")
    caller = Caller(registry, store, config.clock, config.limits)
    hide_server_version()
    app = web.Application(client_max_size=config.limits.body_bytes)
    app[BODY_LIMITS] = config.limits
    app[STORE] = store
    app[CALLER] = caller
    admission = app[ADMISSION] = Admission(store, config.limits.max_inflight, config.limits)
    sampler = Sampler(store, admission)
    app.cleanup_ctx.append(_lifecycle(store, config, admission, sampler))

    def route(handler: Admitted, refuse: Refuse, reads_body: bool = True) -> Handler:
        """Every route but /healthz: behind the admission gates (the key, its rate, its own
        in-flight bound while the body arrives, then a shared slot), answered one loop turn
        later (outside the gates, so a request's slots are free while its answer waits for
        the next turn): Admission.guard."""
        return admission.guard(handler, refuse, reads_body)

    endpoint = ZapEndpoint(caller, admission)
    zap = route(endpoint.handle, endpoint.refuse)
    app.router.add_post("/api/v1/zap", zap)
    app.router.add_post("/api/v1/billing/zap", zap)
    add_routes(app, caller, route, admission.lane)
    app.router.add_get("/api/v1/openapi.json", route(document_route(openapi(registry)), refuse_json, reads_body=False))
    app.router.add_get("/metrics", route(metrics_route(sampler), refuse_json, reads_body=False))
    add_console(app, caller, store, admission)  # GET /console: the operator's pages (transport/console)
    app.router.add_get("/healthz", _health)
    app.router.add_get("/readyz", functools.partial(_ready, store, len(scripts())))
    unknown = route(unknown_route(), refuse, reads_body=False)
    app.router.add_route("*", "/api/v1", unknown)
    app.router.add_route("*", r"/api/v1/{tail:[\s\S]*}", unknown)  # [\s\S]: a %0A in the path too
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


READY_TIMEOUT = 2.0
"""Seconds /readyz waits for the database before it answers that it is not ready."""


async def _ready(store: Store, latest: int, request: web.Request) -> web.Response:
    """200 when the database answers and its migrations are current, else 503 with why: what a
    load balancer asks before it sends a server traffic (on PostgreSQL, the database down or
    unreachable)."""
    try:
        version = await asyncio.wait_for(store.schema_version(), READY_TIMEOUT)
    except asyncio.TimeoutError:
        return web.json_response({"ok": False, "reason": f"the database did not answer within {READY_TIMEOUT:g} s"}, status=503)
    except Exception as exc:  # whatever the backend raises: the reason is the answer
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return web.json_response({"ok": False, "reason": f"the database cannot be read: {first}"}, status=503)
    if version != latest:
        return web.json_response({"ok": False, "reason": f"the database's schema is at version {version}, this server's is {latest}"}, status=503)
    return web.json_response({"ok": True})


def _lifecycle(store: Store, config: Config, admission: Admission, sampler: Sampler):  # type: ignore[no-untyped-def]
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await store.open()
        sweeper = asyncio.create_task(_sweep(store, config), name="zapbilling-sweeper")
        sender = Sender.configured(store, config) if config.deliver else None
        if sender is not None:
            sender.start()
        sampler.start()
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            if sender is not None:
                await sender.stop()
            if cancelled := await admission.cancel_running():
                # debug: a serving process's one stop line (graceful.py) counts them already
                log.debug("stopped %d requests still running after the shutdown timeout", cancelled)
            await sampler.stop()
            await store.close()
            sampler.flush()  # the writes the store finished as it closed

    return lifecycle


async def _sweep(store: Store, config: Config) -> None:
    while True:
        await asyncio.sleep(config.sweep_seconds)
        try:
            await sweep_once(store, config.clock())
        except Exception:
            log.exception("expiry sweep failed; retrying at the next interval")


async def sweep_once(store: Store, now: int) -> None:
    """Forfeit expired credit even for users who never come back, mark lapsed holds expired,
    journal the expiry of credit grants, drop old idempotency keys and events past their 30
    days. Reads are exact without this (they subtract unforfeited expired credit and ignore
    lapsed holds themselves); it keeps the stored rows honest. Each step goes through the
    writer, so it never races a capture or a release."""
    while await store.forfeit_expired(now, LOTS) > 0:
        pass
    while await store.expire_holds(now) > 0:
        pass
    while await store.expire_grants(now) > 0:
        pass
    await store.purge_idempotency(now - IDEMPOTENCY_KEEP - 60 * SECOND)
    while await store.purge_events(now - EVENTS_KEEP - 60 * SECOND) > 0:
        pass
