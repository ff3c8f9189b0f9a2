"""Every configurable bound and quota, with its default, in one place.

The CLI derives one `serve` flag per field (`--rate-per-second`, env ZAPBILLING_RATE_PER_SECOND)
from this dataclass, and README "Limits" lists them; nothing else keeps a second list. Bounds
that are part of the contract's types (the length of each text parameter) live with the other
parameter rules in billing/validation.py instead: they are not a deployment's choice.

Why these defaults: each is far above what a well-behaved caller sends (the largest legal
request of the contract fits with room to spare) and low enough that one caller at the bound
costs the server a small, fixed share of its memory and CPU.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T", bool, int, float)


def _limit(default: T, help: str) -> T:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True, slots=True)
class Limits:
    # A body is read into memory whole before it is decoded: 1 MiB holds the largest batch a
    # caller needs many times over, and 64 keys' bodies in flight at once stay within 64 MiB.
    body_bytes: int = _limit(1 << 20, "bytes a request body may hold; a larger one is refused with 413 before it is read when Content-Length says so")
    body_timeout: float = _limit(10.0, "seconds a request body may take to arrive: a client trickling its body cannot hold its key's slot and buffer for longer")
    idle_timeout: float = _limit(15.0, "seconds a connection may sit without a complete request (idle keep-alive, or headers sent slowly) before it is closed; aiohttp's own default is an hour")
    # Only requests whose body is all here hold one of these, so it bounds the work under
    # way, not the sockets; 256 keeps the event loop's queue short on 2 cores.
    max_inflight: int = _limit(256, "requests handled at once across all keys; a request takes its slot only once its body has arrived, and more wait their turn")
    rate_per_second: float = _limit(5000.0, "requests each API key may make per second, per server process (a batch counts each entry); 0 turns rate limiting off")
    rate_burst: int = _limit(10000, "requests an API key may make at once above its rate (the token bucket's size; at least 100, a full batch)")
    inflight_per_key: int = _limit(64, "requests of one API key handled at once; more wait their turn without holding a shared slot")
    meters_per_tenant: int = _limit(1000, "meters an org may hold in each mode")
    rules_per_meter: int = _limit(100, "pricing rules one meter may hold")
    # Every write of a user in a currency judges the org's alerts in that currency (store/*/watch.py), so
    # their number bounds what an alert adds to a write.
    alerts_per_tenant: int = _limit(100, "alerts an org may hold in each mode")
    # Stripe's figure: an org needs a few; each enabled one multiplies every event into deliveries.
    webhook_endpoints_per_tenant: int = _limit(16, "webhook endpoints an org may hold in each mode (deleted ones do not count)")
    # The largest legal request: a ZAP batch of 100 recordMeterEvents of 100 events, each with
    # 8 dimensions, is 150,601 values (and would not even fit in 1 MiB); 2^18 leaves room for
    # ~19 dimensions on every one of those 10,000 events. At ~70 bytes of Python objects per
    # value, a request at the bound costs ~18 MB while it is handled.
    request_elements: int = _limit(262_144, "values one request body may hold in all (items of lists and entries of maps, counted over the whole body); more is refused with 413")
    # A batch answer stops growing here: the entry that crosses it is answered whole (so no
    # single answer is ever refused: a page of 1,000 transactions with 16 KiB of metadata each
    # is ~17 MB), and the entries after it are not run. So a batch answer is at most this plus
    # one entry plus the answers of mutations already under way (each echoes a bounded request).
    answer_bytes: int = _limit(16 << 20, "bytes a ZAP batch's answers may reach; the entries after the one that crosses it are not run and answer payload_too_large")
    # metadata and dimensions are stored with their row (and again in its idempotency record):
    # 16 KiB and 64 keys hold any annotation a caller makes (Stripe allows 50 keys of 500
    # characters), and keep a ledger row under ~17 KB. Keys are counted at every depth, so
    # nesting cannot hide them; the walk that measures a value stops at the bound, so refusing
    # a value costs no more than accepting the largest legal one (~0.3 ms for 16 KiB).
    data_bytes: int = _limit(16 << 10, "bytes a metadata or dimensions value may take encoded as compact JSON (UTF-8)")
    data_keys: int = _limit(64, "keys a metadata or dimensions value may hold, counting the keys of nested objects")
    # A graceful stop (server.py, graceful.py) waits this long for the requests under way: far
    # above any single call's time (the largest batch answers in well under a second), short
    # enough for a deploy or a systemd stop (whose own default, TimeoutStopSec, is 90 s).
    # Off by default: a caller of a shared server must not make it POST inside its own network
    # (events/addresses.py). A switch, not a number: `--webhook-allow-private` alone turns it on.
    webhook_allow_private: bool = _limit(False, "let webhook endpoints point to private, loopback and link-local addresses (tests, or a deployment whose receivers are on its own network); checked when an endpoint is created and again at each delivery")
    # The contract's 10 s: a receiver that has not answered by then has failed this attempt.
    # 64 attempts at once cost at most 64 sockets; 8 per endpoint lets one busy receiver take
    # no more than an eighth of them, so a slow one cannot hold up the others.
    webhook_timeout: float = _limit(10.0, "seconds a webhook receiver has to answer an attempt with a 2xx; later, the attempt has failed and is retried on the schedule")
    webhook_concurrency: int = _limit(64, "webhook delivery attempts under way at once, per server process")
    webhook_concurrency_per_endpoint: int = _limit(8, "webhook delivery attempts under way at once to one endpoint, per server process")
    shutdown_timeout: float = _limit(10.0, "seconds a stopping server (SIGTERM or SIGINT) waits for the requests under way before it cuts them off; 0 cuts them off at once")


def limit_fields() -> list[dataclasses.Field]:  # type: ignore[type-arg]
    return list(dataclasses.fields(Limits))


def flag_name(f: dataclasses.Field) -> str:  # type: ignore[type-arg]
    return "--" + f.name.replace("_", "-")


def env_name(f: dataclasses.Field) -> str:  # type: ignore[type-arg]
    return "ZAPBILLING_" + f.name.upper()
