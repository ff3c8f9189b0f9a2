"""Soak: many clients of mixed traffic against the real server for a bounded time, counting every
answer that is not what the contract says and watching the server's memory.

    python bench/soak.py [--clients 200] [--seconds 60] [--warmup 10] [--json FILE]
                         [--durability full|normal] [--seed N] [--keep]

The real run is the default: `python bench/soak.py` (200 clients, 10 s of warm-up, then 60 s
measured). tests/test_soak.py runs a short version of it in CI.

It starts `zapbilling serve` (loopback only) on a fresh SQLite file in a temporary folder, makes
an admin key and a read-only key with the CLI, creates a few meters and a pricing rule, then
runs CLIENTS concurrent clients (asyncio tasks over one aiohttp connection pool) until
warmup + seconds have passed. Each client loops over a weighted mix of calls:
- reads over REST and ZAP (JSON, msgpack, batches): balances, usage pages, meters, meter
  summaries, credit balances and grants, invoicePreview;
- writes: deposits (some with an Idempotency-Key sent twice: the replay must give the same
  transaction), recordUsage with unique requestIds, meter-event batches, createCreditGrant then
  burnCredits, refunds of the client's own earlier charges (its recordUsage withdrawals);
- calls that must fail the way the contract says: unknown ids (404 / -32004), invalid params
  (400 / -32602; among them a refund of a deposit: only a charge can be refunded), a read-only
  key writing (403 / -32003), an unknown key (401 / -32001), an unknown ZAP method (-32601).
  Those count as expected.
Each answer is checked against what that call must answer (status, ZAP code, error kind, and a
few result fields). Unexpected: any 5xx, any -32000, a connection error or timeout, an error kind
or status the call should not get, or a wrong result.

The server's RSS (psutil) is sampled once a second. Printed: requests served, req/s, expected
and unexpected errors (with samples), RSS after warm-up and at the end and the growth, the
server's exit status after SIGTERM, and check_invariants (tests/invariants.py) on the file.
Exit status 1 if unexpected errors > 0, RSS growth >= --max-growth (10%) after warm-up, the
server did not exit 0 or logged a traceback, or an invariant is violated; otherwise 0. --json FILE writes the figures.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import msgpack
import psutil

TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from invariants import check_invariants  # noqa: E402
from procs import SHUTDOWN_TIMEOUT, ServerProcess, create_key  # noqa: E402

ORG = "soak"
MAX_GROWTH = 10.0  # percent of RSS after warm-up
# kind -> (REST status, ZAP code, HTTP status of the ZAP answer): the contract's error table
ERRORS = {
    "invalid_params": (400, -32602, 200),
    "not_found": (404, -32004, 200),
    "forbidden": (403, -32003, 403),
    "unauthorized": (401, -32001, 401),
    "method_not_found": (404, -32601, 200),
}
SAMPLES = 10  # unexpected answers kept as examples


class Unexpected(Exception):
    """An answer the call must not get."""


@dataclass
class Stats:
    requests: int = 0  # HTTP requests answered
    calls: int = 0  # calls made (an entry of a batch counts as one)
    ok: Counter = field(default_factory=Counter)  # op -> successful answers as expected
    expected_errors: Counter = field(default_factory=Counter)  # op -> expected error answers
    unexpected: Counter = field(default_factory=Counter)  # op -> unexpected answers
    samples: list[str] = field(default_factory=list)

    def bad(self, op: str, detail: str) -> None:
        self.unexpected[op] += 1
        if len(self.samples) < SAMPLES:
            self.samples.append(f"{op}: {detail}")


class Api:
    """REST and ZAP calls that check the answer: `ok` results are returned, an expected error
    returns None, anything else raises Unexpected."""

    def __init__(self, http: aiohttp.ClientSession, base: str, key: str, stats: Stats):
        self.http, self.base, self.stats = http, base, stats
        self.auth = {"Authorization": f"Bearer {key}"}

    def with_key(self, key: str) -> "Api":
        return Api(self.http, self.base, key, self.stats)

    async def rest(self, verb: str, path: str, *, body: Any = None, query: dict[str, Any] | None = None,
                   status: int = 200, error: str | None = None, headers: dict[str, str] | None = None) -> Any:
        async with self.http.request(verb, self.base + path, json=body, params=query, headers={**self.auth, **(headers or {})}) as r:
            raw = await r.read()
            got = r.status
        self.stats.requests += 1
        self.stats.calls += 1
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            raise Unexpected(f"{verb} {path}: {got} with a body that is not JSON: {raw[:200]!r}") from None
        if error is None:
            if got != status:
                raise Unexpected(f"{verb} {path}: {got} {str(payload)[:300]}, expected {status}")
            return payload
        want = ERRORS[error][0]
        kind = payload.get("error", {}).get("code") if isinstance(payload, dict) else None
        if got != want or kind != error:
            raise Unexpected(f"{verb} {path}: {got} {str(payload)[:300]}, expected {want} {error}")
        return None

    async def zap(self, method: str, params: dict[str, Any] | None = None, *, codec: str = "msgpack",
                  error: str | None = None, key: str | None = None) -> Any:
        envelope: dict[str, Any] = {"method": method if "." in method else f"billing.{method}", "id": 1, "params": params or {}}
        if key:
            envelope["idempotencyKey"] = key
        status, answer = await self._post_zap(envelope, codec)
        self.stats.calls += 1
        return self._check_envelope(method, status, answer, error)

    async def batch(self, entries: list[tuple[str, dict[str, Any]]], codec: str = "msgpack") -> list[Any]:
        """Entries that must all succeed; their results in order."""
        body = [{"method": f"billing.{m}", "id": i, "params": p} for i, (m, p) in enumerate(entries)]
        status, answers = await self._post_zap(body, codec)
        self.stats.calls += len(entries)
        if status != 200 or not isinstance(answers, list) or len(answers) != len(entries):
            raise Unexpected(f"batch of {len(entries)}: {status} {str(answers)[:300]}")
        return [self._check_envelope(m, 200, a, None) for (m, _), a in zip(entries, answers)]

    async def _post_zap(self, body: Any, codec: str) -> tuple[int, Any]:
        if codec == "msgpack":
            data, ctype = msgpack.packb(body, use_bin_type=True), "application/msgpack"
        else:
            data, ctype = json.dumps(body).encode(), "application/json"
        async with self.http.post(self.base + "/api/v1/zap", data=data, headers={**self.auth, "Content-Type": ctype}) as r:
            raw = await r.read()
            status, answer_type = r.status, r.headers.get("Content-Type", "")
        self.stats.requests += 1
        try:
            return status, msgpack.unpackb(raw, raw=False) if "msgpack" in answer_type else json.loads(raw)
        except Exception:
            raise Unexpected(f"ZAP answer {status} that does not decode: {raw[:200]!r}") from None

    @staticmethod
    def _check_envelope(method: str, status: int, answer: Any, error: str | None) -> Any:
        if not isinstance(answer, dict):
            raise Unexpected(f"{method}: {status} {str(answer)[:300]}")
        if error is None:
            if status != 200 or "result" not in answer:
                raise Unexpected(f"{method}: {status} {str(answer)[:300]}, expected a result")
            return answer["result"]
        _, code, http_status = ERRORS[error]
        err = answer.get("error") or {}
        if status != http_status or err.get("code") != code or (err.get("data") or {}).get("kind") != error:
            raise Unexpected(f"{method}: {status} {str(answer)[:300]}, expected {http_status} {code} {error}")
        return None


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise Unexpected(f"wrong result: {what}")


@dataclass
class World:
    """What every client shares: the ids made at set-up and the keys."""

    key: str
    read_key: str
    usage_meter: str
    events_meter: str
    count_meter: str
    hot_users: list[str]


class Client:
    """One simulated caller: its own user (for sequences that must succeed: refunds of its own
    charges, burns of its own grants) and a share of a few hot users."""

    def __init__(self, index: int, api: Api, world: World, rng: random.Random):
        self.i, self.api, self.w, self.rng = index, api, world, rng
        self.user = f"{ORG}/c{index}"
        self.n = 0
        self.deposits: list[str] = []  # transaction ids of its own deposits (not refundable)
        self.charges: list[list[int | str]] = []  # its own usage charges: [transaction id, amount, refunded]
        self.grants = 0
        self.ops: list[tuple[str, Callable[[], Awaitable[None]], int]] = [
            # reads
            ("rest.getBalance", self.rest_balance, 10),
            ("zap.getBalance", self.zap_balance, 10),
            ("zap.batchReads", self.batch_reads, 6),
            ("rest.getUsage", self.rest_usage, 4),
            ("zap.getMeterEventsSummary", self.summary, 4),
            ("rest.listCreditGrants", self.list_grants, 3),
            ("invoicePreview", self.invoice, 5),
            # writes
            ("rest.deposit", self.deposit, 10),
            ("rest.deposit+replay", self.deposit_replay, 2),
            ("zap.recordUsage", self.record_usage, 12),
            ("meterEvents", self.meter_events, 6),
            ("grant+burn", self.grant_and_burn, 4),
            ("rest.refund", self.refund, 3),
            # calls that must fail as the contract says
            ("err.getMeter404", self.unknown_meter, 2),
            ("err.refund404", self.unknown_refund, 2),
            ("err.refundDeposit", self.refund_deposit, 1),
            ("err.burn404", self.burn_unknown_meter, 1),
            ("err.void404", self.void_unknown, 1),
            ("err.invalidParams", self.invalid_params, 2),
            ("err.readKeyWrite403", self.read_key_write, 1),
            ("err.unknownKey401", self.unknown_key, 1),
            ("err.unknownMethod", self.unknown_method, 1),
        ]
        self.names = [name for name, _, _ in self.ops]
        self.calls = [call for _, call, _ in self.ops]
        self.weights = [weight for _, _, weight in self.ops]

    def next_id(self) -> str:
        self.n += 1
        return f"c{self.i}-{self.n}"

    def some_user(self) -> str:
        return self.user if self.rng.random() < 0.6 else self.rng.choice(self.w.hot_users)

    async def loop(self, deadline: float) -> None:
        stats = self.api.stats
        while time.monotonic() < deadline:
            k = self.rng.choices(range(len(self.calls)), self.weights)[0]
            name = self.names[k]
            before = stats.calls
            try:
                await self.calls[k]()
            except Unexpected as exc:
                stats.bad(name, str(exc))
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                stats.bad(name, f"connection error: {exc!r}")
            except (KeyError, TypeError, IndexError, AttributeError) as exc:
                stats.bad(name, f"malformed result: {exc!r}")
            else:
                if name.startswith("err."):
                    stats.expected_errors[name] += 1
                else:
                    stats.ok[name] += 1
            if stats.calls == before:  # a connection error before any answer: count the attempt
                stats.calls += 1

    # -- reads -------------------------------------------------------------------------------
    async def rest_balance(self) -> None:
        b = await self.api.rest("GET", "/api/v1/billing/balance", query={"user": self.some_user()})
        expect(b["available"] == max(b["balance"] - b["holds"], 0), f"balance {b}")

    async def zap_balance(self) -> None:
        b = await self.api.zap("getBalance", {"user": self.some_user()}, codec=self.rng.choice(("msgpack", "json")))
        expect(b["currency"] == "usd", f"balance {b}")

    async def batch_reads(self) -> None:
        user = self.some_user()
        results = await self.api.batch([
            ("getBalance", {"user": user}),
            ("getBalanceAll", {"user": user}),
            ("getCreditBalance", {"userId": user}),
            ("listMeters", {}),
            ("getUsage", {"user": user, "limit": 5}),
        ], codec=self.rng.choice(("msgpack", "json")))
        expect(results[3]["count"] >= 3, f"listMeters {results[3]}")

    async def rest_usage(self) -> None:
        page = await self.api.rest("GET", "/api/v1/billing/usage", query={"user": self.some_user(), "limit": 20})
        expect(page["count"] == len(page["usage"]) <= 20, f"usage page count {page['count']}")

    async def summary(self) -> None:
        meter = self.rng.choice((self.w.usage_meter, self.w.events_meter, self.w.count_meter))
        s = await self.api.zap("getMeterEventsSummary", {"meterId": meter, "userId": self.some_user()})
        expect(s["meterId"] == meter and s["eventCount"] >= 0, f"summary {s}")

    async def list_grants(self) -> None:
        g = await self.api.rest("GET", "/api/v1/billing/credit-grants", query={"userId": self.user})
        expect(g["count"] == len(g["grants"]) == self.grants, f"{g['count']} grants listed, {self.grants} made")

    async def invoice(self) -> None:
        params = {"userId": self.some_user()}
        if self.rng.random() < 0.5:
            p = await self.api.rest("POST", "/api/v1/billing/invoice-preview", body=params)
        else:
            p = await self.api.zap("invoicePreview", params)
        expect(p["subtotal"] == p["creditApplied"] + p["amountDue"], f"preview {p}")

    # -- writes ------------------------------------------------------------------------------
    async def deposit(self) -> None:
        amount = self.rng.randint(1, 10_000)
        d = await self.api.rest("POST", "/api/v1/billing/deposit", body={"user": self.user, "amount": amount}, status=201)
        expect(d["amount"] == amount and d["transactionId"].startswith("tx_"), f"deposit {d}")
        self.deposits.append(d["transactionId"])

    async def deposit_replay(self) -> None:
        body = {"user": self.some_user(), "amount": self.rng.randint(1, 500), "notes": "replayed"}
        headers = {"Idempotency-Key": f"soak-{self.next_id()}"}
        first = await self.api.rest("POST", "/api/v1/billing/deposit", body=body, status=201, headers=headers)
        again = await self.api.rest("POST", "/api/v1/billing/deposit", body=body, status=201, headers=headers)
        expect(first == again, f"an idempotent replay answered {again}, the first answer was {first}")

    async def record_usage(self, user: str | None = None) -> None:
        amount = self.rng.randint(1, 500)
        params = {"user": user or self.some_user(), "amount": amount, "model": self.rng.choice(("gpt-x", "claude-y")),
                  "provider": "p", "totalTokens": self.rng.randint(1, 4000), "requestId": self.next_id()}
        u = await self.api.zap("recordUsage", params)
        expect(u["amount"] == amount and u["type"] == "withdraw" and u["transactionId"], f"usage {u}")
        if params["user"] == self.user:
            self.charges.append([u["transactionId"], amount, 0])

    async def meter_events(self) -> None:
        events = [{"meterId": self.rng.choice((self.w.events_meter, self.w.count_meter)), "userId": self.some_user(),
                   "value": self.rng.randint(0, 100), "idempotency": f"{self.next_id()}", "dimensions": {"region": "eu"}}
                  for _ in range(self.rng.randint(1, 10))]
        if self.rng.random() < 0.5:
            r = await self.api.rest("POST", "/api/v1/billing/meter-events", body={"events": events}, status=201)
        else:
            r = await self.api.zap("recordMeterEvents", {"events": events}, codec="json")
        expect(r["count"] == len(events) and all(e["status"] == "created" for e in r["events"]), f"events {r}")

    async def grant_and_burn(self) -> None:
        amount = self.rng.randint(1, 2000)
        g = await self.api.rest("POST", "/api/v1/billing/credit-grants", status=201,
                                body={"userId": self.user, "name": "soak", "amountCents": amount, "priority": self.rng.randint(0, 3),
                                      "expiresIn": "720h"})
        self.grants += 1
        expect(g["remainingCents"] == amount and g["active"], f"grant {g}")
        want = self.rng.randint(1, 3000)
        b = await self.api.zap("burnCredits", {"userId": self.user, "amount": want})
        expect(b["requested"] == want and b["burned"] + b["overage"] == want and b["burned"] >= min(want, amount), f"burn {b}")
        expect(str(b.get("burnId", "")).startswith("burn_") == bool(b["grants"]), f"burn {b}: a burn_ id when it took something")

    async def refund(self) -> None:
        open_ = [c for c in self.charges if c[2] < c[1]]
        if not open_:
            return await self.record_usage(self.user)
        d = self.rng.choice(open_)
        amount = self.rng.randint(1, int(d[1]) - int(d[2]))
        r = await self.api.rest("POST", "/api/v1/billing/refund", status=201,
                                body={"user": self.user, "amount": amount, "originalTransactionId": d[0]})
        expect(r["originalTransactionId"] == d[0] and r["amount"] == amount, f"refund {r}")
        d[2] = int(d[2]) + amount

    # -- errors that are part of the contract -------------------------------------------------
    async def unknown_meter(self) -> None:
        if self.rng.random() < 0.5:
            await self.api.rest("GET", f"/api/v1/billing/meters/mtr_nope{self.i}", error="not_found")
        else:
            await self.api.zap("getMeter", {"id": f"mtr_nope{self.i}"}, error="not_found")

    async def unknown_refund(self) -> None:
        await self.api.zap("refund", {"user": self.user, "amount": 5, "originalTransactionId": "tx_nope"}, error="not_found")

    async def refund_deposit(self) -> None:
        if not self.deposits:
            await self.deposit()
        original = self.rng.choice(self.deposits)
        await self.api.zap("refund", {"user": self.user, "amount": 1, "originalTransactionId": original}, error="invalid_params")

    async def burn_unknown_meter(self) -> None:
        await self.api.zap("burnCredits", {"userId": self.user, "amount": 5, "meterId": "mtr_nope"}, error="not_found")

    async def void_unknown(self) -> None:
        await self.api.rest("POST", "/api/v1/billing/credit-grants/cg_nope/void", error="not_found")

    async def invalid_params(self) -> None:
        choice = self.rng.randrange(3)
        if choice == 0:
            await self.api.rest("POST", "/api/v1/billing/deposit", body={"user": self.user, "amount": 0}, error="invalid_params")
        elif choice == 1:
            await self.api.rest("GET", "/api/v1/billing/balance", query={"user": self.user, "currency": "xyz"}, error="invalid_params")
        else:
            await self.api.zap("deposit", {"user": self.user, "amount": "12"}, error="invalid_params")

    async def read_key_write(self) -> None:
        reader = self.api.with_key(self.w.read_key)
        if self.rng.random() < 0.5:
            await reader.rest("POST", "/api/v1/billing/deposit", body={"user": self.user, "amount": 5}, error="forbidden")
        else:
            await reader.zap("recordUsage", {"user": self.user, "amount": 5}, error="forbidden")

    async def unknown_key(self) -> None:
        stranger = self.api.with_key("zb_test_thisisnotakey")
        if self.rng.random() < 0.5:
            await stranger.rest("GET", "/api/v1/billing/balance", query={"user": self.user}, error="unauthorized")
        else:
            await stranger.zap("getBalance", {"user": self.user}, error="unauthorized")

    async def unknown_method(self) -> None:
        await self.api.zap("billing.noSuchMethod", {}, error="method_not_found")


def op_names() -> list[str]:
    """Every kind of call a client makes ("err." ones must fail as the contract says)."""
    return [name for name, _, _ in Client(0, None, None, random.Random()).ops]  # type: ignore[arg-type]


# -- the run -----------------------------------------------------------------------------------

async def _setup(api: Api) -> tuple[str, str, str]:
    meters = []
    for name, aggregation in (("api-usage", "sum"), ("soak-events", "sum"), ("soak-count", "count")):
        m = await api.rest("POST", "/api/v1/billing/meters", body={"name": name, "eventName": name, "aggregationType": aggregation}, status=201)
        meters.append(m["id"])
    await api.rest("POST", "/api/v1/billing/pricing-rules", status=201, body={
        "meterId": meters[1], "model": "tiered",
        "tiers": [{"upTo": 100, "price": 10}, {"upTo": 500, "price": 5}, {"upTo": 0, "price": 1, "flat": 100}]})
    await api.rest("POST", "/api/v1/billing/pricing-rules", status=201, body={"meterId": meters[2], "unitPrice": 3})
    return meters[0], meters[1], meters[2]


async def _soak(args: argparse.Namespace, workdir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    db = str(workdir / "soak.db")
    key = create_key(db, ORG, "test")
    read_key = create_key(db, ORG, "test", scope="read")
    server = ServerProcess(db, workdir, durability=args.durability)
    figures: dict[str, Any] = {"clients": args.clients, "seconds": args.seconds, "warmup": args.warmup,
                               "durability": args.durability, "seed": args.seed, "db": db, "server_log": str(server.log_path)}
    stats = Stats()
    rss: list[tuple[float, int]] = []
    try:
        await server.start_ready()
        figures["server_pid"] = server.pid
        proc = psutil.Process(server.pid)
        connector = aiohttp.TCPConnector(limit=args.clients + 10)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=args.request_timeout)) as http:
            api = Api(http, server.base, key, stats)
            usage_meter, events_meter, count_meter = await _setup(api)
            setup = stats.requests
            world = World(key, read_key, usage_meter, events_meter, count_meter, [f"{ORG}/hot{i}" for i in range(10)])
            rng = random.Random(args.seed)
            clients = [Client(i, api, world, random.Random(rng.random())) for i in range(args.clients)]
            start = time.monotonic()
            deadline = start + args.warmup + args.seconds
            warm = {}

            async def sample() -> None:
                while True:
                    t = time.monotonic() - start
                    rss.append((t, proc.memory_info().rss))
                    if "rss" not in warm and t >= args.warmup:
                        warm.update(rss=rss[-1][1], requests=stats.requests, t=t)
                    await asyncio.sleep(1.0)

            sampler = asyncio.create_task(sample())
            say(f"soak: {args.clients} clients, {args.warmup:g}s warm-up + {args.seconds:g}s, durability {args.durability},"
                f" seed {args.seed}, server pid {server.pid} on {server.base}")
            await asyncio.gather(*(c.loop(deadline) for c in clients))
            elapsed = time.monotonic() - start
            rss.append((elapsed, proc.memory_info().rss))
            sampler.cancel()
            stats.requests -= setup
        if "rss" not in warm:  # a warm-up as long as the run: take the first sample
            warm.update(rss=rss[0][1], requests=0, t=rss[0][0])
        code = server.terminate()
    finally:
        server.stop()
    log = server.log()
    try:
        check_invariants(db)
        violations = ""
    except AssertionError as exc:
        violations = str(exc)
    end_rss = rss[-1][1]
    measured = elapsed - warm["t"]
    figures.update({
        "requests": stats.requests,
        "calls": stats.calls,
        "elapsed": round(elapsed, 2),
        "req_per_s": round(stats.requests / elapsed, 1),
        "req_per_s_after_warmup": round((stats.requests - warm["requests"]) / measured, 1) if measured > 0 else None,
        "ok": sum(stats.ok.values()),
        "ok_by_op": dict(sorted(stats.ok.items())),
        "expected_errors": sum(stats.expected_errors.values()),
        "expected_errors_by_op": dict(sorted(stats.expected_errors.items())),
        "unexpected_errors": sum(stats.unexpected.values()),
        "unexpected_by_op": dict(sorted(stats.unexpected.items())),
        "unexpected_samples": stats.samples,
        "rss_start": rss[0][1],
        "rss_after_warmup": warm["rss"],
        "rss_end": end_rss,
        "rss_peak": max(r for _, r in rss),
        "rss_growth_pct": round((end_rss - warm["rss"]) * 100 / warm["rss"], 2),
        "rss_samples": [(round(t, 1), r) for t, r in rss],
        "server_exit": code,
        "server_tracebacks": log.count("Traceback"),
        "invariants_ok": not violations,
        "invariant_violations": violations,
    })
    return figures


def verdict(figures: dict[str, Any], max_growth: float = MAX_GROWTH) -> list[str]:
    """Why the soak failed; empty when it passed."""
    why = []
    if figures["unexpected_errors"]:
        why.append(f"{figures['unexpected_errors']} unexpected errors")
    if figures["rss_growth_pct"] >= max_growth:
        why.append(f"RSS grew {figures['rss_growth_pct']:.1f}% after warm-up (limit {max_growth:g}%)")
    if figures["server_exit"] != 0:
        why.append(f"the server exited with {figures['server_exit']} after SIGTERM (expected 0 within {SHUTDOWN_TIMEOUT}s)")
    if figures["server_tracebacks"]:
        why.append(f"{figures['server_tracebacks']} tracebacks in the server's log")
    if not figures["invariants_ok"]:
        why.append("invariants violated")
    if figures["requests"] == 0:
        why.append("no request was served")
    return why


def report(f: dict[str, Any], say: Callable[[str], None] = print) -> None:
    mib = 1024 * 1024
    say(f"requests served      {f['requests']} ({f['calls']} calls) in {f['elapsed']:.1f}s: {f['req_per_s']:.0f} req/s"
        f" ({f['req_per_s_after_warmup']} req/s after warm-up)")
    say(f"answers as expected  {f['ok']} successes, {f['expected_errors']} expected errors")
    say(f"unexpected errors    {f['unexpected_errors']} {f['unexpected_by_op'] or ''}")
    for s in f["unexpected_samples"]:
        say(f"    {s}")
    say(f"server RSS           start {f['rss_start'] / mib:.1f} MiB, after warm-up {f['rss_after_warmup'] / mib:.1f} MiB,"
        f" end {f['rss_end'] / mib:.1f} MiB (peak {f['rss_peak'] / mib:.1f}): growth {f['rss_growth_pct']:+.1f}%")
    say(f"server exit          {f['server_exit']} after SIGTERM; {f['server_tracebacks']} tracebacks in its log")
    say(f"invariants           {'ok' if f['invariants_ok'] else f['invariant_violations']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=60.0, help="measured time after the warm-up")
    ap.add_argument("--warmup", type=float, default=10.0, help="traffic before the RSS baseline is taken")
    ap.add_argument("--durability", choices=("full", "normal"), default="full")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--max-growth", type=float, default=MAX_GROWTH, help="RSS growth after warm-up that fails the run, in %%")
    ap.add_argument("--request-timeout", type=float, default=30.0)
    ap.add_argument("--json", metavar="FILE", help="write the figures to FILE")
    ap.add_argument("--keep", action="store_true", help="keep the database and the server log")
    args = ap.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    return args


def run(args: argparse.Namespace, say: Callable[[str], None] = print) -> dict[str, Any]:
    """The soak as configured; its figures, with `failures` (empty when it passed)."""
    workdir = Path(tempfile.mkdtemp(prefix="zb-soak-"))
    try:
        try:
            import uvloop
            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        figures = runner(_soak(args, workdir, say))
        figures["failures"] = verdict(figures, args.max_growth)
        if figures["failures"]:
            args.keep = True
        return figures
    finally:
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    figures = run(args)
    report(figures)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    if figures["failures"]:
        print("FAILED: " + "; ".join(figures["failures"]))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
