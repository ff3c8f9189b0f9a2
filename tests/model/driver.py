"""Drives a real zapbilling server with long seeded random sequences and compares every answer
with the model (tests/model/billing.py).

Each step is one call (REST, ZAP/JSON or ZAP/msgpack, with an admin or a read key of one of
three tenants: acme/live, acme/test and globex/live), a ZAP batch of independent calls, a move
of the FakeClock, or a run of the server's expiry sweep. Calls are mostly valid, some invalid
(unknown or missing parameters, wrong types, values a rule refuses, unknown ids, another
tenant's ids), some carry an idempotency key (new, replayed, or reused with other params).
Every answer is compared with the model's: the result (server ids bound to the model's as they
appear), or the error's kind, words and param, and the HTTP status. At checkpoints every
balance, page (walked in random page sizes), grant remainder, journal, hold, meter summary,
rule and invoice preview of every tenant is compared too.

Nothing here depends on the server's ids or timing: a seed replays the same calls.
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from typing import Any

from .billing import DAY, ERROR_TABLE, HOUR, ID_RE, OPS, SECOND, UNCHECKED, Answer, Model, iso

USERS = ["hanzo/alice", "hanzo/bob", "B", "é/ü"]
WHALE = "whale"   # the user of amounts near the int64 edge (whale_call)
FAR = 2_208_988_800 * SECOND   # 2040-01-01: only whale_price's events are dated after it
PATH_PARAMS = {"getMeter", "voidCreditGrant", "deletePricingRule", "captureHold", "releaseHold", "getHold"}
EVENT_NAMES = ["api-usage", "calls", "tokens", "images", "seconds", "gb", "runs", "jobs", "frames", "pages", "queries", "minutes"]
GRANT_DURATIONS = ["30m", "1h", "90m", "1h30m", "2h", "45m", "24h", "1h0m30s", "0.5h", "720h", "72h"]
TRANSPORTS = ("rest", "zap-json", "zap-msgpack")


class Mismatch(AssertionError):
    """The server answered otherwise than the model."""


@dataclass
class Tenant:
    name: tuple[str, str]
    keys: dict[str, str]             # scope -> secret
    key_ids: dict[str, str]          # scope -> the model's id of that key
    sent_keys: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)


@dataclass
class Outcome:
    """One answer as it came back, on any transport."""
    status: int
    result: Any = None
    error: dict[str, Any] | None = None


class Driver:
    def __init__(self, api: Any, clock: Any, sweep: Any, tenants: list[Tenant], seed: int, model: Model | None = None,
                 checkpoint_every: int = 60):
        self.api, self.clock, self.sweep_fn = api, clock, sweep
        self.tenants = tenants
        self.main = tenants[0]
        self.seed = seed
        self.rnd = random.Random(seed)
        self.model = model or Model()
        self.checkpoint_every = checkpoint_every
        self.ids: dict[str, str] = {}          # model id -> server id
        self.rev: dict[str, str] = {}          # server id -> model id
        self.reached: dict[str, int] = {}      # what the driver sent: methods, transports, kinds of input
        self.step_no = 0
        self.calls = 0
        self.trace: list[str] = []
        self.key_born: dict[str, int] = {}     # idempotency key -> when first sent
        self.specific = False
        self.faults: list[str] = []
        self.fault_options: dict[str, list[str]] = {}
        self._n = 0

    # ---- bookkeeping

    def hit(self, what: str) -> None:
        self.reached[what] = self.reached.get(what, 0) + 1

    def fresh(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def now(self) -> int:
        return int(self.clock())

    def tenant_state(self, t: Tenant) -> Any:
        return self.model.tenant(t.name)

    def bound(self, model_ids: list[str]) -> list[str]:
        return [i for i in model_ids if i in self.ids]

    def to_server(self, v: Any) -> Any:
        if isinstance(v, str) and ID_RE.fullmatch(v):
            return self.ids.get(v, v)
        if isinstance(v, dict):
            return {k: self.to_server(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self.to_server(x) for x in v]
        return v

    def fail(self, what: str, method: str, transport: str, params: Any, expected: Any, got: Any) -> None:
        raise Mismatch(
            f"model and server disagree at seed {self.seed}, step {self.step_no} ({what})\n"
            f"  call: {method} over {transport} with {self.to_server(params)!r}\n"
            f"  expected: {expected!r}\n  got:      {got!r}\n"
            f"  last steps (MODEL_TRACE=1 shows all):\n    "
            + "\n    ".join(self.trace[-(0 if os.environ.get("MODEL_TRACE") else 12):]) + "\n"
            f"  replay: MODEL_SEED={self.seed} MODEL_STEPS={self.step_no + 1} pytest tests/test_model.py -k agrees")

    # ---- comparing

    def match(self, exp: Any, got: Any, binds: dict[str, str], path: str = "") -> str | None:
        """None when `got` is what the model expects, binding new ids; else where it differs."""
        if isinstance(exp, str) and "#" in exp:
            if ID_RE.fullmatch(exp):
                want = self.ids.get(exp) or binds.get(exp)
                if want is None:
                    prefix = exp.split("#")[0]
                    if (not isinstance(got, str) or not got.startswith(prefix) or len(got) <= len(prefix)
                            or got in self.rev or got in binds.values()):
                        return f"{path}: a new {prefix} id expected, got {got!r}"
                    binds[exp] = got
                    return None
                return None if got == want else f"{path}: {got!r} is not {exp} ({want})"
            return None if got == self.render(exp, binds) else f"{path}: {got!r} != {self.render(exp, binds)!r}"
        if isinstance(exp, dict):
            if not isinstance(got, dict) or set(exp) != set(got):
                missing = set(exp) - set(got) if isinstance(got, dict) else set()
                extra = set(got) - set(exp) if isinstance(got, dict) else set()
                return f"{path}: fields differ (missing {sorted(missing)}, extra {sorted(extra)})"
            for k in exp:
                d = self.match(exp[k], got[k], binds, f"{path}.{k}")
                if d:
                    return d
            return None
        if isinstance(exp, list):
            if not isinstance(got, list) or len(exp) != len(got):
                return f"{path}: {len(exp)} items expected, got {len(got) if isinstance(got, list) else got!r}"
            for i, (e, g) in enumerate(zip(exp, got)):
                d = self.match(e, g, binds, f"{path}[{i}]")
                if d:
                    return d
            return None
        if type(exp) is not type(got) and not (exp is None and got is None):
            return f"{path}: {got!r} ({type(got).__name__}) != {exp!r}"
        return None if exp == got else f"{path}: {got!r} != {exp!r}"

    def render(self, text: str, binds: dict[str, str] | None = None) -> str:
        return ID_RE.sub(lambda m: self.ids.get(m.group(0)) or (binds or {}).get(m.group(0)) or m.group(0), text)

    def compare(self, exp: Answer, got: Outcome, method: str, transport: str, params: Any, in_batch: bool = False) -> None:
        if exp.error is not None:
            e = exp.error
            rest, code, http = ERROR_TABLE[e.kind]
            want_status = rest if transport == "rest" else (200 if in_batch else http)
            if got.error is None:
                self.fail("an error expected", method, transport, params, (e.kind, e.message, e.param), got.result)
            assert got.error is not None
            words = self.render(e.message)
            if got.error["kind"] != e.kind or words not in got.error["message"]:
                self.fail("error kind or words", method, transport, params, (e.kind, words), got.error)
            if e.param is not UNCHECKED and got.error.get("param") != e.param:
                self.fail("error param", method, transport, params, e.param, got.error)
            if transport != "rest" and got.error.get("code") != code:
                self.fail("ZAP error code", method, transport, params, code, got.error)
            if got.status != want_status:
                self.fail("HTTP status of an error", method, transport, params, want_status, (got.status, got.error))
            self.hit(f"{method} refused")
            return
        if got.error is not None:
            self.fail("a result expected", method, transport, params, exp.result, (got.status, got.error))
        want_status = exp.status if transport == "rest" else 200
        if got.status != want_status:
            self.fail("HTTP status", method, transport, params, want_status, (got.status, got.result))
        binds: dict[str, str] = {}
        diff = self.match(exp.result, got.result, binds)
        if diff:
            self.fail(f"result differs at {diff}", method, transport, params, exp.result, got.result)
        for m, s in binds.items():
            self.ids[m], self.rev[s] = s, m
        self.hit(f"{method} ok")

    # ---- sending

    async def send(self, t: Tenant, method: str, params: dict[str, Any], transport: str, scope: str = "admin",
                   idem: str | None = None) -> Answer:
        op = OPS[method]
        query = transport == "rest" and op.verb in ("GET", "DELETE")
        if query:  # a query string has no null: the name is left out
            params = {k: v for k, v in params.items() if v is not None}
        exp = self.model.call(t.name, scope, t.key_ids[scope], method, params, self.now(), idem, query=query)
        sent = self.to_server(params)
        self.trace.append(f"step {self.step_no}: {t.name[0]}/{t.name[1]} {scope} {method} {transport}"
                          f"{' idem=' + idem if idem else ''} {sent!r}"[:400])
        r = await self.api.with_key(t.keys[scope]).using(transport).call(method, sent, idempotency_key=idem)
        self.calls += 1
        self.hit(f"transport {transport}")
        self.compare(exp, Outcome(r.status, r.result, r.error), method, transport, params)
        self.trace[-1] += f" -> {exp.error.kind}: {exp.error.message}"[:160] if exp.error else f" -> {exp.result!r}"[:160]
        return exp

    async def batch(self, t: Tenant, entries: list[tuple[str, dict[str, Any], str | None]], codec: str,
                    scope: str = "admin", extra: list[tuple[Any, str, int]] | None = None) -> list[Answer]:
        """One ZAP request of independent calls (method, params, idempotency key) plus `extra`
        malformed entries (entry, kind, position); every answer compared."""
        now = self.now()
        expected = [self.model.call(t.name, scope, t.key_ids[scope], m, p, now, k) for m, p, k in entries]
        envelopes: list[Any] = []
        for i, (m, p, k) in enumerate(entries):
            env: dict[str, Any] = {"method": f"billing.{m}", "id": i if i % 2 else f"e{i}", "params": self.to_server(p)}
            if k is not None:
                env["idempotencyKey"] = k
            envelopes.append(env)
        bad = sorted(extra or [], key=lambda x: x[2])
        for entry, _, pos in bad:
            envelopes.insert(min(pos, len(envelopes)), entry)
        self.trace.append(f"step {self.step_no}: batch of {len(envelopes)} over {codec} {scope}: "
                          + ", ".join(e["method"] if isinstance(e, dict) and "method" in e else repr(e) for e in envelopes))
        status, answers = await self.api.with_key(t.keys[scope]).zap_raw(envelopes, codec=codec)
        self.calls += 1
        if status != 200 or not isinstance(answers, list) or len(answers) != len(envelopes):
            self.fail("a batch's answer", "batch", codec, envelopes, len(envelopes), (status, answers))
        bad_entries = {id(entry): kind for entry, kind, _ in bad}
        it = iter(zip(entries, expected))
        for env, ans in zip(envelopes, answers):
            if id(env) in bad_entries:
                kind = bad_entries[id(env)]
                err = ans.get("error") if isinstance(ans, dict) else None
                if not err or err.get("data", {}).get("kind") != kind or err.get("code") != ERROR_TABLE[kind][1]:
                    self.fail("a malformed batch entry", "batch", codec, env, kind, ans)
                self.hit(f"batch entry {kind}")
                continue
            (m, p, k), exp = next(it)
            if ans.get("id") != env["id"]:
                self.fail("a batch answer's id", m, f"zap-{codec}", p, env["id"], ans)
            if "error" in ans:
                e = ans["error"]
                got = Outcome(200, error={"kind": e["data"]["kind"], "message": e["message"], "param": e["data"].get("param"),
                                          "code": e["code"]})
            else:
                got = Outcome(200, result=ans["result"])
            self.compare(exp, got, m, f"zap-{codec}", p, in_batch=True)
        oks = sum(1 for a in answers if isinstance(a, dict) and "result" in a)
        if 0 < oks < len(answers):
            self.hit("batch with mixed results")
        self.hit(f"batch over {codec}")
        return expected

    # ---- the run

    async def run(self, steps: int) -> None:
        """`steps` steps, a checkpoint every `checkpoint_every` and one at the end."""
        for self.step_no in range(steps):
            await self.step()
            if (self.step_no + 1) % self.checkpoint_every == 0:
                await self.checkpoint()
        self.step_no += 1
        await self.checkpoint()

    def pick_tenant(self) -> Tenant:
        r = self.rnd.random()
        return self.main if r < 0.7 else (self.tenants[1] if r < 0.85 else self.tenants[2])

    def transport(self) -> str:
        return self.rnd.choices(TRANSPORTS, weights=(4, 3, 3))[0]

    async def step(self) -> None:
        rnd = self.rnd
        self.advance_clock()
        kind = rnd.random()
        t = self.pick_tenant()
        if kind < 0.05:
            return await self.batch_step(t)
        if kind < 0.057:
            self.trace.append(f"step {self.step_no}: the sweep at {iso(self.now())}")
            self.model.sweep(self.now())
            await self.sweep_fn(self.now())
            self.hit("sweep")
            return
        method, params, transport = self.generate(t)
        if t is self.main and rnd.random() < 0.02:
            method, params = self.whale_call(t)
            self.specific, self.faults = False, []
        op = OPS[method]
        scope, idem = "admin", None
        if self.specific:
            pass
        elif "read" in t.keys and rnd.random() < (0.06 if op.mutates else 0.15):
            scope = "read"
            self.hit("read key " + ("refused" if op.mutates else "reads"))
        skipped = method == "recordUsage" and isinstance(params.get("amount"), int) and params["amount"] <= 0
        if not self.specific and rnd.random() < (0.5 if skipped else 0.22 if op.mutates else 0.04):
            method, params, idem = self.idempotency(t, method, params)
        if idem is not None and scope == "admin" and OPS[method].mutates:
            t.sent_keys.append((idem, method, params))
        if op.mutates and scope == "admin" and idem is None and not self.specific and rnd.random() < 0.006:
            idem = "k" * 256
            self.hit("idempotency key too long")
        if transport == "rest" and method in PATH_PARAMS and not (isinstance(params.get("id"), str) and 0 < len(params["id"]) < 1000):
            transport = "zap-json"   # a replayed call whose id REST could not put in its path (or in a request line)
        self.commit_faults(scope == "admin" and idem is None)
        await self.send(t, method, params, transport, scope, idem)

    def advance_clock(self) -> None:
        """Mostly nothing or seconds, so that holds and grants live for a while; now and then
        minutes or hours; rarely days (expiring deposits lapse)."""
        r = self.rnd.random()
        if r < 0.55:
            return
        if r < 0.9:
            secs = self.rnd.randint(1, 40)
        elif r < 0.98:
            secs = self.rnd.randint(60, 1800)
        elif r < 0.995:
            secs = self.rnd.randint(3600, 6 * 3600)
        else:
            secs = self.rnd.randint(86_400, 3 * 86_400)
        self.clock.now += secs * SECOND + self.rnd.choice([0, 0, 0, self.rnd.randint(1, 999_999)])

    def idempotency(self, t: Tenant, method: str, params: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
        """A key for a mutating call: a new one, one sent before with the same call (a replay), or
        one sent before (perhaps by another tenant) with this other call."""
        r = self.rnd.random()
        # keys are kept at least 24 hours: only those first sent less than 23 hours ago are reused
        mine, main = (self.young_keys(x) for x in (t, self.main))
        if r < 0.45 or not (mine or main):
            self.hit("idempotency key: new")
            key = self.fresh("idem-")
            self.key_born[key] = self.now()
            return method, params, key
        skipped = [k for k in mine if k[1] == "recordUsage" and isinstance(k[2].get("amount"), int) and k[2]["amount"] <= 0]
        if skipped and r < 0.6:
            # the key of a skipped usage record, with that call or with one that charges: claimed
            # either way (the contract; it was once not claimed and the second call charged)
            key, m, p = self.rnd.choice(skipped)
            self.hit("idempotency key of a skipped usage: " + ("same call" if r < 0.52 else "a charge"))
            return (m, p, key) if r < 0.52 else (m, dict(p, amount=self.rnd.randint(1, 300)), key)
        if r < 0.8 and mine:
            key, m, p = self.rnd.choice(mine)
            self.hit("idempotency key: same call again")
            return m, p, key
        key, _, _ = self.rnd.choice(mine or main)
        self.hit("idempotency key: reused for another call")
        return method, params, key

    def young_keys(self, t: Tenant) -> list[tuple[str, str, dict[str, Any]]]:
        return [k for k in t.sent_keys[-40:] if self.now() - self.key_born[k[0]] < 23 * HOUR]

    def whale_call(self, t: Tenant) -> tuple[str, dict[str, Any]]:
        """A call with amounts near the int64 edge, all for one user: balances, holds, meter sums
        and prices that would leave the signed 64-bit range are refused; reads stay exact."""
        state = self.tenant_state(t)

        def big() -> int:
            return self.rnd.choice([self.rnd.randint(2**61, 2**62), self.rnd.randint(2**62, 2**63 - 1)])
        self.hit("whale call")
        r = self.rnd.random()
        goals = [g for g in ("holds beyond int64 refused", "price beyond int64 refused", "meter sum beyond int64 refused",
                             "balance beyond int64 refused", "balance - holds beyond int64",
                             "expiring credit beyond int64 refused") if g not in self.model.reached]
        goal = self.rnd.choice(goals) if goals and self.rnd.random() < 0.6 else None
        if goal == "holds beyond int64 refused":
            _, held, _ = self.quietly(self.model.balance_of, state, WHALE, "usd", self.now())
            amount = 2**62 + 1 if held > 2**62 else self.rnd.randint(2**62 + 1, 2**63 - 1 - held)   # the second one: beyond
            return "createHold", {"user": WHALE, "amount": amount, "allowOverdraft": True, "expiresIn": 604800}
        elif goal == "balance beyond int64 refused":
            return "deposit", {"user": WHALE, "amount": self.rnd.randint(2**62 + 1, 2**63 - 1)}
        elif goal == "price beyond int64 refused":
            return self.whale_price(t)
        elif goal == "meter sum beyond int64 refused":
            return self.whale_sum(t)
        elif goal == "balance - holds beyond int64":
            return self.whale_overdrawn(t)
        elif goal == "expiring credit beyond int64 refused":
            return self.whale_credit(t)
        if r < 0.2:
            return "deposit", {"user": WHALE, "amount": big()}
        if r < 0.4:
            return "recordUsage", {"user": WHALE, "amount": big(), "model": "m"}
        if r < 0.52:
            return "createHold", {"user": WHALE, "amount": big(), "allowOverdraft": True, "expiresIn": 604800}
        meters = self.bound([m.id for m in state.meters])
        if r < 0.66 and meters:
            return "recordMeterEvents", {"events": [{"meterId": self.rnd.choice(meters), "userId": WHALE,
                                                      "value": big() * self.rnd.choice([1, 1, 1, -1])}
                                                     for _ in range(self.rnd.randint(1, 2))]}
        charges = [r for r in state.rows if r.user == WHALE and r.type == "withdraw" and r.id in self.ids]
        if r < 0.76 and charges:
            orig = self.rnd.choice(charges)
            return "refund", {"user": WHALE, "amount": max(1, orig.amount - state.refunded.get(orig.id, 0)),
                              "originalTransactionId": orig.id}
        if r < 0.88 and meters:
            return "getMeterEventsSummary", {"meterId": self.rnd.choice(meters), **({"userId": WHALE} if r < 0.82 else {})}
        if r < 0.94:
            return "invoicePreview", {"userId": WHALE}
        return self.rnd.choice([("getBalance", {"user": WHALE}), ("listAccounts", {"maxAvailable": 0})])

    def whale_overdrawn(self, t: Tenant) -> tuple[str, dict[str, Any]]:
        """Towards an account whose balance - holds is below int64: usage to a balance under
        -2^62, a hold over 2^62, then its balance (available: 0)."""
        balance, held, _ = self.quietly(self.model.balance_of, self.tenant_state(t), WHALE, "usd", self.now())
        if balance > -(2**62):
            return "recordUsage", {"user": WHALE, "amount": min(balance + 2**62 + 1, 2**63 - 1), "model": "m"}
        if held <= 2**62:
            return "createHold", {"user": WHALE, "amount": min(2**63 - 1 - held, 2**62 + 2**61), "allowOverdraft": True,
                                  "expiresIn": 604800}
        return "getBalance", {"user": WHALE}

    def whale_credit(self, t: Tenant) -> tuple[str, dict[str, Any]]:
        """Towards expiring credit beyond int64 with the balance within it: usage to a balance
        under -(2^62 + 2^61), then expiring deposits of 2^62 + 2^61 (a deposit does not pay the
        debt first, so their credit stays unspent): the second is refused, then its balance."""
        state = self.tenant_state(t)
        balance, _, _ = self.quietly(self.model.balance_of, state, WHALE, "usd", self.now())
        credit = sum(lot.remaining for lot in state.lots if not lot.settled and lot.row.expires_at > self.now()  # type: ignore[operator]
                     and (lot.row.user, lot.row.currency) == (WHALE, "usd"))
        if not credit and balance > -(2**62 + 2**61):  # usage spends credit first: only before there is any
            return "recordUsage", {"user": WHALE, "amount": min(balance + 2**62 + 2**61, 2**63 - 1), "model": "m"}
        if "expiring credit beyond int64 refused" not in self.model.reached:
            return "deposit", {"user": WHALE, "amount": 2**62 + 2**61, "expiresIn": 30}
        return "getBalance", {"user": WHALE}

    def whale_sum(self, t: Tenant) -> tuple[str, dict[str, Any]]:
        """Towards a meter sum beyond int64: a sum meter, two events past 2^62, then its summary."""
        state = self.tenant_state(t)
        sums = self.bound([m.id for m in state.meters if m.aggregation == "sum"])
        if not sums:
            return "createMeter", {"name": "Whale", "eventName": "whale-sum", "aggregationType": "sum"}
        meter = sums[0]
        if sum(e.value for e in state.events if e.meter == meter and e.user == WHALE) <= 2**63 - 1:
            return "recordMeterEvents", {"events": [{"meterId": meter, "userId": WHALE, "value": self.rnd.randint(2**62 + 1, 2**63 - 1)}
                                                    for _ in range(2)]}
        return "getMeterEventsSummary", {"meterId": meter, "userId": WHALE}

    def whale_price(self, t: Tenant) -> tuple[str, dict[str, Any]]:
        """Towards a price beyond int64 in isolation: an event dated 2040 (no other usage then) on
        a meter whose plan-less usd rule prices it beyond the range, then a preview of 2040."""
        state = self.tenant_state(t)
        meters = self.bound([m.id for m in state.meters if m.aggregation not in ("count", "unique_count")])
        if not meters:   # the quantity of one event must be its value
            return "createMeter", {"name": "Whale", "eventName": "whale-units", "aggregationType": "max"}
        priced = [m for m in meters if (rule := self.model.rule_for(state, m, "usd", None)) is not None
                  and self.model.price(rule, 2**62)[1] > 2**63 - 1]
        if not priced:
            return "createPricingRule", {"meterId": self.rnd.choice(meters), "unitPrice": 5}
        meter = priced[0]
        if not any(e.meter == meter and e.user == WHALE and e.ts >= FAR for e in state.events):
            return "recordMeterEvents", {"events": [{"meterId": meter, "userId": WHALE, "value": 2**62,
                                                     "timestamp": "2040-01-01T00:00:00Z"}]}
        return "invoicePreview", {"userId": WHALE, "periodStart": "2040-01-01"}

    # ---- choosing things

    def user(self) -> str:
        return self.rnd.choices(USERS, weights=(5, 3, 2, 1))[0]

    def currency(self, params: dict[str, Any], name: str = "currency", always: bool = False) -> str:
        cur = self.rnd.choices(["usd", "eur", "jpy"], weights=(80, 15, 5))[0]
        r = self.rnd.random()
        if cur == "usd" and not always and r < 0.6:
            return cur
        params[name] = cur.upper() if r > 0.85 else cur
        return cur

    def other_tenant(self, t: Tenant) -> Tenant:
        return self.rnd.choice([x for x in self.tenants if x is not t])

    def some_id(self, t: Tenant, ids: list[str], prefix: str) -> str:
        """Mostly one of `ids` (bound ones), else an unknown id or another tenant's."""
        ids = self.bound(ids)
        r = self.rnd.random()
        if ids and r < 0.9:
            return self.rnd.choice(ids)
        if r < 0.95:
            self.hit("unknown id")
            return prefix + self.rnd.choice(["nope", "0" * 24, "19c1d948a800000000000001", "x/y z"])
        other = self.tenant_state(self.other_tenant(t))
        theirs = self.bound(self.ids_of(other, prefix))
        if theirs:
            self.hit("another tenant's id")
            return self.rnd.choice(theirs)
        return prefix + "nope"

    @staticmethod
    def ids_of(state: Any, prefix: str) -> list[str]:
        if prefix == "tx_":
            return [r.id for r in state.rows]
        if prefix == "hold_":
            return [h.id for h in state.holds]
        if prefix == "mtr_":
            return [m.id for m in state.meters]
        if prefix == "cg_":
            return [g.id for g in state.grants]
        if prefix == "pr_":
            return [r.id for r in state.rules]
        if prefix == "ct_":
            return [r.id for r in state.journal]
        return []

    def when(self, spread_days: int = 3, anchors: list[int] | None = None) -> str:
        """A time text near now: RFC 3339 (Z or an offset) or a bare date; a quarter of them on
        a boundary: a day's start, or exactly one of `anchors` (rows' or events' own times)."""
        t = self.now() - self.rnd.randint(-HOUR, spread_days * DAY)
        if self.rnd.random() < 0.25:
            self.hit("a time on a boundary")
            if anchors and self.rnd.random() < 0.6:
                exact = self.rnd.choice(anchors)
                return iso(exact) if self.rnd.random() < 0.6 else iso(exact + 2 * HOUR)[:-1] + "+02:00"
            t = t // DAY * DAY
            return self.rnd.choice([iso(t)[:10], iso(t), iso(t)[:19] + "Z", iso(t + 2 * HOUR)[:19] + "+02:00"])
        r = self.rnd.random()
        if r < 0.35:
            return iso(t)[:10]
        if r < 0.7:
            return iso(t)
        if r < 0.85:
            return iso(t)[:19] + "Z"
        shifted = iso(t + 2 * HOUR)
        return shifted[:19] + "+02:00"

    def bad_time(self) -> str:
        return self.rnd.choice(["yesterday", "2031-02-30", "2031-05-20T25:00:00Z", "2031-05-20T10:00:00", "20310520"])

    def page_params(self, t: Tenant, params: dict[str, Any], listing: list[str], refusal: str = "") -> None:
        """limit and startingAfter (a row of `listing`; or, leaning towards `refusal` while it
        has not been answered, an id of no row)."""
        if refusal and self.lacking(refusal) and self.rnd.random() < 0.3:
            listing = []
        r = self.rnd.random()
        if r < 0.5:
            params["limit"] = self.rnd.randint(1, 6)
        elif r < 0.55:
            params["limit"] = self.rnd.choice([1000, 100])
        if self.rnd.random() < 0.3:
            params["startingAfter"] = self.some_id(t, listing, self.rnd.choice(["tx_", "hold_", "ct_"]))

    # ---- generating one call

    def generate(self, t: Tenant) -> tuple[str, dict[str, Any], str]:
        """A call (method, params, transport); self.specific tells whether it carries a value the
        operation refuses (then it goes with no read key and no idempotency key, which would
        answer first)."""
        weights = {
            "deposit": 9, "recordUsage": 10, "grantStarterCredit": 2, "refund": 6, "createHold": 6, "captureHold": 6,
            "releaseHold": 2.5, "createMeter": 2, "recordMeterEvents": 7, "createCreditGrant": 5, "voidCreditGrant": 1.5,
            "burnCredits": 5, "createPricingRule": 3, "deletePricingRule": 1, "getBalance": 3, "getBalanceAll": 1.5,
            "getUsage": 1.5, "listTransactions": 2.5, "listAccounts": 1.5, "getHold": 2, "listHolds": 1.5,
            "listMeters": 0.5, "getMeter": 1, "getMeterEventsSummary": 3, "listCreditGrants": 1.5,
            "getCreditBalance": 1.5, "listCreditTransactions": 1.5, "listPricingRules": 1, "invoicePreview": 3,
        }
        method = self.rnd.choices(list(weights), weights=list(weights.values()))[0]
        transport = self.transport()
        unsent = [o for o in self.fault_options.get(f"bad {method}", []) if f"bad {method}: {o}" not in self.reached]
        bad = self.rnd.random() < (0.4 if unsent else 0.15)
        specific = bad and self.rnd.random() < 0.55   # a value the operation refuses; else a generic fault
        self.specific = specific
        self.faults = []
        params = getattr(self, "gen_" + method)(t, specific)
        if bad and not specific:
            self.corrupt(method, params, transport)
        return method, params, transport

    def fault(self, what: str, options: list[str]) -> str:
        """One of `options`, preferring one not sent yet (directed: rare faults are not left to
        luck)."""
        self.fault_options[what] = options
        fresh = [o for o in options if f"{what}: {o}" not in self.reached]
        choice = self.rnd.choice(fresh if fresh and self.rnd.random() < 0.7 else options)
        self.faults.append(f"{what}: {choice}")   # counted once the call goes out (commit_faults)
        return choice

    def commit_faults(self, sent: bool) -> None:
        for f in self.faults if sent else []:
            self.hit(f)
        self.faults = []

    def lacking(self, outcome: str) -> bool:
        """Whether the model has not reached `outcome` yet: generators lean towards it then."""
        return outcome not in self.model.reached and self.rnd.random() < 0.5

    def corrupt(self, method: str, params: dict[str, Any], transport: str) -> None:
        """One generic fault: an undeclared name (perhaps with a required one missing too: the
        undeclared one is answered), a required one missing or empty, a wrong type."""
        op = OPS[method]
        query = transport == "rest" and op.verb in ("GET", "DELETE")
        path = method in PATH_PARAMS and transport == "rest"
        required = [p.name for p in op.params if p.required and not (path and p.name == "id")]
        ints = [p.name for p in op.params if p.kind == "int"]
        texts = [p.name for p in op.params if p.kind == "text" and not (path and p.name == "id")]
        choice = self.rnd.random()
        if choice < 0.35 or not op.params:
            name = self.rnd.choice(["bogus", "usr", "amout", "org", "mode", "tenant"])
            params[name] = self.rnd.choice([1, "x", None, True])
            if required and self.rnd.random() < 0.3:
                params.pop(self.rnd.choice(required), None)
            self.hit("unknown parameter sent")
        elif choice < 0.6 and required:
            name = self.rnd.choice(required)
            if self.rnd.random() < 0.5:
                params.pop(name, None)
            else:
                kind = next(p.kind for p in op.params if p.name == name)
                params[name] = "" if kind == "text" and self.rnd.random() < 0.6 else None
            self.hit("required parameter missing")
        elif choice < 0.8 and ints:
            params[self.rnd.choice(ints)] = self.rnd.choice(["12", "abc", 1.5, True] if not query else ["abc", 1.5])
            self.hit("wrong type sent")
        elif texts and not query and self.rnd.random() < 0.15:
            params[self.rnd.choice(texts)] = "x" * 65537
            self.hit("text too long sent")
        elif texts and not query:
            params[self.rnd.choice(texts)] = self.rnd.choice([12, ["a"], {"a": 1}, False])
            self.hit("wrong type sent")
        else:
            params["bogus"] = 1
            self.hit("unknown parameter sent")

    # ledger

    def gen_deposit(self, t: Tenant, bad: bool) -> dict[str, Any]:
        p: dict[str, Any] = {"user": self.user(), "amount": self.rnd.randint(50, 3000)}
        self.currency(p)
        r = self.rnd.random()
        if r < 0.3:
            p["expiresIn"] = self.rnd.choice([1, 1, 2, 3])
        elif r < 0.35:
            p["expiresIn"] = self.rnd.choice([0, -3])
        if self.rnd.random() < 0.3:
            p["tags"] = self.rnd.choice(["topup", "promo,trial", "a,b", "b"])
        if self.rnd.random() < 0.2:
            p["notes"] = "manual top-up"
        if self.rnd.random() < 0.25:
            p["metadata"] = self.rnd.choice([{"po": "7"}, {"k": [1, "two", {"four": True}], "n": -5}, {}, ["a", 1], "text",
                                             3, None, True, {"nested": {"deeper": [None, 1.5]}}])
        if bad:
            f = self.fault("bad deposit", ["amount", "currency", "expiresIn"])
            if f == "amount":
                p["amount"] = self.rnd.choice([0, -5])
            elif f == "currency":
                p["currency"] = self.rnd.choice(["xyz", "us", "dollars"])
            else:
                p["expiresIn"] = 36501
        return p

    def gen_recordUsage(self, t: Tenant, bad: bool) -> dict[str, Any]:
        state = self.tenant_state(t)
        p: dict[str, Any] = {"user": self.user(), "amount": self.rnd.randint(1, 400)}
        self.currency(p)
        if self.rnd.random() < 0.1:
            p["amount"] = self.rnd.choice([0, -10])
        p["model"] = self.rnd.choice(["gpt-x", "m", "claude"])
        if self.rnd.random() < 0.5:
            p["totalTokens"] = self.rnd.randint(0, 5000)
            p["promptTokens"] = self.rnd.randint(0, 100)
        if self.rnd.random() < 0.2:
            p |= {"provider": "openai", "premium": True, "status": "ok", "clientIp": "203.0.113.7", "stream": True}
        if self.rnd.random() < 0.5:
            seen = [rid for (user, rid) in state.usage_by_request if user == p["user"]]
            if seen and self.rnd.random() < 0.3 and p["amount"] > 0:
                p["requestId"] = self.rnd.choice(seen)
                p["amount"] = self.rnd.randint(1, 400)
            else:
                p["requestId"] = self.fresh("req-")
        if bad:
            f = self.fault("bad recordUsage", ["amount", "currency", "type"])
            if f == "amount":
                del p["amount"]
            elif f == "currency":
                p["currency"] = "xyz"
            else:
                p["premium"] = "yes"
        return p

    def gen_grantStarterCredit(self, t: Tenant, bad: bool) -> dict[str, Any]:
        p = {"user": self.user()}
        if bad:
            p["user"] = ""
        return p

    def gen_refund(self, t: Tenant, bad: bool) -> dict[str, Any]:
        state = self.tenant_state(t)
        charges = [r for r in state.rows if r.type == "withdraw" and "credit-expired" not in r.tag_list and r.id in self.ids]
        others = [r for r in state.rows if (r.type != "withdraw" or "credit-expired" in r.tag_list) and r.id in self.ids]
        forfeits = [r for r in others if "credit-expired" in r.tag_list]
        r = self.rnd.random()
        if charges and r < 0.75:
            orig = self.rnd.choice(charges)
            left = orig.amount - state.refunded.get(orig.id, 0)
            amount = self.rnd.choice([max(left, 1), self.rnd.randint(1, max(left, 1)), left + self.rnd.randint(1, 50)])
            p = {"user": orig.user, "amount": max(amount, 1), "originalTransactionId": orig.id}
            if orig.currency != "usd" or self.rnd.random() < 0.2:
                p["currency"] = orig.currency
            if self.rnd.random() < 0.05:
                p["user"] = self.user()  # perhaps another user's charge: not found
            elif self.rnd.random() < 0.04:
                p["currency"] = "jpy" if orig.currency != "jpy" else "usd"  # a charge in another currency: not found
        elif (forfeits or others) and r < 0.9:
            orig = self.rnd.choice(forfeits if forfeits and self.rnd.random() < 0.5 else others)
            p = {"user": orig.user, "amount": 1, "originalTransactionId": orig.id}
            if orig.currency != "usd":
                p["currency"] = orig.currency
        else:
            p = {"user": self.user(), "amount": 5, "originalTransactionId": self.some_id(t, [], "tx_")}
        if self.rnd.random() < 0.2:
            p["notes"] = "sorry"
        if bad:
            f = self.fault("bad refund", ["amount", "orig"])
            if f == "amount":
                p["amount"] = self.rnd.choice([0, -1])
            else:
                del p["originalTransactionId"]
        return p

    def gen_getBalance(self, t: Tenant, bad: bool) -> dict[str, Any]:
        p = {"user": self.user()}
        self.currency(p)
        if bad:
            p["currency"] = "xyz"
        return p

    def gen_getBalanceAll(self, t: Tenant, bad: bool) -> dict[str, Any]:
        return {"user": self.user()}

    def gen_getUsage(self, t: Tenant, bad: bool) -> dict[str, Any]:
        state = self.tenant_state(t)
        p: dict[str, Any] = {"user": self.user()}
        if self.rnd.random() < 0.3:
            self.currency(p, always=True)
        mine = [r.id for r in state.rows if r.user == p["user"] and "api-usage" in r.tag_list]
        self.page_params(t, p, mine, "getUsage refused: transaction not found")
        if bad:
            p["limit"] = self.rnd.choice([0, 1001])
        return p

    def gen_listTransactions(self, t: Tenant, bad: bool) -> dict[str, Any]:
        state = self.tenant_state(t)
        p: dict[str, Any] = {"user": self.user()}
        if self.rnd.random() < 0.25:
            self.currency(p, always=True)
        if self.rnd.random() < 0.2:
            p["type"] = self.rnd.choice(["deposit", "withdraw", "hold"])
        if self.rnd.random() < 0.2:
            p["tag"] = self.rnd.choice(["api-usage", "refund", "credit-expired", "starter-credit", "b", "promo", "api"])
        times = [r.created_at for r in state.rows if r.user == p["user"]]
        if self.rnd.random() < 0.2:
            p["createdAfter"] = self.when(anchors=times)
        if self.rnd.random() < 0.2:
            p["createdBefore"] = self.when(anchors=times)
        ids = [r.id for r in state.rows if r.user == p["user"] or self.rnd.random() < 0.1]
        self.page_params(t, p, ids, "listTransactions refused: transaction not found")
        if bad:
            f = self.fault("bad listTransactions", ["time", "type", "limit"])
            if f == "time":
                p[self.rnd.choice(["createdAfter", "createdBefore"])] = self.bad_time()
            elif f == "type":
                p["type"] = "refund"
            else:
                p["limit"] = 0
        return p

    def gen_listAccounts(self, t: Tenant, bad: bool) -> dict[str, Any]:
        p: dict[str, Any] = {}
        self.currency(p)
        if self.rnd.random() < 0.4:
            p["maxAvailable"] = self.rnd.choice([0, 100, 1000, -1, 5000])
        if self.rnd.random() < 0.4:
            p["limit"] = self.rnd.randint(1, 3)
        if self.rnd.random() < 0.3:
            p["startingAfter"] = self.rnd.choice(USERS + ["A", "hanzo/", "zzz", ""])
        if bad:
            p["limit"] = 1001
        return p

    # holds

    def gen_createHold(self, t: Tenant, bad: bool) -> dict[str, Any]:
        state = self.tenant_state(t)
        p: dict[str, Any] = {"user": self.user(), "amount": self.rnd.randint(10, 1500)}
        self.currency(p)
        if self.rnd.random() < 0.7:
            p["expiresIn"] = self.rnd.choice([60, 300, 900, 3600, 3600, 86400, 86400, 604800])
        if self.rnd.random() < 0.4:
            seen = [rid for (user, rid) in state.hold_by_request if user == p["user"]]
            p["requestId"] = self.rnd.choice(seen) if seen and self.rnd.random() < 0.3 else self.fresh("hreq-")
        if self.rnd.random() < 0.25:   # beyond what is available: refused, or held with allowOverdraft
            cur = (p.get("currency") or "usd").lower()
            p["amount"] = self.quietly(self.model.balance_of, state, p["user"], cur, self.now())[2] + self.rnd.randint(1, 300)
        if self.rnd.random() < 0.25:
            p["allowOverdraft"] = self.rnd.random() < 0.8
        if self.rnd.random() < 0.3:
            p["metadata"] = self.rnd.choice([{"route": "/chat"}, {"k": [1, "two", {}], "n": -5}, ["x"], 7, None])
        if bad:
            f = self.fault("bad createHold", ["amount", "expiresIn", "expiresIn2"])
            if f == "amount":
                p["amount"] = 0
            else:
                p["expiresIn"] = 0 if f == "expiresIn" else 604801
        return p

    def pick_hold(self, t: Tenant) -> str:
        state = self.tenant_state(t)
        now = self.now()
        pending = [h.id for h in state.holds if h.status_at(now) == "pending" and (h.user != WHALE or self.rnd.random() < 0.1)]
        if pending and self.rnd.random() < 0.75:
            return self.rnd.choice(self.bound(pending) or pending)
        return self.some_id(t, [h.id for h in state.holds], "hold_")

    def gen_captureHold(self, t: Tenant, bad: bool) -> dict[str, Any]:
        state = self.tenant_state(t)
        p: dict[str, Any] = {"id": self.pick_hold(t)}
        h = state.hold_by_id.get(p["id"])
        r = self.rnd.random()
        if h is not None and h.status_at(self.now()) == "pending" and self.lacking("capture beyond the hold refused"):
            r = 0.45
        if h is not None and r < 0.4:
            p["amount"] = self.rnd.randint(1, h.amount)
        elif h is not None and r < 0.52:
            p["amount"] = h.amount + self.rnd.randint(1, 20)
        elif r < 0.6:
            p["amount"] = h.amount if h is not None else 10
        if self.rnd.random() < 0.7:
            p["model"] = self.rnd.choice(["gpt-x", "m"])
        if self.rnd.random() < 0.2:
            p["notes"] = "streamed"
        if self.rnd.random() < 0.3:
            p["metadata"] = self.rnd.choice([{"chunks": 3}, ["a", 1], "text", {"holdId": "mine", "model": "x", "n": 1}, None])
        if bad:
            p["amount"] = self.rnd.choice([0, -4])
        return p

    def gen_releaseHold(self, t: Tenant, bad: bool) -> dict[str, Any]:
        return {"id": self.pick_hold(t)}

    def gen_getHold(self, t: Tenant, bad: bool) -> dict[str, Any]:
        return {"id": self.some_id(t, [h.id for h in self.tenant_state(t).holds], "hold_")}

    def gen_listHolds(self, t: Tenant, bad: bool) -> dict[str, Any]:
        state = self.tenant_state(t)
        p: dict[str, Any] = {}
        if self.rnd.random() < 0.6:
            p["user"] = self.user()
        if self.rnd.random() < 0.4:
            p["status"] = self.rnd.choice(["pending", "captured", "released", "expired"])
        self.page_params(t, p, [h.id for h in state.holds], "listHolds refused: hold not found")
        if bad:
            p["status"] = self.rnd.choice(["settled", "PENDING"])
        return p

    # meters

    def gen_createMeter(self, t: Tenant, bad: bool) -> dict[str, Any]:
        state = self.tenant_state(t)
        taken = [m.event_name for m in state.meters]
        free = [n for n in EVENT_NAMES if n not in taken]
        name = self.rnd.choice(free) if free and self.rnd.random() < 0.75 else self.rnd.choice(taken or EVENT_NAMES)
        p: dict[str, Any] = {"name": self.rnd.choice(["API calls", "Tokens", "Images", "Runs"]), "eventName": name}
        aggregations = ["sum", "count", "last", "max", "min", "unique_count"]
        unsummed = [a for a in aggregations if f"summary of a {a} meter" not in self.model.reached]
        missing = unsummed or [a for a in aggregations if a not in {m.aggregation for m in state.meters}]
        if self.rnd.random() < 0.85:
            p["aggregationType"] = self.rnd.choice(missing if missing and self.rnd.random() < 0.8 else aggregations)
        if p["eventName"] == "api-usage" and self.rnd.random() < 0.7:
            p["aggregationType"] = "sum"
        if self.rnd.random() < 0.2:
            p["currency"] = self.rnd.choice(["usd", "EUR"])
        if self.rnd.random() < 0.3:
            p["dimensions"] = self.rnd.choice([["model"], ["model", "region"], []])
        if bad:
            p["aggregationType"] = self.rnd.choice(["avg", "SUM", "total"])
        return p

    def gen_listMeters(self, t: Tenant, bad: bool) -> dict[str, Any]:
        return {}

    def gen_getMeter(self, t: Tenant, bad: bool) -> dict[str, Any]:
        return {"id": self.some_id(t, [m.id for m in self.tenant_state(t).meters], "mtr_")}

    def gen_recordMeterEvents(self, t: Tenant, bad: bool) -> dict[str, Any]:
        state = self.tenant_state(t)
        meters = self.bound([m.id for m in state.meters])
        keys = [k for k in state.event_by_key if ":" not in k]   # not the keys recordUsage and captures make
        n = self.rnd.choice([1, 1, 2, 3, 4, 6]) if self.rnd.random() > 0.01 else 100
        unsummed = self.bound([m.id for m in state.meters if f"summary of a {m.aggregation} meter" not in self.model.reached])
        if unsummed and self.rnd.random() < 0.5:
            meters = unsummed
        events = []
        for _ in range(n):
            e: dict[str, Any] = {"meterId": self.rnd.choice(meters) if meters else "mtr_nope", "userId": self.user()}
            if self.rnd.random() < 0.9:
                e["value"] = self.rnd.choice([self.rnd.randint(1, 60), self.rnd.randint(1, 5), 0, -3]
                                             if self.rnd.random() < 0.1 else [self.rnd.randint(1, 60)])
            if self.rnd.random() < 0.5:
                e["timestamp"] = self.when(2)
            r = self.rnd.random()
            if r < 0.35:
                e["idempotency"] = self.fresh("ev-")
            elif r < 0.45 and keys:
                e["idempotency"] = self.rnd.choice(keys[-40:])
            elif r < 0.55 and events and "idempotency" in events[-1]:
                e["idempotency"] = events[-1]["idempotency"]
            if self.rnd.random() < 0.2:
                e["dimensions"] = {"model": "m"}
            events.append(e)
        if self.rnd.random() < 0.04 and events:
            events[self.rnd.randrange(len(events))]["meterId"] = self.some_id(t, [], "mtr_")
        p: dict[str, Any] = {"events": events}
        if bad:
            f = self.fault("bad recordMeterEvents", ["none", "many", "meter", "user", "ts", "field"])
            i = self.rnd.randrange(len(events))
            if f == "none":
                p["events"] = [] if self.rnd.random() < 0.5 else None  # both: at least one event
            elif f == "many":
                p["events"] = [dict(events[0], idempotency=None) for _ in range(101)]
            elif f == "meter":
                events[i].pop("meterId")
            elif f == "user":
                events[i]["userId"] = ""
            elif f == "ts":
                events[i]["timestamp"] = self.bad_time()
            else:
                events[i]["valeu"] = 3
        return p

    def gen_getMeterEventsSummary(self, t: Tenant, bad: bool) -> dict[str, Any]:
        p: dict[str, Any] = {"meterId": self.some_id(t, [m.id for m in self.tenant_state(t).meters], "mtr_")}
        if self.rnd.random() < 0.6:
            p["userId"] = self.user()
        times = [e.ts for e in self.tenant_state(t).events if e.meter == p["meterId"]]
        if self.rnd.random() < 0.3:
            p["periodStart"] = self.when(3, times)
        if self.rnd.random() < 0.3:
            p["periodEnd"] = self.when(1, times)
        if bad:
            p[self.rnd.choice(["periodStart", "periodEnd"])] = self.bad_time()
        return p

    # grants

    def gen_createCreditGrant(self, t: Tenant, bad: bool) -> dict[str, Any]:
        meters = self.bound([m.id for m in self.tenant_state(t).meters])
        p: dict[str, Any] = {"userId": self.user(), "amountCents": self.rnd.randint(20, 1500)}
        if self.rnd.random() < 0.5:
            p["name"] = self.rnd.choice(["promo", "welcome", "meter-only"])
        if self.rnd.random() < 0.15:
            p["currency"] = self.rnd.choice(["eur", "USD"])
        if self.rnd.random() < 0.55:
            p["expiresIn"] = self.rnd.choice(GRANT_DURATIONS)
        if self.rnd.random() < 0.7:
            p["priority"] = self.rnd.choice([-1, 0, 0, 1, 2, 3])
        if meters and self.rnd.random() < 0.3:
            p["eligibility"] = self.rnd.sample(meters, min(len(meters), self.rnd.choice([1, 1, 2])))
        if self.rnd.random() < 0.03 or self.lacking("createCreditGrant refused: meter not found") and self.rnd.random() < 0.2:
            p["eligibility"] = [self.some_id(t, [], "mtr_")]
        if self.rnd.random() < 0.2:
            p["tags"] = "promo,q1"
        if bad:
            f = self.fault("bad createCreditGrant", ["amount", "expires", "currency"])
            if f == "amount":
                p["amountCents"] = self.rnd.choice([0, -100])
            elif f == "expires":
                p["expiresIn"] = self.fault("bad grant duration", ["abc", "1x", "-1h", "0s", "10"])
            else:
                p["currency"] = "xyz"
        return p

    def gen_listCreditGrants(self, t: Tenant, bad: bool) -> dict[str, Any]:
        return {"userId": self.user()}

    def gen_getCreditBalance(self, t: Tenant, bad: bool) -> dict[str, Any]:
        return {"userId": self.user()}

    def gen_voidCreditGrant(self, t: Tenant, bad: bool) -> dict[str, Any]:
        return {"id": self.some_id(t, [g.id for g in self.tenant_state(t).grants], "cg_")}

    def gen_burnCredits(self, t: Tenant, bad: bool) -> dict[str, Any]:
        state = self.tenant_state(t)
        with_grants = sorted({g.user for g in state.grants})
        user = self.rnd.choice(with_grants) if with_grants and self.rnd.random() < 0.8 else self.user()
        p: dict[str, Any] = {"userId": user, "amount": self.rnd.choice([self.rnd.randint(10, 600), self.rnd.randint(300, 2500)])}
        if self.rnd.random() < 0.4:
            eligible = [m for g in state.grants if g.user == user for m in g.eligibility]
            p["meterId"] = self.some_id(t, eligible or [m.id for m in state.meters], "mtr_")
        if self.rnd.random() < 0.15:
            p["currency"] = "eur"
        if bad:
            p["amount"] = self.rnd.choice([0, -50])
        return p

    def gen_listCreditTransactions(self, t: Tenant, bad: bool) -> dict[str, Any]:
        state = self.tenant_state(t)
        p: dict[str, Any] = {"userId": self.user()}
        if self.rnd.random() < 0.3:
            mine = [g.id for g in state.grants if g.user == p["userId"]]
            if self.lacking("listCreditTransactions refused: credit grant not found"):
                mine = []
            p["grantId"] = self.some_id(t, mine if mine and self.rnd.random() < 0.9 else [g.id for g in state.grants], "cg_")
        rows = [r.id for r in state.journal if r.grant.user == p["userId"] and p.get("grantId") in (None, r.grant.id)]
        self.page_params(t, p, rows, "listCreditTransactions refused: not found")
        if bad:
            p["limit"] = self.rnd.choice([0, 1001, "ten"])
        return p

    # pricing

    def tiers(self) -> list[dict[str, int]]:
        n = self.rnd.choice([1, 2, 2, 3])
        bounds = sorted(self.rnd.sample(range(5, 200), n - 1))
        out = []
        for i in range(n):
            tier: dict[str, int] = {"upTo": bounds[i] if i < n - 1 else 0, "price": self.rnd.randint(0, 12)}
            if self.rnd.random() < 0.4:
                tier["flat"] = self.rnd.randint(0, 100)
            if tier["upTo"] == 0 and self.rnd.random() < 0.5:
                del tier["upTo"]
            out.append(tier)
        return out

    def gen_createPricingRule(self, t: Tenant, bad: bool) -> dict[str, Any]:
        p: dict[str, Any] = {"meterId": self.some_id(t, [m.id for m in self.tenant_state(t).meters], "mtr_")}
        if self.rnd.random() < 0.4:
            p["planId"] = self.rnd.choice(["pro", "basic"])
        model = self.rnd.choice(["per_unit", "tiered", "volume"])
        if model != "per_unit" or self.rnd.random() < 0.5:
            p["model"] = model
        if model == "per_unit":
            p["unitPrice"] = self.rnd.randint(0, 15)
        else:
            p["tiers"] = self.tiers()
        if self.rnd.random() < 0.1:
            p["currency"] = "eur"
        if bad:
            f = self.fault("bad createPricingRule", ["price", "tiers_on_unit", "no_tiers", "negative", "unbounded", "bounded", "order", "model"])
            tiers = [{"upTo": 100, "price": 10}, {"upTo": 500, "price": 5}, {"upTo": 0, "price": 1, "flat": 100}]
            if f == "price":
                p |= {"model": "per_unit", "unitPrice": -1}
                p.pop("tiers", None)
            elif f == "tiers_on_unit":
                p |= {"model": "per_unit", "tiers": tiers}
                p.pop("unitPrice", None)
            elif f == "no_tiers":
                p |= {"model": self.rnd.choice(["tiered", "volume"])}
                p.pop("tiers", None)
                p.pop("unitPrice", None)
            else:
                p["model"] = "tiered"
                p.pop("unitPrice", None)
                if f == "negative":
                    tiers[1]["price"] = -5
                elif f == "unbounded":
                    tiers[0]["upTo"] = 0
                elif f == "bounded":
                    tiers[2]["upTo"] = 900
                elif f == "order":
                    tiers[1]["upTo"] = 50
                else:
                    p["model"] = "graduated"
                p["tiers"] = tiers
        return p

    def gen_listPricingRules(self, t: Tenant, bad: bool) -> dict[str, Any]:
        p: dict[str, Any] = {}
        if self.rnd.random() < 0.5:
            p["meterId"] = self.some_id(t, [m.id for m in self.tenant_state(t).meters], "mtr_")
        if self.rnd.random() < 0.3:
            p["planId"] = self.rnd.choice(["pro", "basic"])
        return p

    def gen_deletePricingRule(self, t: Tenant, bad: bool) -> dict[str, Any]:
        return {"id": self.some_id(t, [r.id for r in self.tenant_state(t).rules], "pr_")}

    def gen_invoicePreview(self, t: Tenant, bad: bool) -> dict[str, Any]:
        p: dict[str, Any] = {"userId": self.user()}
        times = [e.ts for e in self.tenant_state(t).events if e.user == p["userId"]]
        if self.rnd.random() < 0.3:
            p["periodStart"] = self.when(3, times)
        if self.rnd.random() < 0.3:
            p["periodEnd"] = self.when(1, times)
        if self.rnd.random() < 0.4:
            p["planId"] = self.rnd.choice(["pro", "basic"])
        if self.rnd.random() < 0.1:
            p["currency"] = "eur"
        if bad:
            p[self.rnd.choice(["periodStart", "periodEnd"])] = self.bad_time()
        return p

    # ---- batches

    def footprint(self, t: Tenant, method: str, p: dict[str, Any]) -> tuple[set[str], bool]:
        """What a call reads or writes (and whether it writes), so that a batch holds only calls
        whose answers do not depend on the order the server runs them in."""
        state = self.tenant_state(t)
        user = p.get("user") or p.get("userId")
        ident = p.get("id") if isinstance(p.get("id"), str) else None
        if method in ("captureHold", "releaseHold", "getHold"):
            h = state.hold_by_id.get(ident)  # type: ignore[arg-type]
            user = h.user if h is not None else None
        if method == "refund":
            user = p.get("user")
        if method == "voidCreditGrant":
            g = state.grant(ident)
            user = g.user if g is not None else None
        ledger = {f"ledger:{user}", "accounts", "holds"}
        res = {
            "deposit": ledger, "recordUsage": ledger | {"events"}, "grantStarterCredit": ledger, "refund": ledger,
            "createHold": ledger, "captureHold": ledger | {"events"}, "releaseHold": ledger,
            "getBalance": {f"ledger:{user}"}, "getBalanceAll": {f"ledger:{user}"}, "getUsage": {f"ledger:{user}"},
            "listTransactions": {f"ledger:{user}"}, "listAccounts": {"accounts"}, "getHold": {"holds"},
            "listHolds": {"holds"}, "createMeter": {"meters", "events"}, "listMeters": {"meters"}, "getMeter": {"meters"},
            "recordMeterEvents": {"events"}, "getMeterEventsSummary": {"events", "meters"},
            "createCreditGrant": {f"grants:{user}"}, "voidCreditGrant": {f"grants:{user}"}, "burnCredits": {f"grants:{user}"},
            "listCreditGrants": {f"grants:{user}"}, "getCreditBalance": {f"grants:{user}"},
            "listCreditTransactions": {f"grants:{user}"}, "createPricingRule": {"rules"}, "deletePricingRule": {"rules"},
            "listPricingRules": {"rules"}, "invoicePreview": {"events", "meters", "rules", f"grants:{user}"},
        }[method]
        return set(res), OPS[method].mutates

    async def batch_step(self, t: Tenant) -> None:
        size = self.rnd.randint(2, 8)
        scope = "read" if "read" in t.keys and self.rnd.random() < 0.15 else "admin"
        entries: list[tuple[str, dict[str, Any], str | None]] = []
        written: set[str] = set()
        read: set[str] = set()
        for _ in range(size * 2):
            if len(entries) >= size:
                break
            method, params, _ = self.generate(t)
            idem = None
            if OPS[method].mutates and self.rnd.random() < 0.2:
                method, params, idem = self.idempotency(t, method, params)
            res, writes = self.footprint(t, method, params)
            if idem is not None:
                res.add(f"idempotency:{idem}")
            if writes and scope == "admin":
                if res & (written | read):
                    self.commit_faults(False)
                    continue
                written.update(res)
                if idem is not None:
                    t.sent_keys.append((idem, method, params))
            else:
                if res & written:
                    self.commit_faults(False)
                    continue
                read.update(res)
            self.commit_faults(scope == "admin" and idem is None)
            entries.append((method, params, idem))
        extra: list[tuple[Any, str, int]] = []
        if self.rnd.random() < 0.4:
            extra.append((self.rnd.choice([{"id": "no-method", "params": {}}, 5, "billing.getBalance",
                                           {"method": "billing.getBalance", "id": "p", "params": ["x"]}]),
                          "invalid_request", self.rnd.randint(0, len(entries))))
        if self.rnd.random() < 0.3:
            extra.append(({"method": "billing.nope", "id": "nope", "params": {}}, "method_not_found",
                          self.rnd.randint(0, len(entries))))
        await self.batch(t, entries, self.rnd.choice(["json", "msgpack"]), scope, extra)

    # ---- checkpoints

    async def checkpoint(self) -> None:
        """Every balance, page, remainder, journal, hold, summary, rule and preview of every tenant
        compared with the model, read in ZAP batches; paged lists walked in random page sizes
        (one round of batches per page)."""
        self.hit("checkpoint")
        walks: list[tuple[Tenant, str, dict[str, Any], str, str]] = []   # tenant, method, params, rows, next
        single: list[tuple[Tenant, str, dict[str, Any]]] = []
        for t in self.tenants:
            state = self.tenant_state(t)
            users = sorted({r.user for r in state.rows} | {h.user for h in state.holds} | {g.user for g in state.grants}
                           | set(USERS[:2]))
            for u in users:
                for cur in ("usd", "eur", "jpy"):
                    single.append((t, "getBalance", {"user": u, "currency": cur}))
                single.append((t, "getBalanceAll", {"user": u}))
                single.append((t, "listCreditGrants", {"userId": u}))
                single.append((t, "getCreditBalance", {"userId": u}))
                walks.append((t, "listTransactions", {"user": u}, "transactions", "transactionId"))
                walks.append((t, "getUsage", {"user": u}, "usage", "transactionId"))
                walks.append((t, "listCreditTransactions", {"userId": u}, "transactions", "id"))
                walks.append((t, "listHolds", {"user": u}, "holds", "holdId"))
                for plan in (None, "pro"):
                    single.append((t, "invoicePreview", {"userId": u, **({"planId": plan} if plan else {})}))
            walks.append((t, "listHolds", {}, "holds", "holdId"))
            for cur in ("usd", "eur"):
                walks.append((t, "listAccounts", {"currency": cur}, "accounts", "user"))
            single.append((t, "listMeters", {}))
            single.append((t, "listPricingRules", {}))
            for m in state.meters:
                for u in [None] + users:
                    single.append((t, "getMeterEventsSummary", {"meterId": m.id, **({"userId": u} if u else {})}))
        pending = []
        for t, method, params, rows_of, next_of in walks:
            n = len(self.peek(t, method, dict(params, limit=1000))[rows_of])
            sizes = [max(1, math.ceil(n / k)) for k in (1, 2, 3)] + ([self.rnd.randint(1, 3)] if n <= 6 else [])
            pending.append((t, method, dict(params, limit=self.rnd.choice(sizes)), rows_of, next_of))
        this: list[tuple[Tenant, str, dict[str, Any]]] = single
        while this or pending:
            nxt = []
            for t, method, params, rows_of, next_of in pending:
                this.append((t, method, params))
                page = self.peek(t, method, params)
                if page["hasMore"]:   # the next page starts after this one's last row, once bound
                    nxt.append((t, method, dict(params, startingAfter=page[rows_of][-1][next_of]), rows_of, next_of))
            await self.read_all(this)
            this, pending = [], nxt

    def peek(self, t: Tenant, method: str, params: dict[str, Any]) -> Any:
        """The model's answer to a read, without counting it as reached."""
        return self.quietly(self.model.call, t.name, "admin", t.key_ids["admin"], method, params, self.now()).result

    def quietly(self, fn: Any, *args: Any) -> Any:
        """fn(*args) on the model without counting what it reaches: nothing was compared."""
        reached = dict(self.model.reached)
        try:
            return fn(*args)
        finally:
            self.model.reached = reached

    async def read_all(self, calls: list[tuple[Tenant, str, dict[str, Any]]]) -> None:
        by_tenant: dict[tuple[str, str], list[tuple[Tenant, str, dict[str, Any]]]] = {}
        for c in calls:
            by_tenant.setdefault(c[0].name, []).append(c)
        for group in by_tenant.values():
            t = group[0][0]
            scope = "read" if "read" in t.keys and self.rnd.random() < 0.3 else "admin"
            for i in range(0, len(group), 100):
                chunk = group[i:i + 100]
                await self.batch(t, [(m, p, None) for _, m, p in chunk], self.rnd.choice(["json", "msgpack"]), scope)
