"""The storage interface. Handlers see only this; the SQLite implementation (and a PostgreSQL
one later) sit behind it. Rows come back as typed dicts whose values are JSON values, so a
write's result can be stored for an idempotent replay exactly as it was returned. A refused
write raises one of refusals.py's exceptions, which carry facts, never the contract's words.

The value objects made per request (NewEntry, NewHold, ...) are plain slotted dataclasses, not
frozen ones: a frozen dataclass's __init__ costs about twice as much, and nothing writes to them."""
from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterable, Iterator, NamedTuple, Protocol, TypedDict

if TYPE_CHECKING:
    from .herald import Herald

DURABILITY = ("full", "normal")
"""What an acknowledged write survives, every backend: full, a power cut; normal, a crash of
the process but not of the machine."""

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""What a money column holds on every backend."""

LEDGER_TYPES = ("deposit", "withdraw")
"""Every type a ledger row can have (the table's CHECK on every backend)."""

SYSTEM_KEY = "system"
"""The key id of rows the server writes by itself (the expiry sweep)."""


class Unavailable(RuntimeError):
    """The database cannot be reached, or refused us, at start-up: one line that says why (the
    CLI prints it and exits non-zero)."""


class KeyRevoked(Exception):
    """The API key this request was let in with, taken from a server's cache of keys, turned
    out to be revoked when the database was asked (Store.check_key): the caller is answered as
    for an unknown key, and nothing the request wrote is committed."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's tenant (one org in one mode) and what it may do."""

    tenant: int
    org: str
    mode: str
    scope: str
    key_id: str


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    org: str
    mode: str
    scope: str
    hint: str
    created_at: int
    revoked_at: int | None


@dataclass(slots=True)
class Idempotency:
    """An idempotency key and the fingerprint of the call it was first used with."""

    key: str
    fingerprint: str


@dataclass(slots=True)
class MeterEventDraft:
    meter_id: str
    user: str
    value: int
    timestamp: int
    idempotency: str | None = None
    """At most one event per (tenant, idempotency); a repeat reports the first event's id."""
    dimensions: dict[str, Any] | None = None
    ledger_id: str | None = None
    """The usage withdrawal this event records, for the events the server writes itself."""


@dataclass(slots=True)
class UsageEvent:
    """The meter event a usage withdrawal records in its own transaction, if the tenant has a
    meter for `event_name`: value = the withdrawal's amount, at the withdrawal's time. It is
    keyed by the withdrawal's own row (meter_events.ledger_id, unique), not by an idempotency
    key: callers' keys live in another column, so no caller's event can collide with it, and a
    row id is unambiguous where `usage:<user>:<requestId>` was not (user `a:b` with request `c`
    and user `a` with request `b:c` made the same key, and the second usage event was dropped).
    A retried withdrawal writes no second row, hence no second event."""

    event_name: str
    dimensions: dict[str, Any]


@dataclass(slots=True)
class Lot:
    """An expiring deposit with money left: the only money that can run out by time."""

    id: str
    remaining: int
    expires_at: int


LotTakes = Callable[[Iterable[Lot], int, int], Iterator[tuple[Lot, int, bool]]]
"""The domain's rule for a ledger write's expiring money: (the account's lots, in expiry order
then oldest first; cents the write spends; now) -> (lot, cents taken, whether forfeited) for
each lot the write changes. The store walks its lots index lazily as the rule asks for more,
so a rule that stops early stops the walk."""
Forfeiture = Callable[[Lot, str, int], "tuple[str, str, dict[str, Any]]"]
"""The domain's words for a forfeit row: (lot, currency, cents) -> (tags, notes, metadata)."""


@dataclass(slots=True)
class LotRules:
    """What a ledger write does to expiring money: the domain's, passed in like a burn plan."""

    takes: LotTakes
    forfeiture: Forfeiture


@dataclass(slots=True)
class NewEntry:
    """A ledger row to append. The store adds the id, maintains the running balance and
    settles the account's expiring money as `lots` decides, in the same transaction."""

    type: str
    user: str
    currency: str
    amount: int
    now: int
    key_id: str
    lots: LotRules
    """The API key whose call writes the row."""
    tags: str = ""
    notes: str = ""
    metadata: dict[str, Any] | None = None
    expires_at: int | None = None
    refund_of: str | None = None
    """Refunds: the original row, which must be a charge with this much left to refund."""
    hold_id: str | None = None
    dedupe_key: str | None = None
    """At most one row per (tenant, user, dedupe_key); a repeat returns the first row."""
    usage_event: UsageEvent | None = None


@dataclass(slots=True)
class NewHold:
    """A hold to place. The store refuses it (ShortOfFunds) unless `covered(balance, holds)`,
    the domain's funds check, says the account at `now` can take it, in the same transaction
    as the insert; a `request_id` seen before for the same user returns that hold instead,
    writing nothing (and checking nothing)."""

    user: str
    currency: str
    amount: int
    now: int
    expires_at: int
    covered: "Callable[[int, int], bool]"
    request_id: str | None = None
    metadata: Any = None


Row = dict[str, Any]
BurnPlan = Callable[[list["GrantRow"], int, "str | None"], list[tuple["GrantRow", int]]]
"""The domain's burn order: (active grants in creation order, amount, meter id) -> (grant, cents)."""
Refundable = Callable[["LedgerRow"], bool]
"""The domain's rule for which ledger rows a refund may name."""


class LedgerRow(TypedDict):
    """Times in microseconds."""

    id: str
    user: str
    currency: str
    type: str
    amount: int
    tags: str
    notes: str
    metadata: Any
    createdAt: int
    expiresAt: int | None
    refundOf: str | None
    holdId: str | None
    keyId: str


class HoldRow(TypedDict):
    """Times in microseconds. `status` is the status at the `now` of the call: a pending hold
    with expiresAt <= now is `expired` (and settledAt = expiresAt)."""

    holdId: str
    user: str
    currency: str
    amount: int
    status: str
    expiresAt: int
    createdAt: int
    capturedAmount: int | None
    transactionId: str | None
    requestId: str | None
    metadata: Any
    settledAt: int | None


class GrantRow(TypedDict):
    """Times in microseconds; `eligibility` is a list of meter ids (empty: every meter)."""

    id: str
    userId: str
    name: str
    amountCents: int
    remainingCents: int
    currency: str
    priority: int
    effectiveAt: int
    expiresAt: int | None
    eligibility: list[str]
    tags: str
    voidedAt: int | None
    createdAt: int


class GrantChange(TypedDict):
    """One row of the credit journal: a signed change of one grant's remaining cents."""

    id: str
    grantId: str
    userId: str
    currency: str
    type: str
    amount: int
    remainingAfter: int
    burnId: str | None
    meterId: str | None
    createdAt: int
    keyId: str


class MeterEventRow(TypedDict):
    """Times in microseconds: `timestamp` is the event's own time, `createdAt` when it was
    recorded."""

    id: str
    meterId: str
    userId: str
    value: int
    timestamp: int
    idempotency: str | None
    dimensions: Any
    createdAt: int


class BurnedGrant(TypedDict):
    id: str
    burned: int
    remainingCents: int


class Burn(TypedDict):
    """What one burn took; `burnId` names its journal rows (None when it took nothing)."""

    burnId: str | None
    grants: list[BurnedGrant]


class MeterRow(TypedDict):
    id: str
    name: str
    eventName: str
    aggregationType: str
    currency: str
    dimensions: list[str]
    createdAt: int


class MeterUsage(NamedTuple):
    """A meter's usage by one user over a period (Store.meter_usage): `value` by the meter's
    aggregation, `events` how many events."""

    meter_id: str
    name: str
    value: int
    events: int


class RuleRow(TypedDict):
    """`tiers`: [{upTo, price, flat}] as given."""

    id: str
    meterId: str
    planId: str
    model: str
    currency: str
    unitPrice: int
    tiers: list[dict[str, int]]
    createdAt: int


class Account(TypedDict):
    user: str
    balance: int
    """Expired, unforfeited credit already taken off."""
    holds: int


@dataclass(slots=True)
class NewGrant:
    """A credit grant to create, with its first journal row. Every meter of `eligibility` must
    exist (Missing("meter", index) otherwise)."""

    user: str
    name: str
    amount: int
    currency: str
    priority: int
    effective_at: int
    expires_at: int | None
    eligibility: list[str]
    tags: str
    now: int
    key_id: str


@dataclass(slots=True)
class NewMeter:
    """A meter to create; its event name is unique in the tenant (AlreadyExists otherwise)."""

    name: str
    event_name: str
    aggregation: str
    """One of the store's AGGREGATIONS."""
    currency: str
    dimensions: list[str]
    now: int


@dataclass(slots=True)
class NewRule:
    """A pricing rule to create for an existing meter (Missing("meter") otherwise)."""

    meter_id: str
    plan_id: str
    model: str
    currency: str
    unit_price: int
    tiers: list[dict[str, int]]
    now: int


@dataclass(slots=True)
class NewAlert:
    """An alert to create: `type` balance_below or usage_above; `user` None for every user of
    the tenant; `meter_id` (usage_above only) must name a meter of the tenant (Missing("meter"))."""

    type: str
    user: str | None
    currency: str
    threshold: int
    period: str | None
    meter_id: str | None
    now: int


class AlertRow(TypedDict):
    id: str
    type: str
    userId: str | None
    currency: str
    threshold: int
    period: str | None
    meterId: str | None
    createdAt: int


class SpendCapRow(TypedDict):
    """`used`: the period's (at the read's `now`) usage withdrawals plus pending holds, in cents."""

    user: str
    currency: str
    period: str
    limit: int
    used: int


@dataclass(slots=True)
class LedgerFilter:
    """Which of a user's ledger rows to list; None: any."""

    currency: str | None = None
    type: str | None = None
    tag: str | None = None
    """One of the row's comma-separated tags, exactly."""
    created_from: int | None = None
    """Inclusive."""
    created_before: int | None = None
    """Exclusive."""


HoldCharge = Callable[[HoldRow, int], NewEntry]
"""The domain's capture withdrawal: (the hold, cents captured) -> the ledger row to append."""


class Moved(NamedTuple):
    """A ledger row that moved money, as a store reports it once its transaction committed."""

    currency: str
    type: str
    tags: str
    amount: int
    refund: bool
    """A refund of another row (NewEntry.refund_of)."""
    hold: bool
    """A hold's capture (NewEntry.hold_id)."""


class Recorded(NamedTuple):
    """A batch of meter events a caller sent, as a store reports it once committed."""

    created: int
    duplicate: int
    """Events whose idempotency key was seen: the first event stands."""


Note = tuple[str, str, str, int, bool, bool] | Recorded
"""A Moved's fields as a plain tuple (made ~15x faster than the NamedTuple: 0.02 vs 0.35 us;
`Moved._make` reads it), or a Recorded."""

NOTES: ContextVar["list[Note] | None"] = ContextVar("zapbilling_store_notes", default=None)
"""What the write running in this context has written so far, for the metrics: set by the
backend around each transaction (the SQLite writer's thread, the PostgreSQL `_tx`), which hands
the notes to StoreStats.written only after its COMMIT, so that a write rolled back, refused or
replayed (an idempotent replay or a dedupe repeat writes no row) is never counted."""


def moved(currency: str, type: str, tags: str, amount: int, refund: bool = False, hold: bool = False) -> None:
    """Note a ledger row just written in the current transaction (see NOTES). About 0.1 us."""
    notes = NOTES.get()
    if notes is not None:
        notes.append((currency, type, tags, amount, refund, hold))


def recorded(created: int, duplicate: int) -> None:
    """Note a caller's batch of meter events just written (see NOTES)."""
    notes = NOTES.get()
    if notes is not None:
        notes.append(Recorded(created, duplicate))


class StoreStats:
    """What a store counts about its own work, for whoever watches it (the server's metrics,
    which drain these lists on a timer): plain lists a store appends to on its event loop's
    thread, so counting costs an append per commit, never a lock or a system call."""

    __slots__ = ("commits", "written", "pool_waits", "pool_wait_seconds")

    def __init__(self) -> None:
        self.commits: list[tuple[float, int]] = []
        """(seconds from BEGIN to COMMIT done, writes in the transaction) of each commit."""
        self.written: list[Note] = []
        """What committed transactions wrote (rows moving money, caller's meter events), in commit order."""
        self.pool_waits = 0
        """Connections taken from the pool only after waiting for one to be given back (PostgreSQL)."""
        self.pool_wait_seconds = 0.0
        """Their waits, summed."""


class Load(NamedTuple):
    """A store's load at one moment."""

    queue: int
    """Writes waiting for the writer (SQLite's single writer; 0 on PostgreSQL)."""
    pool_size: int
    """Connections the pool may open (PostgreSQL; 0 on SQLite)."""
    pool_open: int
    """Connections open, idle or in use."""
    pool_in_use: int
    """Connections lent out to a call now."""


# webhooks and events: rows and the two rules the store itself must know
USAGE_RECORDED = "usage.recorded"
"""The one event type the store names: tenants.usage_hooks counts the enabled endpoints that
name it, so that a usage write emits it only when someone listens."""
ALL_EVENTS = "*"
"""An endpoint's `events` of exactly [ALL_EVENTS] subscribes to every type but USAGE_RECORDED."""


def subscribes(events: list[str], type: str) -> bool:
    """Whether an endpoint with these `events` is sent events of `type`."""
    return type in events or (ALL_EVENTS in events and type != USAGE_RECORDED)


@dataclass(slots=True)
class NewEndpoint:
    url: str
    events: list[str]
    description: str
    secret: str
    now: int


class EndpointRow(TypedDict):
    """A webhook endpoint as listed: never its secret (create_endpoint's answer adds it)."""

    id: str
    url: str
    events: list[str]
    description: str
    status: str
    createdAt: int


class EventRow(TypedDict):
    id: str
    type: str
    createdAt: int
    data: Any


class DeliveryEntry(TypedDict):
    """One line of an event's delivery log: an attempt made, or (status pending) the next one
    of a delivery still pending, `at` its due time."""

    endpointId: str
    attempt: int
    status: str
    responseStatus: int | None
    error: str | None
    at: int


# deliveries: what the sender (zapbilling/events/sender.py) claims and what it reports
class DeliveryJob(NamedTuple):
    """One attempt a sender claimed (its lease runs until the claim's `lease_until`): the
    delivery, its event and where to send it."""

    delivery: int
    """deliveries.seq"""
    tenant: int
    attempt: int
    """The number of this attempt: 1 for the first."""
    endpoint_id: str
    url: str
    secrets: tuple[str, ...]
    """The endpoint's secret, then the one it replaced while that still signs."""
    event_id: str
    event_type: str
    created_at: int
    data: str
    """The event's data as stored: JSON text."""


class AttemptOutcome(NamedTuple):
    """What came of a claimed attempt, as recorded by record_attempt."""

    delivery: int
    attempt: int
    succeeded: bool
    response_status: int | None
    error: str | None
    at: int
    next_due: int | None
    """A failed attempt: when the next one is due; None: the schedule is used up (the delivery failed)."""


Disabling = Callable[[EndpointRow], tuple[str, dict[str, Any]]]
"""The event recorded when an endpoint is disabled (its type and data), rendered by the domain."""


class Store(Protocol):
    stats: StoreStats

    def load(self) -> Load:
        """The store's load now (read by the metrics at each sample)."""
        ...

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    def snapshot(self, tenant: int | None = None) -> AbstractAsyncContextManager[None]:
        """`async with store.snapshot(tenant):` the reads made inside see one moment of the data.
        `tenant`: whose read it is, so that snapshots and long reads take turns fairly by tenant."""
        ...

    async def schema_version(self) -> int:
        """The last migration applied to the database (a read of the database, for readiness)."""
        ...

    def announce_with(self, herald: Herald) -> None:
        """Record every write's events with the domain's herald (store/herald.py) from now on;
        installed once at start-up. Without one, a store records no events."""
        ...

    # keys
    async def create_key(self, org: str, mode: str, scope: str, now: int) -> tuple[str, str]: ...
    async def list_keys(self) -> list[KeyInfo]: ...
    async def revoke_key(self, key_id: str, now: int) -> bool: ...
    async def authenticate(self, secret: str) -> Principal | None:
        """The key's principal, or None. A store may answer from a cache whose entries other
        servers cannot invalidate (PostgreSQL): the key is then checked against the database
        later in the same request, by the first statement that can carry the check (every
        write's transaction checks it before it writes), and `check_key` checks it before the
        answer if nothing did; a revoked key raises KeyRevoked."""
        ...

    def known_key(self, secret: str) -> Principal | None:
        """`authenticate`'s answer when the store has it at hand, exactly and with nothing to do
        besides (no read, no check left for later); None when `authenticate` must be asked. Lets
        the usual request, whose key is cached, skip `authenticate`'s coroutine."""
        ...

    def key_unchecked(self) -> bool:
        """Whether this request's key still has to be checked (`check_key`) before it is answered."""
        ...

    async def check_key(self) -> None:
        """Check this request's key against the database if no statement has yet: KeyRevoked
        when it was revoked."""
        ...

    # idempotency
    async def idempotency_fingerprint(self, tenant: int, key: str) -> str | None: ...
    async def purge_idempotency(self, older_than: int) -> int: ...
    async def claim_idempotency(self, tenant: int, idempotency: Idempotency, now: int, answer: Row) -> Row:
        """Claim the key for a call that writes nothing else, storing its answer as a write's
        is stored; a key seen before answers what it stored (KeyReused for other params)."""
        ...

    # ledger
    async def balance(self, tenant: int, user: str, currency: str, now: int) -> tuple[int, int]: ...
    async def balances(self, tenant: int, user: str, now: int) -> list[tuple[str, int, int]]: ...
    async def usage_page(
        self, tenant: int, user: str, currency: str | None, limit: int, starting_after: str | None
    ) -> tuple[list[LedgerRow], bool]: ...
    async def ledger_page(
        self, tenant: int, user: str, where: LedgerFilter, limit: int, starting_after: str | None
    ) -> tuple[list[LedgerRow], bool]:
        """Newest first (equal times: last written first); Missing("ledger row") when
        `starting_after` is not a row of this user."""
        ...
    async def accounts_page(
        self, tenant: int, currency: str, max_available: int | None, limit: int, starting_after: str | None, now: int
    ) -> tuple[list[Account], bool]:
        """Every user with a ledger row or a hold pending at `now` in `currency`, in byte order."""
        ...
    async def append_ledger_row(
        self, tenant: int, entry: NewEntry, idempotency: Idempotency | None = None, refundable: Refundable | None = None
    ) -> LedgerRow: ...
    async def forfeit_expired(self, now: int, lots: LotRules, limit: int = 500) -> int:
        """Settle up to `limit` accounts holding expired lots (with nothing to spend); returns
        how many."""
        ...

    # meters and events
    AGGREGATIONS: frozenset[str]
    """The aggregations the backend computes; start-up checks them against the schema's enum."""
    async def create_meter(
        self, tenant: int, meter: NewMeter, idempotency: Idempotency | None = None, *, quota: int | None = None
    ) -> MeterRow:
        """QuotaReached("meter") when the tenant holds `quota` meters already (None: no bound),
        counted in the same transaction as the insert."""
        ...
    async def meters_page(self, tenant: int, limit: int, starting_after: str | None = None) -> tuple[list[MeterRow], bool]:
        """In creation order; Missing("meter") when `starting_after` is not a meter of the tenant."""
        ...
    async def get_meter(self, tenant: int, meter_id: str) -> MeterRow | None: ...
    async def record_meter_events(
        self, tenant: int, events: list[MeterEventDraft], now: int, idempotency: Idempotency | None = None
    ) -> list[tuple[str, str]]: ...
    async def aggregate_events(
        self, tenant: int, meter_id: str, aggregation: str, user: str | None, start: int | None, end: int | None
    ) -> tuple[int, int]:
        """(value, number of events) over [start, end); SumOutOfRange past int64."""
        ...
    async def aggregate_windows(
        self, tenant: int, meter_id: str, aggregation: str, user: str | None, start: int, end: int, origin: int, width: int
    ) -> list[tuple[int, int, int]]:
        """(window number, value, events) of each window of `width` microseconds counted from
        `origin` (at or before `start`) that holds events in [start, end), as aggregate_events
        computes them per window, in one grouped query; empty windows are left out.
        SumOutOfRange past int64."""
        ...
    async def meter_usage(self, tenant: int, user: str, start: int | None, end: int | None) -> list[MeterUsage]:
        """Every meter with events of `user` over [start, end), in creation order, with its
        usage as aggregate_events computes it, in a bounded number of queries whatever the
        number of meters; SumOutOfRange past int64."""
        ...

    # credit grants and their journal
    async def create_grant(self, tenant: int, grant: NewGrant, idempotency: Idempotency | None = None) -> GrantRow: ...
    async def list_grants(self, tenant: int, user: str) -> list[GrantRow]: ...
    async def active_grants(self, tenant: int, user: str, now: int, currency: str | None = None) -> list[GrantRow]: ...
    async def void_grant(
        self, tenant: int, grant_id: str, now: int, key_id: str, idempotency: Idempotency | None = None
    ) -> GrantRow: ...
    async def burn_grants(
        self, tenant: int, user: str, currency: str, amount: int, meter_id: str | None, now: int, key_id: str,
        plan: BurnPlan, idempotency: Idempotency | None = None,
    ) -> Burn: ...
    async def grant_changes_page(
        self, tenant: int, user: str, grant_id: str | None, limit: int, starting_after: str | None
    ) -> tuple[list[GrantChange], bool]:
        """Newest first; Missing("grant") for a grant not of this user, Missing("grant change")
        for a `starting_after` not in this listing."""
        ...
    async def expire_grants(self, now: int, limit: int = 500) -> int: ...

    # pricing rules
    async def create_rule(
        self, tenant: int, rule: NewRule, idempotency: Idempotency | None = None, *, quota: int | None = None
    ) -> RuleRow:
        """QuotaReached("pricing rule") when the meter holds `quota` rules already (None: no
        bound), counted in the same transaction as the insert."""
        ...
    async def list_rules(
        self, tenant: int, meter_id: str | None = None, plan_id: str | None = None, currency: str | None = None
    ) -> list[RuleRow]: ...
    async def delete_rule(self, tenant: int, rule_id: str, now: int, idempotency: Idempotency | None = None) -> None: ...

    # holds
    HOLD_STATUSES: frozenset[str]
    """The statuses the backend filters on; start-up checks them against the schema's enum."""
    async def create_hold(self, tenant: int, hold: NewHold, idempotency: Idempotency | None = None) -> HoldRow: ...
    async def capture_hold(
        self, tenant: int, hold_id: str, amount: int | None, now: int, charge: HoldCharge,
        idempotency: Idempotency | None = None,
    ) -> HoldRow: ...
    async def release_hold(self, tenant: int, hold_id: str, now: int, idempotency: Idempotency | None = None) -> HoldRow: ...
    async def get_hold(self, tenant: int, hold_id: str, now: int) -> HoldRow | None: ...
    async def list_holds(
        self, tenant: int, user: str | None, status: str | None, limit: int, starting_after: str | None, now: int
    ) -> tuple[list[HoldRow], bool]: ...
    async def expire_holds(self, now: int, limit: int = 500) -> int: ...

    # webhooks and events
    async def create_endpoint(
        self, tenant: int, endpoint: NewEndpoint, idempotency: Idempotency | None = None, *, quota: int | None = None
    ) -> Row:
        """An EndpointRow plus its `secret`; tenants.usage_hooks + 1 in the same transaction
        when its events name USAGE_RECORDED. QuotaReached("webhook endpoint") when the tenant
        holds `quota` endpoints not deleted (None: no bound), counted in the same transaction."""
        ...
    async def list_endpoints(self, tenant: int) -> list[EndpointRow]:
        """The tenant's endpoints not deleted, in creation order."""
        ...
    async def delete_endpoint(self, tenant: int, endpoint_id: str, now: int, idempotency: Idempotency | None = None) -> None:
        """Mark it deleted (its deliveries stay for the events' logs); tenants.usage_hooks - 1 in
        the same transaction if it was enabled and named USAGE_RECORDED. Missing("webhook
        endpoint") for an id not of this tenant, or deleted already."""
        ...
    async def rotate_endpoint_secret(
        self, tenant: int, endpoint_id: str, secret: str, old_until: int, now: int, idempotency: Idempotency | None = None
    ) -> Row:
        """`secret` becomes the endpoint's; the one it replaces signs too until `old_until`.
        The answer {id, secret} (a replay answers the first call's). Missing("webhook
        endpoint") as delete_endpoint."""
        ...
    async def events_page(
        self, tenant: int, type: str | None, limit: int, starting_after: str | None, user: str | None = None
    ) -> tuple[list[EventRow], bool]:
        """Newest first (the outbox's order), only those about `user` when given (events.user_id);
        Missing("event") when `starting_after` is not an event of this tenant."""
        ...
    async def get_event(self, tenant: int, event_id: str) -> tuple[EventRow, list[DeliveryEntry]] | None:
        """The event and its delivery log, oldest first (by time, then delivery, then attempt),
        read in one snapshot; None for an id not of this tenant."""
        ...
    async def redeliver(
        self, tenant: int, event_id: str, endpoint_id: str | None, now: int, idempotency: Idempotency | None = None
    ) -> int:
        """Queue new pending deliveries of the event, due at `now`: to `endpoint_id` (unless it
        is disabled), or to every enabled endpoint `subscribes` to its type; how many.
        Missing("event") or Missing("webhook endpoint") (not of this tenant, or deleted)."""
        ...

    async def purge_events(self, older_than: int, limit: int = 500) -> int:
        """Delete up to `limit` of the oldest events created before `older_than` (as far as a
        PurgeHorizon allows), with their deliveries and attempts; an event not yet dispatched
        or with a delivery still pending stays. How many went (retention.py)."""
        ...

    # deliveries (zapbilling/events/sender.py; both backends' deliveries.py)
    async def deliveries_waiting(self, now: int) -> tuple[bool, bool]:
        """(whether an event waits to be dispatched, whether a delivery is due and not leased):
        one cheap read, so that an idle sender writes nothing."""
        ...
    async def dispatch_events(self, now: int, limit: int = 500) -> int:
        """Turn up to `limit` undispatched events into pending deliveries due at `now`, one per
        endpoint enabled and not deleted that `subscribes` to the type at this moment, and mark
        them dispatched, in one transaction; how many events. Several servers may call this
        at once: each event is dispatched once."""
        ...
    async def claim_deliveries(
        self, now: int, lease_until: int, limit: int, per_endpoint: int, busy: dict[str, int]
    ) -> list[DeliveryJob]:
        """Lease up to `limit` due deliveries until `lease_until` (no other sender takes them
        before then), at most `per_endpoint` of one endpoint counting the attempts this sender
        has under way (`busy`: by endpoint). Due deliveries of an endpoint deleted or disabled
        since are marked failed instead."""
        ...
    async def record_attempt(self, outcome: AttemptOutcome, disable_after: int, disabling: Disabling) -> bool:
        """Log the attempt and move its delivery on (succeeded, due again, or failed), in one
        transaction, unless this attempt was recorded already (a lease that ran out: the
        other sender's record stands). A delivery's end updates its endpoint's deliveries
        failed in a row (0 after a success); at `disable_after` the endpoint is disabled, the
        event `disabling` renders is recorded and tenants.usage_hooks kept. True when it
        disabled the endpoint."""
        ...

    # alerts and spend caps
    async def create_alert(
        self, tenant: int, alert: NewAlert, idempotency: Idempotency | None = None, *, quota: int | None = None
    ) -> AlertRow:
        """Missing("meter") for an unknown meter; QuotaReached("alert") when the tenant holds
        `quota` alerts already; tenants.alerts counted in the same transaction."""
        ...
    async def list_alerts(self, tenant: int, user: str | None) -> list[AlertRow]:
        """In creation order; with `user`, that user's alerts and the tenant-wide ones."""
        ...
    async def delete_alert(self, tenant: int, alert_id: str, now: int, idempotency: Idempotency | None = None) -> None:
        """Missing("alert") when the tenant has no such alert; its marks go with it."""
        ...
    async def set_spend_cap(
        self, tenant: int, user: str, currency: str, period: str, cap: int, now: int, idempotency: Idempotency | None = None
    ) -> SpendCapRow:
        """Creates or replaces the cap of (user, currency, period); tenants.spend_caps kept."""
        ...
    async def spend_caps(self, tenant: int, user: str, now: int) -> list[SpendCapRow]:
        """The user's caps by currency then period (day before month), each with `used` at `now`."""
        ...
    async def delete_spend_cap(
        self, tenant: int, user: str, currency: str, period: str, now: int, idempotency: Idempotency | None = None
    ) -> None:
        """Missing("spend cap") when there is none."""
        ...

    # export (zapbilling export)
    async def tenant_id(self, org: str, mode: str) -> int | None:
        """None when no key was ever made for this org and mode."""
        ...
    def export_rows(
        self, tenant: int, table: str, since: int | None, now: int, batch: int = 1000
    ) -> AsyncIterator[list[Row]]:
        """Every row of `table` (ledger, credit_transactions, meter_events or holds) of the
        tenant with createdAt >= `since`, in creation order, in lists of at most `batch` rows
        shaped as LedgerRow, GrantChange, MeterEventRow or HoldRow (status at `now`); one
        snapshot throughout, never more than a batch in memory."""
        ...
