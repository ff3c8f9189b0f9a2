"""The background sender: delivers the outbox's events to webhook endpoints, never in a request.

Each turn (every POLL_SECONDS, or at once when half an endpoint's slots are free): one cheap
read asks whether anything waits; if so the undispatched events become deliveries
(Store.dispatch_events) and due deliveries are leased (Store.claim_deliveries) up to the free
slots, then each is POSTed in a task of its own. Bounds: `concurrency` attempts at once in this
process, and at most `per_endpoint` under way to one endpoint, so a slow receiver (it holds its
slots for up to `timeout`) or a dead one (it fails fast) never holds up the deliveries to the
others. An endpoint's slots are refilled once half of them are free (the claim counts what is
under way), not once all of them ended: to one endpoint on loopback, 909 deliveries/s against
178 when the claim skipped every endpoint with attempts under way (bench/webhooks.py, SQLite,
3,000 events); and not after each attempt either, which made a turn (a read and a claim, two
trips to the writer) per delivery. What a delivery costs the server (`python -m
bench.instructions --op recordUsage --webhook`, the sender in the same process): recordUsage
with one endpoint subscribed to usage.recorded and every event delivered, 2.75M instructions per
request before this and the claim and dispatch below were made leaner, 1.93M after (650k
without an endpoint, 768k with its events written but not sent). An aiohttp POST to a local
receiver alone costs ~460k instructions (callgrind, a client posting in a loop): a delivery
costs about what a request does, so a server that delivers every write's event does about
twice the work.

An attempt: the event `{id, type, createdAt, data}` as JSON, the Standard Webhooks headers
(webhook-id = the event id, webhook-timestamp, webhook-signature: signing.py), redirects not
followed, a 2xx within `timeout` seconds is success; anything else fails and is tried again on
the schedule (schedule.py). The lease outlasts the attempt (`timeout` + LEASE_MARGIN): a server
killed while sending leaves a lease that simply runs out, and the next sender (another server,
or this one restarted) makes the attempt again: delivery is at least once, and receivers
deduplicate by webhook-id. Secrets are never logged; log lines name endpoints by id.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from typing import Any
from urllib.parse import urlsplit

from aiohttp import ClientConnectorError, ClientError, ClientSession, ClientTimeout, TCPConnector

from ..config import Config
from ..metrics.families import WEBHOOK_DELIVERIES
from ..store.base import AttemptOutcome, DeliveryJob, EndpointRow, Store
from ..times import Clock, format_ts
from . import schedule
from .resolver import CheckedResolver, PrivateAddress, literal_refusal
from .signing import signatures

log = logging.getLogger("zapbilling.webhooks")

DISABLED = "webhook_endpoint.disabled"
DISABLE_AFTER = 50
"""An endpoint whose last this many deliveries all failed (each after its whole schedule) is disabled."""
POLL_SECONDS = 0.5
"""How often an idle sender looks for work: the most an event waits for its first attempt
(beyond the attempts under way). One indexed read per turn when nothing waits."""
LEASE_MARGIN = 5.0
"""Seconds a lease outlasts the attempt's timeout: the claim and the record around the POST."""
DISPATCH_BATCH = 500
READ_BYTES = 64 << 10
"""Of a receiver's answer, read at most this much (so the connection can be kept alive); the
rest is dropped with the connection."""
USER_AGENT = "zapbilling-webhooks"
STOP_SECONDS = 5.0


def body(job: DeliveryJob) -> bytes:
    """The event as the contract shows it; `data` is spliced in as stored (JSON already)."""
    return (
        f'{{"id":{json.dumps(job.event_id)},"type":{json.dumps(job.event_type)},'
        f'"createdAt":"{format_ts(job.created_at)}","data":{job.data}}}'
    ).encode()


def disabled_event(endpoint: EndpointRow) -> tuple[str, dict[str, Any]]:
    """webhook_endpoint.disabled's data: the endpoint as listWebhookEndpoints shows it."""
    return DISABLED, {**endpoint, "createdAt": format_ts(endpoint["createdAt"])}


class Sender:
    def __init__(self, store: Store, clock: Clock, *, timeout: float = 10.0, concurrency: int = 64,
                 per_endpoint: int = 8, allow_private: bool = False, poll: float = POLL_SECONDS,
                 rng: random.Random | None = None):
        self.store, self.clock, self.timeout = store, clock, timeout
        self.concurrency, self.per_endpoint, self.allow_private, self.poll = concurrency, per_endpoint, allow_private, poll
        self.rng = rng or random.Random()
        self.lease = int((timeout + LEASE_MARGIN) * schedule.SECOND)
        self._inflight: dict[asyncio.Task[None], str] = {}
        self._busy: dict[str, int] = {}
        """Attempts under way by endpoint (the values of _inflight, counted)."""
        self._refill = max(per_endpoint // 2, 0)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: ClientSession | None = None

    @classmethod
    def configured(cls, store: Store, config: Config) -> "Sender":
        """The sender a server runs, with its clock and limits."""
        limits = config.limits
        return cls(store, config.clock, timeout=limits.webhook_timeout, concurrency=limits.webhook_concurrency,
                   per_endpoint=limits.webhook_concurrency_per_endpoint, allow_private=limits.webhook_allow_private,
                   poll=config.webhook_poll_seconds)

    def start(self) -> None:
        connector = TCPConnector(limit=self.concurrency, resolver=None if self.allow_private else CheckedResolver())
        self._session = ClientSession(connector=connector, timeout=ClientTimeout(total=self.timeout),
                                      headers={"User-Agent": USER_AGENT}, skip_auto_headers=("Content-Type",))
        self._task = asyncio.create_task(self._run(), name="zapbilling-webhooks")

    async def stop(self) -> None:
        """Stop at once: attempts under way are cut off unrecorded; their leases run out and
        they are made again (by another server, or this one after its restart)."""
        tasks = [t for t in (self._task, *self._inflight) if t is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            # Bounded: a server's stop must never wait on a receiver or a query that ignores
            # its cancellation.
            _, left = await asyncio.wait(tasks, timeout=STOP_SECONDS)
            if left:
                log.warning("%d webhook attempts did not stop within %g s; their leases run out", len(left), STOP_SECONDS)
        self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        failing = False
        while True:
            self._wake.clear()  # before the turn: an attempt that ends during it wakes the next one
            try:
                await self.turn()
                if failing:
                    log.info("webhook delivery works again")
                failing = False
            except Exception:
                # Once per outage (the database down, the disk full), not twice a second.
                if not failing:
                    log.exception("webhook delivery failed; trying again every %g s", self.poll)
                failing = True
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll)

    async def turn(self) -> int:
        """One look for work; the number of attempts started."""
        now = self.clock()
        undispatched, due = await self.store.deliveries_waiting(now)
        if undispatched:
            while await self.store.dispatch_events(now, DISPATCH_BATCH) == DISPATCH_BATCH:
                pass
            due = True  # the new deliveries are due now (or the endpoints subscribe to none)
        free = self.concurrency - len(self._inflight)
        if not due or free <= 0:
            return 0
        jobs = await self.store.claim_deliveries(now, now + self.lease, free, self.per_endpoint, dict(self._busy))
        for job in jobs:
            task = asyncio.create_task(self._attempt(job), name=f"zapbilling-webhook-{job.delivery}")
            self._inflight[task] = job.endpoint_id
            self._busy[job.endpoint_id] = self._busy.get(job.endpoint_id, 0) + 1
            task.add_done_callback(self._ended)
        return len(jobs)

    def _ended(self, task: asyncio.Task[None]) -> None:
        endpoint = self._inflight.pop(task, None)
        if endpoint is None:
            return
        left = self._busy[endpoint] - 1
        if left:
            self._busy[endpoint] = left
        else:
            del self._busy[endpoint]
        # A turn once half an endpoint's slots are free, not after each attempt: a turn is a
        # read and a claim (two trips to the database), and refilling slot by slot made about
        # one turn per delivery. Half keeps the receiver busy (at least per_endpoint / 2 under
        # way); the poll covers the rest. At the overall bound, any end frees a slot another
        # endpoint may be waiting for.
        if left <= self._refill or len(self._inflight) + 1 >= self.concurrency:
            self._wake.set()

    async def _attempt(self, job: DeliveryJob) -> None:
        status, error = await self.post(job)
        at = self.clock()
        ok = error is None
        outcome = AttemptOutcome(job.delivery, job.attempt, ok, status, error, at,
                                 None if ok else schedule.next_due(job.attempt, at, self.rng))
        WEBHOOK_DELIVERIES.labels("ok" if ok else "failed").inc()  # an attempt made, recorded or not
        try:
            if await self.store.record_attempt(outcome, DISABLE_AFTER, disabled_event):
                log.warning("webhook endpoint %s disabled: its last %d deliveries failed", job.endpoint_id, DISABLE_AFTER)
        except Exception:
            log.exception("recording attempt %d of delivery %d failed; it is made again once its lease runs out",
                          job.attempt, job.delivery)

    async def post(self, job: DeliveryJob) -> tuple[int | None, str | None]:
        """(the receiver's status, None) on a 2xx, else (status or None, why it failed)."""
        assert self._session is not None, "start() first"
        if not self.allow_private:
            why = literal_refusal(urlsplit(job.url).hostname or "")
            if why is not None:
                return None, why
        payload = body(job)
        timestamp = self.clock() // schedule.SECOND
        headers = {
            "Content-Type": "application/json",
            "webhook-id": job.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signatures(list(job.secrets), job.event_id, timestamp, payload),
        }
        try:
            async with self._session.post(job.url, data=payload, headers=headers, allow_redirects=False) as r:
                await r.content.read(READ_BYTES)
                if 200 <= r.status < 300:
                    return r.status, None
                return r.status, f"the receiver answered {r.status}"
        except asyncio.TimeoutError:
            return None, f"no answer within {self.timeout:g} s"
        except ClientConnectorError as exc:
            if isinstance(exc.os_error, PrivateAddress):
                return None, str(exc.os_error)
            return None, f"cannot connect: {exc.os_error.strerror or exc.os_error}"
        except (ClientError, OSError, ValueError) as exc:
            return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
