"""A pure-Python model of zapbilling's contract: what every operation must answer, given the
calls before it and the time.

Written from docs/api.md, docs/conventions.md and the README's "Choices the contract leaves
open" (plus the wording the suite's own tests pin: forfeit rows' notes and metadata). It imports
nothing of zapbilling: it is a second, independent reading of the contract, and
tests/model/driver.py compares the real server with it answer by answer.

State is kept per tenant (org, mode). Ids are the model's own, `<prefix>#<n>` (`tx_#12`); the
driver binds each to the server's id the first time an answer carries it, and translates ids
in requests. Details the contract leaves open are marked OPEN below with the reading taken
(each one the server's, checked by the runs):

- the order of refusals it does not rank: the parameters' own rules (tiers, unitPrice) before
  a meter lookup; an idempotency key's length after the parameters; in a preview every meter's
  quantity (a sum beyond int64) before any price;
- the `param` of refusals it does not name: `idempotencyKey` for a key reused or too long,
  `eligibility[i]`, `tiers[i]` / `tiers[i].upTo`, `events[i].<field>`; none for a sum or a
  price beyond int64;
- a quantity of zero or less: unitCost is per_unit's unitPrice but 0 for volume;
- the sweep writes its forfeits account by account (user, then currency, then expiry);
- without a planId only plan-less rules price;
- `a meter with eventName '<name>' already exists` quotes the name (api.md shows it bare).

`Model(variant=...)` makes a deliberately wrong model (for the suite's check that the comparison
catches a wrong reading): "burn_order_reversed" (highest priority burns first) or
"refunds_unbounded" (refunds not capped by their original).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

SECOND = 1_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# The currencies the generator sends that are ISO 4217 codes; it sends others only as bad input.
KNOWN_CURRENCIES = {"usd", "eur", "jpy", "gbp", "chf"}

# docs/api.md, "Error kinds": kind -> (REST status, ZAP code, HTTP status of a ZAP answer).
ERROR_TABLE = {
    "parse_error": (400, -32700, 400),
    "invalid_request": (400, -32600, 400),
    "method_not_found": (404, -32601, 200),
    "invalid_params": (400, -32602, 200),
    "unauthorized": (401, -32001, 401),
    "forbidden": (403, -32003, 403),
    "not_found": (404, -32004, 200),
    "conflict": (409, -32009, 200),
    "insufficient_funds": (402, -32002, 200),
    "spend_cap_reached": (402, -32005, 200),
    "payload_too_large": (413, -32013, 413),
    "unsupported_media_type": (415, -32015, 415),
    "internal_error": (500, -32000, 200),
}

UNCHECKED: Any = type("Unchecked", (), {"__repr__": lambda self: "UNCHECKED"})()
ABSENT: Any = type("Absent", (), {"__repr__": lambda self: "ABSENT"})()
ID_RE = re.compile(r"[a-z]+_#[A-Za-z0-9]+")


# -- times ------------------------------------------------------------------------------------

def iso(t: int) -> str:
    """A time as the contract answers it: RFC 3339, UTC, microseconds."""
    return (EPOCH + timedelta(microseconds=t)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2})$")


def parse_time(text: str, end: bool = False) -> int | None:
    """RFC 3339 (any offset) or a bare date: microseconds, or None when it does not parse. A bare
    date as an end means the start of the next day (the whole day included)."""
    try:
        if _DATE.match(text):
            d = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
            if end:
                d += timedelta(days=1)
        elif _RFC3339.match(text):
            d = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
        else:
            return None
    except ValueError:
        return None
    delta = d - EPOCH
    return (delta.days * 86_400 + delta.seconds) * SECOND + delta.microseconds


_GO_UNITS = {"ns": 1e-3, "us": 1, "µs": 1, "ms": 1_000, "s": SECOND, "m": MINUTE, "h": HOUR}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_go_duration(text: str) -> int | None:
    """A Go duration text (`720h`, `1h30m`) in microseconds; None when it is not one."""
    if not text:
        return None
    body = text[1:] if text[0] in "+-" else text
    if body == "0":
        return 0
    pos, total = 0, 0.0
    while pos < len(body):
        m = _GO_PART.match(body, pos)
        if not m:
            return None
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    if not body:
        return None
    return -int(total) if text[0] == "-" else int(total)


# -- answers ----------------------------------------------------------------------------------

class Refusal(Exception):
    """An error the contract prescribes: its kind, the words to rely on, and the parameter."""

    def __init__(self, kind: str, message: str, param: Any = UNCHECKED):
        super().__init__(f"{kind}: {message} ({param})")
        self.kind, self.message, self.param = kind, message, param


@dataclass
class Answer:
    """What the model expects of one call. `status` is the REST status; ZAP's come from the
    error table. `result` holds model ids, bound to the server's by the driver."""
    status: int
    result: Any = None
    error: Refusal | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# -- operations: parameters as docs/api.md declares them ---------------------------------------

@dataclass
class P:
    name: str
    kind: str                       # text, int, bool, data, list, map, enum, events, tiers
    required: bool = False
    default: Any = ABSENT
    rule: Callable[[str, Any], None] | None = None
    values: tuple[str, ...] = ()    # an enum's


@dataclass
class Op:
    name: str
    mutates: bool
    verb: str
    status: int
    params: list[P]


TEXT_BOUNDS = {"notes": 1000, "tags": 1000, "expiresIn": 64, "currency": 16, "timestamp": 64, "periodStart": 64,
               "periodEnd": 64, "createdAfter": 64, "createdBefore": 64}
"""docs/api.md, each text parameter's rules column: `at most N characters` (255 for every other)."""


def _currency(name: str, v: Any) -> None:
    if v.lower() not in KNOWN_CURRENCIES:
        raise Refusal("invalid_params", "unknown currency: ", name)


def _positive(name: str, v: Any) -> None:
    if v <= 0:
        raise Refusal("invalid_params", f"{name} must be positive", name)


def _limit(name: str, v: Any) -> None:
    if not 1 <= v <= 1000:
        raise Refusal("invalid_params", "limit must be between 1 and 1000", name)


def _deposit_days(name: str, v: Any) -> None:
    if v > 36500:
        raise Refusal("invalid_params", "expiresIn must be at most 36500 days", name)


def _hold_seconds(name: str, v: Any) -> None:
    if v <= 0:
        raise Refusal("invalid_params", "expiresIn must be a positive number of seconds", name)
    if v > 604800:
        raise Refusal("invalid_params", "expiresIn must be at most 604800 seconds (7 days)", name)


def _go_duration(name: str, v: Any) -> None:
    d = parse_go_duration(v)
    if d is None or d <= 0:
        raise Refusal("invalid_params", "invalid expiresIn", name)


def _time(words: str) -> Callable[[str, Any], None]:
    def rule(name: str, v: Any) -> None:
        if parse_time(v) is None:
            raise Refusal("invalid_params", words.format(name=name), name)
    return rule


CUR = P("currency", "text", default="usd", rule=_currency)
OPT_CUR = P("currency", "text", rule=_currency)
LIMIT = P("limit", "int", default=100, rule=_limit)
AFTER = P("startingAfter", "text")
AGGREGATIONS = ("sum", "count", "last", "max", "min", "unique_count")
HOLD_STATUSES = ("pending", "captured", "released", "expired")
TX_TYPES = ("deposit", "withdraw", "hold", "hold-removed", "transfer")
PERIOD = _time("invalid {name} format")

OPS: dict[str, Op] = {op.name: op for op in [
    Op("getBalance", False, "GET", 200, [P("user", "text", True), CUR]),
    Op("getBalanceAll", False, "GET", 200, [P("user", "text", True)]),
    Op("getUsage", False, "GET", 200, [P("user", "text", True), OPT_CUR, LIMIT, AFTER]),
    Op("recordUsage", True, "POST", 201, [
        P("user", "text", True), CUR, P("amount", "int", True), P("model", "text", default=""),
        P("provider", "text", default=""), P("promptTokens", "int", default=0), P("completionTokens", "int", default=0),
        P("totalTokens", "int", default=0), P("requestId", "text"), P("premium", "bool", default=False),
        P("stream", "bool", default=False), P("status", "text", default=""), P("clientIp", "text", default="")]),
    Op("deposit", True, "POST", 201, [
        P("user", "text", True), CUR, P("amount", "int", True, rule=_positive), P("notes", "text"),
        P("tags", "text", default=""), P("expiresIn", "int", default=0, rule=_deposit_days), P("metadata", "data")]),
    Op("grantStarterCredit", True, "POST", 201, [P("user", "text", True)]),
    Op("refund", True, "POST", 201, [
        P("user", "text", True), CUR, P("amount", "int", True, rule=_positive),
        P("originalTransactionId", "text", True), P("notes", "text")]),
    Op("createMeter", True, "POST", 201, [
        P("name", "text", True), P("eventName", "text", True),
        P("aggregationType", "enum", default="sum", values=AGGREGATIONS), CUR, P("dimensions", "list", default=[])]),
    Op("listMeters", False, "GET", 200, [LIMIT, AFTER]),
    Op("getMeter", False, "GET", 200, [P("id", "text", True)]),
    Op("recordMeterEvents", True, "POST", 201, [P("events", "events", default=[])]),
    Op("getMeterEventsSummary", False, "GET", 200, [
        P("meterId", "text", True), P("userId", "text"), P("periodStart", "text", rule=PERIOD),
        P("periodEnd", "text", rule=PERIOD)]),
    Op("createCreditGrant", True, "POST", 201, [
        P("userId", "text", True), P("name", "text", default=""), P("amountCents", "int", True, rule=_positive), CUR,
        P("expiresIn", "text", rule=_go_duration), P("priority", "int", default=0), P("eligibility", "list", default=[]),
        P("tags", "text", default="")]),
    Op("listCreditGrants", False, "GET", 200, [P("userId", "text", True)]),
    Op("getCreditBalance", False, "GET", 200, [P("userId", "text", True)]),
    Op("voidCreditGrant", True, "POST", 200, [P("id", "text", True)]),
    Op("burnCredits", True, "POST", 200, [
        P("userId", "text", True), P("amount", "int", True, rule=_positive), P("meterId", "text"), CUR]),
    Op("createPricingRule", True, "POST", 201, [
        P("meterId", "text", True), P("planId", "text", default=""),
        P("model", "enum", default="per_unit", values=("per_unit", "tiered", "volume")), CUR,
        P("unitPrice", "int", default=0), P("tiers", "tiers", default=[])]),
    Op("listPricingRules", False, "GET", 200, [P("meterId", "text"), P("planId", "text")]),
    Op("deletePricingRule", True, "DELETE", 200, [P("id", "text", True)]),
    Op("invoicePreview", False, "POST", 200, [
        P("userId", "text", True), P("periodStart", "text", rule=PERIOD), P("periodEnd", "text", rule=PERIOD), CUR,
        P("planId", "text")]),
    Op("createHold", True, "POST", 201, [
        P("user", "text", True), CUR, P("amount", "int", True, rule=_positive),
        P("expiresIn", "int", default=900, rule=_hold_seconds), P("requestId", "text"),
        P("allowOverdraft", "bool", default=False), P("metadata", "data")]),
    Op("captureHold", True, "POST", 200, [
        P("id", "text", True), P("amount", "int", rule=_positive), P("model", "text", default=""), P("notes", "text"),
        P("metadata", "data")]),
    Op("releaseHold", True, "POST", 200, [P("id", "text", True)]),
    Op("getHold", False, "GET", 200, [P("id", "text", True)]),
    Op("listHolds", False, "GET", 200, [
        P("user", "text"), P("status", "enum", values=HOLD_STATUSES), LIMIT, AFTER]),
    Op("listTransactions", False, "GET", 200, [
        P("user", "text", True), OPT_CUR, P("type", "enum", values=TX_TYPES), P("tag", "text"),
        P("createdAfter", "text", rule=_time("invalid {name}")), P("createdBefore", "text", rule=_time("invalid {name}")),
        LIMIT, AFTER]),
    Op("listAccounts", False, "GET", 200, [CUR, P("maxAvailable", "int"), LIMIT, AFTER]),
    Op("listCreditTransactions", False, "GET", 200, [P("userId", "text", True), P("grantId", "text"), LIMIT, AFTER]),
]}

EVENT_FIELDS = ("meterId", "userId", "value", "timestamp", "idempotency", "dimensions")
TIER_FIELDS = ("upTo", "price", "flat")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_int(name: str, v: Any, query: bool) -> int:
    if query and isinstance(v, str) and re.fullmatch(r"-?\d+", v):
        v = int(v)
    if not _is_int(v):
        raise Refusal("invalid_params", f"{name} must be an integer", name)
    if not INT64_MIN <= v <= INT64_MAX:
        raise Refusal("invalid_params", f"{name} is out of range", name)
    return v


def validate(op: Op, raw: dict[str, Any], query: bool) -> dict[str, Any]:
    """The params as the operation sees them (defaults applied, currencies lower-cased), or the
    first failure: an undeclared name first (nested ones as paths), then each parameter in its
    declared order. `query`: sent in a REST query string (values are text)."""
    declared = {p.name for p in op.params}
    for name, v in raw.items():
        if name not in declared:
            raise Refusal("invalid_params", f"unknown parameter: {name}", name)
        kind = next(p.kind for p in op.params if p.name == name)
        if kind in ("events", "tiers") and isinstance(v, list):
            fields = EVENT_FIELDS if kind == "events" else TIER_FIELDS
            for i, item in enumerate(v):
                if isinstance(item, dict):
                    for k in item:
                        if k not in fields:
                            path = f"{name}[{i}].{k}"
                            raise Refusal("invalid_params", f"unknown parameter: {path}", path)
    out: dict[str, Any] = {}
    for p in op.params:
        v = raw.get(p.name)
        absent = v is None or (v == "" and p.kind in ("text", "enum"))
        if absent and p.kind == "events":
            raise Refusal("invalid_params", "at least one event is required", p.name)
        if absent:
            if p.required:
                words = f"{p.name} query parameter is required" if query else f"{p.name} is required"
                raise Refusal("invalid_params", words, p.name)
            if p.default is not ABSENT:
                out[p.name] = json.loads(json.dumps(p.default))
            continue
        if p.kind in ("text", "enum") and not query and not isinstance(v, str):
            raise Refusal("invalid_params", f"{p.name} must be a string", p.name)
        if p.kind == "text" and len(v) > (bound := TEXT_BOUNDS.get(p.name, 255)):
            raise Refusal("invalid_params", f"{p.name} is too long: at most {bound}", p.name)
        if p.kind == "int":
            v = _check_int(p.name, v, query)
        elif p.kind == "bool":
            if not isinstance(v, bool):
                raise Refusal("invalid_params", f"{p.name} must be a boolean", p.name)
        elif p.kind == "list":
            if not isinstance(v, list):
                raise Refusal("invalid_params", f"{p.name} must be a list", p.name)
            for i, item in enumerate(v):
                if not isinstance(item, str):
                    raise Refusal("invalid_params", "must be a string", f"{p.name}[{i}]")
        elif p.kind == "enum":
            if v not in p.values:
                raise Refusal("invalid_params", f"{p.name} must be one of", p.name)
        elif p.kind == "events":
            v = _validate_events(v)
        elif p.kind == "tiers":
            v = _validate_tiers(v)
        if p.rule is not None:
            p.rule(p.name, v)
        if p is CUR or p is OPT_CUR:
            v = v.lower()
        out[p.name] = v
    return out


def _validate_events(v: Any) -> list[dict[str, Any]]:
    if not isinstance(v, list):
        raise Refusal("invalid_params", "events must be a list", "events")
    if not v:
        raise Refusal("invalid_params", "at least one event is required", "events")
    if len(v) > 100:
        raise Refusal("invalid_params", "maximum 100 events per batch", "events")
    out = []
    for i, e in enumerate(v):
        if not isinstance(e, dict):
            raise Refusal("invalid_params", "must be an object", f"events[{i}]")
        if e.get("meterId") in (None, ""):
            raise Refusal("invalid_params", "meterId is required for each event", f"events[{i}].meterId")
        if e.get("userId") in (None, ""):
            raise Refusal("invalid_params", "userId is required for each event", f"events[{i}].userId")
        value = e.get("value")
        value = 0 if value is None else _check_int(f"events[{i}].value", value, False)
        ts = e.get("timestamp")
        if ts not in (None, "") and parse_time(ts) is None:
            raise Refusal("invalid_params", "invalid timestamp", f"events[{i}].timestamp")
        key = e.get("idempotency")
        out.append({"meterId": e["meterId"], "userId": e["userId"], "value": value,
                    "timestamp": ts or None, "idempotency": key or None, "dimensions": e.get("dimensions")})
    return out


def _validate_tiers(v: Any) -> list[dict[str, int]]:
    if not isinstance(v, list):
        raise Refusal("invalid_params", "tiers must be a list", "tiers")
    out = []
    for i, t in enumerate(v):
        if not isinstance(t, dict):
            raise Refusal("invalid_params", "must be an object", f"tiers[{i}]")
        out.append({f: (0 if t.get(f) is None else _check_int(f"tiers[{i}].{f}", t[f], False)) for f in TIER_FIELDS})
    return out


def fingerprint(method: str, params: dict[str, Any]) -> str:
    return method + json.dumps(params, sort_keys=True)


# -- state ------------------------------------------------------------------------------------

@dataclass
class Row:
    id: str
    user: str
    currency: str
    type: str
    amount: int
    tags: str
    notes: str
    metadata: Any
    created_at: int
    key_id: str
    seq: int
    expires_at: int | None = None
    original: str | None = None
    hold_id: str | None = None

    def result(self) -> dict[str, Any]:
        r = {"transactionId": self.id, "user": self.user, "currency": self.currency, "type": self.type,
             "amount": self.amount, "tags": self.tags, "notes": self.notes, "metadata": self.metadata,
             "createdAt": iso(self.created_at), "keyId": self.key_id}
        if self.expires_at is not None:
            r["expiresAt"] = iso(self.expires_at)
        if self.original is not None:
            r["originalTransactionId"] = self.original
        if self.hold_id is not None:
            r["holdId"] = self.hold_id
        return r

    @property
    def tag_list(self) -> list[str]:
        return self.tags.split(",") if self.tags else []


@dataclass
class Lot:
    """An expiring deposit's unspent money."""
    row: Row
    remaining: int
    settled: bool = False            # forfeited (or nothing left to forfeit) once expired


@dataclass
class Hold:
    id: str
    user: str
    currency: str
    amount: int
    status: str
    expires_at: int
    created_at: int
    seq: int
    request_id: str | None
    metadata: Any
    captured: int | None = None
    tx_id: str | None = None
    settled_at: int | None = None

    def status_at(self, now: int) -> str:
        return "expired" if self.status == "pending" and now >= self.expires_at else self.status

    def result(self, now: int) -> dict[str, Any]:
        status = self.status_at(now)
        r: dict[str, Any] = {"holdId": self.id, "user": self.user, "currency": self.currency, "amount": self.amount,
                             "status": status, "expiresAt": iso(self.expires_at), "createdAt": iso(self.created_at)}
        if self.captured is not None:
            r["capturedAmount"] = self.captured
            r["transactionId"] = self.tx_id
        if self.request_id is not None:
            r["requestId"] = self.request_id
        if self.metadata is not ABSENT:
            r["metadata"] = self.metadata
        if status == "expired":
            r["settledAt"] = iso(self.expires_at)
        elif self.settled_at is not None:
            r["settledAt"] = iso(self.settled_at)
        return r


@dataclass
class Meter:
    id: str
    name: str
    event_name: str
    aggregation: str
    currency: str
    dimensions: list[str]
    created_at: int

    def result(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "eventName": self.event_name, "aggregationType": self.aggregation,
                "currency": self.currency, "dimensions": list(self.dimensions), "createdAt": iso(self.created_at)}


@dataclass
class Event:
    id: str
    meter: str
    user: str
    value: int
    ts: int
    seq: int


@dataclass
class Grant:
    id: str
    user: str
    name: str
    amount: int
    remaining: int
    currency: str
    priority: int
    effective_at: int
    expires_at: int | None
    eligibility: list[str]
    tags: str
    voided: bool
    created_at: int
    seq: int

    def active(self, now: int) -> bool:
        return (not self.voided and self.remaining > 0 and self.effective_at <= now
                and (self.expires_at is None or now < self.expires_at))

    def eligible(self, meter: str | None) -> bool:
        return not self.eligibility if meter is None else (not self.eligibility or meter in self.eligibility)

    def result(self, now: int) -> dict[str, Any]:
        r = {"id": self.id, "userId": self.user, "name": self.name, "amountCents": self.amount,
             "remainingCents": self.remaining, "currency": self.currency, "priority": self.priority,
             "effectiveAt": iso(self.effective_at), "eligibility": list(self.eligibility), "tags": self.tags,
             "voided": self.voided, "active": self.active(now), "createdAt": iso(self.created_at)}
        if self.expires_at is not None:
            r["expiresAt"] = iso(self.expires_at)
        return r


@dataclass
class CreditRow:
    id: str
    grant: Grant
    type: str
    amount: int
    after: int
    created_at: int
    key_id: str
    seq: int
    burn_id: str | None = None
    meter: str | None = None

    def result(self) -> dict[str, Any]:
        r = {"id": self.id, "grantId": self.grant.id, "userId": self.grant.user, "currency": self.grant.currency,
             "type": self.type, "amount": self.amount, "remainingAfter": self.after,
             "createdAt": iso(self.created_at), "keyId": self.key_id}
        if self.burn_id is not None:
            r["burnId"] = self.burn_id
        if self.meter is not None:
            r["meterId"] = self.meter
        return r


@dataclass
class Rule:
    id: str
    meter: str
    plan: str
    model: str
    currency: str
    unit_price: int
    tiers: list[dict[str, int]]
    created_at: int
    seq: int

    def result(self) -> dict[str, Any]:
        return {"id": self.id, "meterId": self.meter, "planId": self.plan, "model": self.model,
                "currency": self.currency, "unitPrice": self.unit_price, "tiers": [dict(t) for t in self.tiers],
                "createdAt": iso(self.created_at)}


@dataclass
class Tenant:
    rows: list[Row] = field(default_factory=list)
    row_by_id: dict[str, Row] = field(default_factory=dict)
    lots: list[Lot] = field(default_factory=list)
    refunded: dict[str, int] = field(default_factory=dict)
    usage_by_request: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    starter: dict[str, dict[str, Any]] = field(default_factory=dict)
    holds: list[Hold] = field(default_factory=list)
    hold_by_id: dict[str, Hold] = field(default_factory=dict)
    hold_by_request: dict[tuple[str, str], Hold] = field(default_factory=dict)
    meters: list[Meter] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    event_by_key: dict[str, str] = field(default_factory=dict)
    grants: list[Grant] = field(default_factory=list)
    journal: list[CreditRow] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    idempotency: dict[str, tuple[str, Answer]] = field(default_factory=dict)

    def meter(self, mid: Any) -> Meter | None:
        return next((m for m in self.meters if m.id == mid), None)

    def grant(self, gid: Any) -> Grant | None:
        return next((g for g in self.grants if g.id == gid), None)


@dataclass
class Call:
    """Who calls, and when."""
    tenant: Tenant
    key_id: str
    now: int


# -- the model --------------------------------------------------------------------------------

class Model:
    VARIANTS = ("burn_order_reversed", "refunds_unbounded")

    def __init__(self, variant: str | None = None):
        assert variant is None or variant in self.VARIANTS, variant
        self.variant = variant
        self.tenants: dict[Any, Tenant] = {}
        self.reached: dict[str, int] = {}    # outcomes reached (the driver's coverage gate)
        self._n = 0
        self._seq = 0

    # ---- plumbing

    def tenant(self, name: Any) -> Tenant:
        return self.tenants.setdefault(name, Tenant())

    def hit(self, outcome: str) -> None:
        self.reached[outcome] = self.reached.get(outcome, 0) + 1

    def new_id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}#{self._n}"

    def seq(self) -> int:
        self._seq += 1
        return self._seq

    def call(self, tenant: Any, scope: str, key_id: str, method: str, raw: dict[str, Any], now: int,
             idempotency_key: str | None = None, query: bool = False) -> Answer:
        """One call of `method` with the params as sent (`query`: in a REST query string)."""
        op = OPS[method]
        try:
            if op.mutates and scope != "admin":
                raise Refusal("forbidden", f"this API key is read-only and billing.{method} changes data", None)
            params = validate(op, raw, query)
            if op.mutates and idempotency_key is not None and len(idempotency_key) > 255:   # OPEN: after the params
                raise Refusal("invalid_request", "idempotency key must be at most 255 characters", "idempotencyKey")
            t = self.tenant(tenant)
            if op.mutates and idempotency_key is not None:
                fp = fingerprint(method, params)
                stored = t.idempotency.get(idempotency_key)
                if stored is not None:
                    if stored[1].ok and stored[1].result.get("status") == "skipped":
                        self.hit("a skipped usage's key used again")
                    if stored[0] == fp:
                        self.hit("idempotency replay")
                        return stored[1]
                    self.hit("idempotency conflict")
                    raise Refusal("conflict", "idempotency key was already used with different parameters", "idempotencyKey")
            status, result = getattr(self, "_" + method)(Call(t, key_id, now), params)
            answer = Answer(status, result)
            if op.mutates and idempotency_key is not None:
                t.idempotency[idempotency_key] = (fp, answer)
                if method == "recordUsage" and result.get("status") == "skipped":
                    self.hit("skipped usage claims its idempotency key")
            return answer
        except Refusal as r:
            self.hit(f"error {r.kind}")
            self.hit(f"{method} refused: {r.message}")
            return Answer(ERROR_TABLE[r.kind][0], error=r)

    # ---- money

    def _write_row(self, c: Call, user: str, currency: str, type: str, amount: int, tags: str, notes: str,
                   metadata: Any, key_id: str | None = None, **extra: Any) -> Row:
        row = Row(self.new_id("tx_"), user, currency, type, amount, tags, notes, metadata, c.now,
                  key_id or c.key_id, self.seq(), **extra)
        c.tenant.rows.append(row)
        c.tenant.row_by_id[row.id] = row
        return row

    def _forfeit(self, c: Call, user: str | None, currency: str | None, key_id: str | None = None) -> None:
        """Expired lots of `user` and `currency` (None: every one) with money left are forfeited:
        one `withdraw` tagged credit-expired each, earliest expiry first. OPEN: the sweep's order
        between accounts (rows of one instant); read as account by account, currencies in order."""
        due = [lot for lot in c.tenant.lots if not lot.settled and lot.row.expires_at <= c.now  # type: ignore[operator]
               and (user is None or (lot.row.user, lot.row.currency) == (user, currency))]
        for lot in sorted(due, key=lambda lot: (lot.row.user.encode(), lot.row.currency, lot.row.expires_at, lot.row.seq)):
            lot.settled = True
            if lot.remaining > 0:
                d = lot.row
                self._write_row(c, d.user, d.currency, "withdraw", lot.remaining, "credit-expired",
                                f"Expired credit: {lot.remaining} cents {d.currency} (deposit {d.id})",
                                {"expiredTransactionId": d.id, "expiredAt": iso(d.expires_at)},  # type: ignore[arg-type]
                                key_id=key_id)
                self.hit("forfeit by the sweep" if key_id == "system" else "forfeit by a write")
                lot.remaining = 0

    def _spend(self, c: Call, user: str, currency: str, amount: int) -> None:
        """A withdrawal spends expiring money first, earliest expiry first."""
        live = [lot for lot in c.tenant.lots if not lot.settled and lot.row.expires_at > c.now  # type: ignore[operator]
                and (lot.row.user, lot.row.currency) == (user, currency) and lot.remaining > 0]
        for lot in sorted(live, key=lambda lot: (lot.row.expires_at, lot.row.seq)):
            take = min(lot.remaining, amount)
            lot.remaining -= take
            amount -= take
            if take:
                self.hit("usage spends expiring money")
            if not amount:
                break

    def _in_range(self, c: Call, user: str, currency: str, delta: int) -> None:
        """A write may not take the stored balance (the sum of the ledger rows) outside int64,
        as it stands after the write's own forfeits of expired credit (which come first)."""
        stored = sum((r.amount if r.type == "deposit" else -r.amount) for r in c.tenant.rows
                     if (r.user, r.currency) == (user, currency))
        stored -= sum(lot.remaining for lot in c.tenant.lots if not lot.settled and lot.row.expires_at <= c.now  # type: ignore[operator]
                      and (lot.row.user, lot.row.currency) == (user, currency))
        if not INT64_MIN <= stored + delta <= INT64_MAX:
            self.hit("balance beyond int64 refused")
            raise Refusal("invalid_params", "amount would take the balance outside the signed 64-bit range", "amount")

    def _credit_in_range(self, c: Call, user: str, currency: str, amount: int) -> None:
        """An expiring deposit may not take the account's unspent expiring credit (its own lot
        included, the expired lots it forfeits not) outside int64: every sum of it stays one."""
        credit = sum(lot.remaining for lot in c.tenant.lots if not lot.settled and lot.row.expires_at > c.now  # type: ignore[operator]
                     and (lot.row.user, lot.row.currency) == (user, currency))
        if credit + amount > INT64_MAX:
            self.hit("expiring credit beyond int64 refused")
            raise Refusal("invalid_params", "amount would take the user's unspent expiring credit outside the signed 64-bit range",
                          "amount")

    def _withdraw(self, c: Call, user: str, currency: str, amount: int, tags: str, notes: str, metadata: Any,
                  **extra: Any) -> Row:
        self._in_range(c, user, currency, -amount)
        self._spend(c, user, currency, amount)
        row = self._write_row(c, user, currency, "withdraw", amount, tags, notes, metadata, **extra)
        self._forfeit(c, user, currency)
        return row

    def _deposit_row(self, c: Call, user: str, currency: str, amount: int, tags: str, notes: str, metadata: Any,
                     expires_at: int | None = None, **extra: Any) -> Row:
        self._in_range(c, user, currency, amount)
        if expires_at is not None:
            self._credit_in_range(c, user, currency, amount)
        row = self._write_row(c, user, currency, "deposit", amount, tags, notes, metadata, expires_at=expires_at, **extra)
        if expires_at is not None:
            c.tenant.lots.append(Lot(row, amount))
        self._forfeit(c, user, currency)
        return row

    def balance_of(self, t: Tenant, user: str, currency: str, now: int) -> tuple[int, int, int]:
        balance = sum((r.amount if r.type == "deposit" else -r.amount) for r in t.rows
                      if (r.user, r.currency) == (user, currency))
        balance -= sum(lot.remaining for lot in t.lots if not lot.settled and lot.row.expires_at <= now  # type: ignore[operator]
                       and (lot.row.user, lot.row.currency) == (user, currency))
        holds = sum(h.amount for h in t.holds if (h.user, h.currency) == (user, currency) and h.status_at(now) == "pending")
        if balance - holds < INT64_MIN:
            self.hit("balance - holds beyond int64")
        return balance, holds, max(balance - holds, 0)

    def _currencies_of(self, t: Tenant, user: str, now: int) -> list[str]:
        held = {h.currency for h in t.holds if h.user == user and h.status_at(now) == "pending"}
        return sorted({r.currency for r in t.rows if r.user == user} | held)

    def _getBalance(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        b, h, a = self.balance_of(c.tenant, p["user"], p["currency"], c.now)
        return 200, {"user": p["user"], "currency": p["currency"], "balance": b, "holds": h, "available": a}

    def _getBalanceAll(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        out = []
        for cur in self._currencies_of(c.tenant, p["user"], c.now):
            b, h, a = self.balance_of(c.tenant, p["user"], cur, c.now)
            out.append({"currency": cur, "balance": b, "holds": h, "available": a})
        return 200, {"user": p["user"], "balances": out}

    def _page(self, listing: list[Any], id_of: Callable[[Any], str], keep: Callable[[Any], bool], p: dict[str, Any],
              missing: str) -> tuple[list[Any], bool]:
        """A page of `listing` (already in its order) after the row named startingAfter (a
        position in the whole listing), of the rows `keep` keeps."""
        after = p.get("startingAfter")
        if after is not None:
            ids = [id_of(x) for x in listing]
            if after not in ids:
                self.hit("paging from an unknown row")
                raise Refusal("not_found", missing, "startingAfter")
            listing = listing[ids.index(after) + 1:]
            self.hit("paging from a row")
        rows = [x for x in listing if keep(x)]
        page = rows[:p["limit"]]
        if len(rows) > len(page):
            self.hit("page with more after it")
        return page, len(rows) > len(page)

    def _getUsage(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        listing = [r for r in reversed(c.tenant.rows) if r.user == p["user"] and r.type == "withdraw"
                   and "api-usage" in r.tag_list]
        cur = p.get("currency")
        page, more = self._page(listing, lambda r: r.id, lambda r: cur is None or r.currency == cur, p,
                                "transaction not found")
        usage = [{"transactionId": r.id, "amount": r.amount, "currency": r.currency, "notes": r.notes,
                  "metadata": r.metadata, "createdAt": iso(r.created_at)} for r in page]
        return 200, {"user": p["user"], "count": len(usage), "hasMore": more, "usage": usage}

    def _recordUsage(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        user, rid = p["user"], p.get("requestId")
        if p["amount"] <= 0:
            self.hit("usage skipped")
            return 200, {"user": user, "amount": 0, "status": "skipped"}
        if rid is not None and (user, rid) in c.tenant.usage_by_request:
            self.hit("usage requestId repeat")
            return 201, c.tenant.usage_by_request[(user, rid)]
        meta = {k: p[k] for k in ("model", "provider", "promptTokens", "completionTokens", "totalTokens")}
        meta |= {"requestId": rid, "premium": p["premium"], "stream": p["stream"], "status": p["status"],
                 "clientIp": p["clientIp"]}
        row = self._withdraw(c, user, p["currency"], p["amount"], "api-usage",
                             f"API usage: {p['model']} ({p['totalTokens']} tokens)", meta)
        self._usage_event(c, user, p["amount"])
        result = {"user": user, "amount": p["amount"], "transactionId": row.id, "currency": p["currency"], "type": "withdraw"}
        if rid is not None:
            c.tenant.usage_by_request[(user, rid)] = result
        return 201, result

    def _usage_event(self, c: Call, user: str, value: int) -> None:
        """A new usage withdrawal's meter event: keyed by its ledger row, never by a caller's
        idempotency key, so no caller's event can suppress it (a retry wrote no new row)."""
        meter = next((m for m in c.tenant.meters if m.event_name == "api-usage"), None)
        if meter is None:
            return
        ev = Event(self.new_id("evt_"), meter.id, user, value, c.now, self.seq())
        c.tenant.events.append(ev)
        self.hit("api-usage meter event")

    def _deposit(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        days = p["expiresIn"]
        expires = c.now + days * DAY if days > 0 else None
        notes = p.get("notes", f"Deposit: {p['amount']} cents {p['currency']}")
        meta = p.get("metadata", {})
        row = self._deposit_row(c, p["user"], p["currency"], p["amount"], p["tags"], notes, meta, expires)
        r = {"transactionId": row.id, "user": p["user"], "amount": p["amount"], "currency": p["currency"],
             "type": "deposit", "tags": p["tags"], "metadata": meta}
        if expires is not None:
            r["expiresAt"] = iso(expires)
            self.hit("expiring deposit")
        return 201, r

    def _grantStarterCredit(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        user = p["user"]
        if user in c.tenant.starter:
            self.hit("starter credit repeat")
            return 201, c.tenant.starter[user]
        row = self._deposit_row(c, user, "usd", 500, "starter-credit", "Welcome credit: $5.00 USD (expires in 30 days)",
                                {"creditType": "starter", "expiryDays": 30}, c.now + 30 * DAY)
        r = {"transactionId": row.id, "user": user, "amount": 500, "currency": "usd", "type": "deposit",
             "tags": "starter-credit", "expiresAt": iso(row.expires_at)}  # type: ignore[arg-type]
        c.tenant.starter[user] = r
        return 201, r

    def _refund(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        orig = c.tenant.row_by_id.get(p["originalTransactionId"])
        if orig is None or (orig.user, orig.currency) != (p["user"], p["currency"]):
            self.hit("refund of an unknown original")
            raise Refusal("not_found", "original transaction not found", "originalTransactionId")
        if orig.type != "withdraw" or "credit-expired" in orig.tag_list:
            self.hit("refund of a forfeit refused" if orig.type == "withdraw" else "refund of a non-charge refused")
            raise Refusal("invalid_params", "only a charge can be refunded", "originalTransactionId")
        done = c.tenant.refunded.get(orig.id, 0)
        if done + p["amount"] > orig.amount and self.variant != "refunds_unbounded":
            self.hit("refund exceeding its original refused")
            raise Refusal("invalid_params", f"refund exceeds original: {orig.amount - done} of {orig.amount} cents left to refund",
                          "amount")
        notes = p.get("notes", f"Refund: {p['amount']} cents {p['currency']} (original tx: {orig.id})")
        row = self._deposit_row(c, p["user"], p["currency"], p["amount"], "refund", notes,
                                {"refundType": "billing-correction", "originalTransactionId": orig.id}, original=orig.id)
        c.tenant.refunded[orig.id] = done + p["amount"]
        if done + p["amount"] == orig.amount:
            self.hit("charge refunded in full")
        self.hit("refund of a capture" if orig.hold_id else "refund of a usage charge")
        return 201, {"transactionId": row.id, "user": p["user"], "amount": p["amount"], "currency": p["currency"],
                     "type": "deposit", "tags": "refund", "originalTransactionId": orig.id}

    def _listTransactions(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        listing = [r for r in reversed(c.tenant.rows) if r.user == p["user"]]
        after = parse_time(p["createdAfter"]) if "createdAfter" in p else None
        before = parse_time(p["createdBefore"], end=True) if "createdBefore" in p else None

        def keep(r: Row) -> bool:
            return ((p.get("currency") is None or r.currency == p["currency"])
                    and (p.get("type") is None or r.type == p["type"])
                    and (p.get("tag") is None or p["tag"] in r.tag_list)
                    and (after is None or r.created_at >= after) and (before is None or r.created_at < before))

        page, more = self._page(listing, lambda r: r.id, keep, p, "transaction not found")
        if len(page) < len([r for r in listing if keep(r)]) or any(k in p for k in ("type", "tag", "createdAfter")):
            self.hit("listTransactions filtered or paged")
        return 200, {"user": p["user"], "count": len(page), "hasMore": more, "transactions": [r.result() for r in page]}

    def _listAccounts(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        cur = p["currency"]
        users = {r.user for r in c.tenant.rows if r.currency == cur}
        users |= {h.user for h in c.tenant.holds if h.currency == cur and h.status_at(c.now) == "pending"}
        ordered = sorted(users, key=lambda u: u.encode())
        if p.get("startingAfter") is not None:
            ordered = [u for u in ordered if u.encode() > p["startingAfter"].encode()]
        accounts = []
        for u in ordered:
            b, h, a = self.balance_of(c.tenant, u, cur, c.now)
            if p.get("maxAvailable") is None or a <= p["maxAvailable"]:
                accounts.append({"user": u, "balance": b, "holds": h, "available": a})
        page = accounts[:p["limit"]]
        return 200, {"currency": cur, "count": len(page), "hasMore": len(accounts) > len(page), "accounts": page}

    # ---- holds

    def _hold(self, c: Call, hid: str) -> Hold:
        h = c.tenant.hold_by_id.get(hid)
        if h is None:
            raise Refusal("not_found", "hold not found", "id")
        return h

    def _createHold(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        user, cur, rid = p["user"], p["currency"], p.get("requestId")
        if rid is not None and (user, rid) in c.tenant.hold_by_request:
            self.hit("hold requestId repeat")
            return 201, c.tenant.hold_by_request[(user, rid)].result(c.now)
        _, held, available = self.balance_of(c.tenant, user, cur, c.now)
        if held + p["amount"] > INT64_MAX:
            self.hit("holds beyond int64 refused")
            raise Refusal("invalid_params", "amount would take the user's holds outside the signed 64-bit range", "amount")
        if p["amount"] > available:
            if not p["allowOverdraft"]:
                self.hit("hold refused: insufficient funds")
                raise Refusal("insufficient_funds", f"insufficient funds: {available} cents {cur} available, {p['amount']} requested",
                              "amount")
            self.hit("hold beyond available with allowOverdraft")
        h = Hold(self.new_id("hold_"), user, cur, p["amount"], "pending", c.now + p["expiresIn"] * SECOND, c.now,
                 self.seq(), rid, p.get("metadata", ABSENT))
        c.tenant.holds.append(h)
        c.tenant.hold_by_id[h.id] = h
        if rid is not None:
            c.tenant.hold_by_request[(user, rid)] = h
        return 201, h.result(c.now)

    def _settle_check(self, c: Call, h: Hold) -> None:
        status = h.status_at(c.now)
        if status != "pending":
            self.hit(f"settling a hold {status} refused")
            raise Refusal("conflict", f"hold is not pending: it is {status}", "id")

    def _captureHold(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        h = self._hold(c, p["id"])
        self._settle_check(c, h)
        amount = p.get("amount", h.amount)
        if amount > h.amount:
            self.hit("capture beyond the hold refused")
            raise Refusal("invalid_params", f"capture exceeds hold: {amount} cents asked, {h.amount} held", "amount")
        self.hit("partial capture" if amount < h.amount else "full capture")
        given = p.get("metadata", ABSENT)
        meta = {} if given is ABSENT else (dict(given) if isinstance(given, dict) else {"metadata": given})
        meta |= {"holdId": h.id, "model": p["model"]}
        if h.request_id is not None:
            meta["requestId"] = h.request_id
        notes = p.get("notes", f"API usage: {p['model']} (hold {h.id})")
        row = self._withdraw(c, h.user, h.currency, amount, "api-usage", notes, meta, hold_id=h.id)
        self._usage_event(c, h.user, amount)
        h.status, h.captured, h.tx_id, h.settled_at = "captured", amount, row.id, c.now
        return 200, h.result(c.now)

    def _releaseHold(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        h = self._hold(c, p["id"])
        self._settle_check(c, h)
        h.status, h.settled_at = "released", c.now
        self.hit("hold released")
        return 200, h.result(c.now)

    def _getHold(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        h = self._hold(c, p["id"])
        if h.status_at(c.now) == "expired":
            self.hit("hold expired by time")
        return 200, h.result(c.now)

    def _listHolds(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        user, status = p.get("user"), p.get("status")
        listing = [h for h in reversed(c.tenant.holds) if user is None or h.user == user]
        page, more = self._page(listing, lambda h: h.id, lambda h: status is None or h.status_at(c.now) == status, p,
                                "hold not found")
        return 200, {"holds": [h.result(c.now) for h in page], "count": len(page), "hasMore": more}

    # ---- meters

    def _meter(self, c: Call, mid: str, param: str) -> Meter:
        m = c.tenant.meter(mid)
        if m is None:
            self.hit("unknown meter")
            raise Refusal("not_found", "meter not found", param)
        return m

    def _createMeter(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        if any(m.event_name == p["eventName"] for m in c.tenant.meters):
            self.hit("meter eventName taken")
            # OPEN: api.md says `a meter with eventName <eventName> already exists`; the name comes quoted
            raise Refusal("conflict", f"a meter with eventName '{p['eventName']}' already exists", "eventName")
        m = Meter(self.new_id("mtr_"), p["name"], p["eventName"], p["aggregationType"], p["currency"],
                  list(p["dimensions"]), c.now)
        c.tenant.meters.append(m)
        return 201, m.result()

    def _listMeters(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        page, more = self._page(c.tenant.meters, lambda m: m.id, lambda m: True, p, "meter not found")
        return 200, {"meters": [m.result() for m in page], "count": len(page), "hasMore": more}

    def _getMeter(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        return 200, self._meter(c, p["id"], "id").result()

    def _recordMeterEvents(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        events = p["events"]
        for i, e in enumerate(events):
            self._meter(c, e["meterId"], f"events[{i}].meterId")
        out = []
        for e in events:
            key = e["idempotency"]
            if key is not None and key in c.tenant.event_by_key:
                out.append({"id": c.tenant.event_by_key[key], "status": "duplicate"})
                self.hit("duplicate meter event")
                continue
            ts = c.now if e["timestamp"] is None else parse_time(e["timestamp"])
            ev = Event(self.new_id("evt_"), e["meterId"], e["userId"], e["value"], ts, self.seq())  # type: ignore[arg-type]
            c.tenant.events.append(ev)
            if key is not None:
                c.tenant.event_by_key[key] = ev.id
            out.append({"id": ev.id, "status": "created"})
        if len({o["id"] for o in out}) < len(out):
            self.hit("duplicate meter event within one batch")
        return 201, {"events": out, "count": len(out)}

    def aggregate(self, m: Meter, events: list[Event]) -> int:
        if not events:
            return 0
        values = [e.value for e in events]
        if m.aggregation == "sum":
            if not INT64_MIN <= sum(values) <= INT64_MAX:
                self.hit("meter sum beyond int64 refused")
                raise Refusal("invalid_params", "the sum of this meter's values is beyond the signed 64-bit range", None)
            return sum(values)
        if m.aggregation == "count":
            return len(values)
        if m.aggregation == "last":   # the latest timestamp; equal times: the last written
            return max(events, key=lambda e: (e.ts, e.seq)).value
        if m.aggregation == "max":
            return max(values)
        if m.aggregation == "min":
            return min(values)
        return len(set(values))

    def _events_in(self, c: Call, meter: str, user: str | None, start: str | None, end: str | None) -> list[Event]:
        lo = None if start is None else parse_time(start)
        hi = None if end is None else parse_time(end, end=True)
        return [e for e in c.tenant.events if e.meter == meter and (user is None or e.user == user)
                and (lo is None or e.ts >= lo) and (hi is None or e.ts < hi)]

    def _getMeterEventsSummary(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        m = self._meter(c, p["meterId"], "meterId")
        events = self._events_in(c, m.id, p.get("userId"), p.get("periodStart"), p.get("periodEnd"))
        if events:
            self.hit(f"summary of a {m.aggregation} meter")
        return 200, {"meterId": m.id, "meterName": m.name, "userId": p.get("userId", ""), "aggregationType": m.aggregation,
                     "value": self.aggregate(m, events), "eventCount": len(events),
                     "periodStart": p.get("periodStart", ""), "periodEnd": p.get("periodEnd", "")}

    # ---- credit grants

    def _expire_grants(self, c: Call, user: str | None, key_id: str | None = None) -> None:
        """Journal the expiry of `user`'s grants (None: everyone's) that expired with cents left."""
        due = [g for g in c.tenant.grants if (user is None or g.user == user) and not g.voided and g.remaining > 0
               and g.expires_at is not None and g.expires_at <= c.now]
        for g in sorted(due, key=lambda g: (g.expires_at, g.seq)):
            self._journal(c, g, "expire", -g.remaining, key_id=key_id)
            self.hit("expire row by the sweep" if key_id == "system" else "expire row by a write")

    def _journal(self, c: Call, g: Grant, type: str, amount: int, key_id: str | None = None, **extra: Any) -> None:
        g.remaining += amount
        c.tenant.journal.append(CreditRow(self.new_id("ct_"), g, type, amount, g.remaining, c.now,
                                          key_id or c.key_id, self.seq(), **extra))

    def _createCreditGrant(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        for i, mid in enumerate(p["eligibility"]):
            self._meter(c, mid, f"eligibility[{i}]")
        self._expire_grants(c, p["userId"])
        d = parse_go_duration(p["expiresIn"]) if "expiresIn" in p else None
        g = Grant(self.new_id("cg_"), p["userId"], p["name"], p["amountCents"], 0, p["currency"], p["priority"], c.now,
                  None if d is None else c.now + d, list(p["eligibility"]), p["tags"], False, c.now, self.seq())
        c.tenant.grants.append(g)
        self._journal(c, g, "grant", g.amount)
        return 201, g.result(c.now)

    def _listCreditGrants(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        grants = [g.result(c.now) for g in c.tenant.grants if g.user == p["userId"]]
        return 200, {"grants": grants, "count": len(grants)}

    def _getCreditBalance(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        sums: dict[str, int] = {}
        for g in c.tenant.grants:
            if g.user == p["userId"] and g.active(c.now):
                sums[g.currency] = sums.get(g.currency, 0) + g.remaining
        return 200, {"userId": p["userId"], "balances": [{"currency": k, "available": sums[k]} for k in sorted(sums)]}

    def _voidCreditGrant(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        g = c.tenant.grant(p["id"])
        if g is None:
            raise Refusal("not_found", "credit grant not found", "id")
        if g.voided:
            self.hit("void of a voided grant refused")
            raise Refusal("invalid_params", "grant is already voided", "id")
        self._expire_grants(c, g.user)
        self._journal(c, g, "void", -g.remaining)
        g.voided = True
        self.hit("grant voided")
        return 200, {"id": g.id, "voided": True}

    def burn_order(self, grants: list[Grant]) -> list[Grant]:
        """Priority ascending, then earliest expiry, never-expiring last, then creation order."""
        order = sorted(grants, key=lambda g: (g.priority, g.expires_at is None, g.expires_at or 0, g.seq))
        if self.variant == "burn_order_reversed":
            order = sorted(grants, key=lambda g: (-g.priority, g.expires_at is None, g.expires_at or 0, g.seq))
        return order

    def _burnCredits(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        meter = p.get("meterId")
        if meter is not None:
            self._meter(c, meter, "meterId")
        self._expire_grants(c, p["userId"])
        usable = [g for g in c.tenant.grants if g.user == p["userId"] and g.currency == p["currency"]
                  and g.active(c.now) and g.eligible(meter)]
        left, touched = p["amount"], []
        burn_id = None
        for g in self.burn_order(usable):
            if not left:
                break
            take = min(g.remaining, left)
            burn_id = burn_id or self.new_id("burn_")
            self._journal(c, g, "burn", -take, burn_id=burn_id, meter=meter)
            left -= take
            touched.append({"id": g.id, "burned": take, "remainingCents": g.remaining})
        burned = p["amount"] - left
        if len(touched) > 1:
            self.hit("burn across several grants")
        if left and touched:
            self.hit("burn with overage")
        if not touched:
            self.hit("burn of nothing")
        if meter is not None and any(c.tenant.grant(t["id"]).eligibility for t in touched):  # type: ignore[union-attr]
            self.hit("burn of a meter-restricted grant")
        r = {"userId": p["userId"], "currency": p["currency"], "requested": p["amount"], "burned": burned,
             "overage": left, "grants": touched}
        if burn_id is not None:
            r["burnId"] = burn_id
        return 200, r

    def _listCreditTransactions(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        gid = p.get("grantId")
        if gid is not None:
            g = c.tenant.grant(gid)
            if g is None or g.user != p["userId"]:
                raise Refusal("not_found", "credit grant not found", "grantId")
        listing = [r for r in reversed(c.tenant.journal) if r.grant.user == p["userId"] and (gid is None or r.grant.id == gid)]
        page, more = self._page(listing, lambda r: r.id, lambda r: True, p, "not found")
        return 200, {"userId": p["userId"], "count": len(page), "hasMore": more, "transactions": [r.result() for r in page]}

    # ---- pricing and the invoice preview

    def _createPricingRule(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        model, tiers = p["model"], p["tiers"]
        if p["unitPrice"] < 0:
            raise Refusal("invalid_params", "unitPrice must not be negative", "unitPrice")
        if model == "per_unit" and tiers:
            raise Refusal("invalid_params", "tiers are only for the tiered and volume models", "tiers")
        if model != "per_unit" and not tiers:
            raise Refusal("invalid_params", f"tiers are required for the {model} model", "tiers")
        for i, t in enumerate(tiers):
            if min(t.values()) < 0:
                raise Refusal("invalid_params", f"tiers[{i}]: upTo, price and flat must not be negative", f"tiers[{i}]")
        for i, t in enumerate(tiers[:-1]):
            if t["upTo"] == 0:
                raise Refusal("invalid_params", f"tiers[{i}]: only the last tier may be unbounded (upTo 0)", f"tiers[{i}].upTo")
        if tiers and tiers[-1]["upTo"] != 0:
            raise Refusal("invalid_params", "the last tier must be unbounded (upTo 0)", f"tiers[{len(tiers) - 1}].upTo")
        for i in range(1, len(tiers) - 1):
            if tiers[i]["upTo"] <= tiers[i - 1]["upTo"]:
                raise Refusal("invalid_params", f"tiers[{i}]: upTo must be greater than the previous tier's "
                              f"({tiers[i - 1]['upTo']}): tiers out of order", f"tiers[{i}].upTo")
        self._meter(c, p["meterId"], "meterId")   # after the parameters' own rules
        rule = Rule(self.new_id("pr_"), p["meterId"], p["planId"], model, p["currency"], p["unitPrice"],
                    [dict(t) for t in tiers], c.now, self.seq())
        c.tenant.rules.append(rule)
        return 201, rule.result()

    def _listPricingRules(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        if p.get("meterId") is not None:
            self._meter(c, p["meterId"], "meterId")
        rules = [r.result() for r in c.tenant.rules if p.get("meterId") in (None, r.meter) and p.get("planId") in (None, r.plan)]
        return 200, {"rules": rules, "count": len(rules)}

    def _deletePricingRule(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        rule = next((r for r in c.tenant.rules if r.id == p["id"]), None)
        if rule is None:
            raise Refusal("not_found", "pricing rule not found", "id")
        c.tenant.rules.remove(rule)
        return 200, {"id": rule.id, "deleted": True}

    def rule_for(self, t: Tenant, meter: str, currency: str, plan: str | None) -> Rule | None:
        """The newest rule of the requested plan, else the newest plan-less one (OPEN: without a
        planId only plan-less rules price)."""
        rules = [r for r in t.rules if r.meter == meter and r.currency == currency]
        for wanted in ([plan] if plan else []) + [""]:
            found = [r for r in rules if r.plan == wanted]
            if found:
                if wanted:
                    self.hit("a plan's rule wins over a plan-less one" if any(r.plan == "" for r in rules)
                             else "a plan's rule prices")
                return max(found, key=lambda r: r.seq)
        return None

    @staticmethod
    def price(rule: Rule, q: int) -> tuple[int, int]:
        """(unitCost, totalCost) of quantity q. OPEN: a quantity of zero or less "costs nothing";
        its unitCost is per_unit's unitPrice, but 0 for volume (no tier is chosen)."""
        if rule.model == "per_unit":
            return rule.unit_price, max(q, 0) * rule.unit_price
        if q <= 0:
            return 0, 0
        if rule.model == "volume":
            tier = next(t for t in rule.tiers if t["upTo"] == 0 or q <= t["upTo"])
            return tier["price"], q * tier["price"] + tier["flat"]
        total, prev = 0, 0
        for t in rule.tiers:
            if q <= prev:
                break
            top = q if t["upTo"] == 0 else min(q, t["upTo"])
            total += (top - prev) * t["price"] + t["flat"]
            prev = top if t["upTo"] == 0 else t["upTo"]
        return 0, total

    def _invoicePreview(self, c: Call, p: dict[str, Any]) -> tuple[int, Any]:
        user, cur = p["userId"], p["currency"]
        items = []
        used = []   # usage first (every meter's quantity), then pricing
        for m in c.tenant.meters:
            events = self._events_in(c, m.id, user, p.get("periodStart"), p.get("periodEnd"))
            if events:
                used.append((m, self.aggregate(m, events)))
        for m, q in used:
            rule = self.rule_for(c.tenant, m.id, cur, p.get("planId"))
            unit, total = (0, 0) if rule is None else self.price(rule, q)
            if not total <= INT64_MAX:
                self.hit("price beyond int64 refused")
                raise Refusal("invalid_params", "the price of this usage is beyond the signed 64-bit range", None)
            if rule is not None:
                self.hit(f"preview priced {rule.model}")
            items.append({"meterId": m.id, "meterName": m.name, "quantity": q, "unitCost": unit, "totalCost": total,
                          "model": "" if rule is None else rule.model})
        left = {g.id: g.remaining for g in c.tenant.grants if g.user == user and g.currency == cur and g.active(c.now)}
        grants = [g for g in c.tenant.grants if g.id in left]
        applied = 0
        for item in items:
            need = item["totalCost"]
            for g in self.burn_order([g for g in grants if g.eligible(item["meterId"])]):
                take = min(left[g.id], need)
                left[g.id] -= take
                need -= take
                applied += take
            if need < item["totalCost"] and any(g.eligibility for g in grants):
                self.hit("preview with meter-restricted credit")
        subtotal = sum(i["totalCost"] for i in items)
        if subtotal > INT64_MAX:
            self.hit("price beyond int64 refused")
            raise Refusal("invalid_params", "the price of this usage is beyond the signed 64-bit range", None)
        if 0 < applied < subtotal:
            self.hit("preview partly paid by credit")
        elif applied and applied == subtotal:
            self.hit("preview wholly paid by credit")
        return 200, {"userId": user, "periodStart": p.get("periodStart", ""), "periodEnd": p.get("periodEnd", ""),
                     "lineItems": items, "subtotal": subtotal, "creditApplied": applied, "amountDue": subtotal - applied,
                     "currency": cur}

    # ---- the server's own sweep

    def sweep(self, now: int) -> None:
        """What the periodic sweep writes: forfeits of expired credit and the expiry of grants,
        keyed "system", in every tenant."""
        for t in self.tenants.values():
            c = Call(t, "system", now)
            self._forfeit(c, None, None, key_id="system")
            self._expire_grants(c, None, key_id="system")
