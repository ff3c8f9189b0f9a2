"""Why the store refused a write, as facts. The store knows which row was missing or which
check failed inside the write's transaction, but not how the contract words it nor which
parameter the caller named it with: billing/ turns these into the caller's errors. A second
backend raises the same exceptions, so no word of the contract is written twice."""
from __future__ import annotations


class Refused(Exception):
    """A write that changed nothing: its transaction (savepoint) was rolled back."""


class Missing(Refused):
    """A row the write needs does not exist in this tenant. `index`: its position when the
    write was given several (the eligibility list of a grant, a batch of events)."""

    def __init__(self, entity: str, index: int | None = None):
        super().__init__(f"no such {entity}" + (f" (item {index})" if index is not None else ""))
        self.entity = entity
        self.index = index


class AlreadyExists(Refused):
    """A row unique by `key` exists already (a meter's event name)."""

    def __init__(self, entity: str, key: str):
        super().__init__(f"{entity} {key!r} exists")
        self.entity = entity
        self.key = key


class NotRefundable(Refused):
    """The original of a refund is not a charge: its type and tags."""

    def __init__(self, type: str, tags: str):
        super().__init__(f"a {type} ({tags or 'no tags'}) is not a charge")
        self.type = type
        self.tags = tags


class RefundLeft(Refused):
    """A refund larger than what is left to refund of its original."""

    def __init__(self, left: int, amount: int):
        super().__init__(f"{left} of {amount} cents left to refund")
        self.left = left
        self.amount = amount


class OutOfRange(Refused):
    """A sum the write would store passes the signed 64-bit range: `total` names it
    ("balance", "holds", "credit": an account's unspent expiring credit)."""

    def __init__(self, total: str):
        super().__init__(f"{total} would leave the signed 64-bit range")
        self.total = total


class ShortOfFunds(Refused):
    """A hold the account cannot take: its balance and the holds already pending."""

    def __init__(self, balance: int, holds: int):
        super().__init__(f"balance {balance}, holds {holds}")
        self.balance = balance
        self.holds = holds


class NotPending(Refused):
    """A hold that can no longer be settled: its status now."""

    def __init__(self, status: str):
        super().__init__(f"hold is {status}")
        self.status = status


class OverCapture(Refused):
    """A capture larger than its hold: the cents asked and held."""

    def __init__(self, asked: int, held: int):
        super().__init__(f"{asked} asked, {held} held")
        self.asked = asked
        self.held = held


class AlreadyVoided(Refused):
    """A grant voided before."""


class KeyReused(Refused):
    """An idempotency key first used with a call of another fingerprint."""


class SumOutOfRange(Exception):
    """An aggregate of stored values passes the signed 64-bit range (a read, not a write)."""


class QuotaReached(Refused):
    """The tenant (for meters) or the meter (for pricing rules) holds `quota` rows of `entity`
    already, counted in the write's own transaction."""

    def __init__(self, entity: str, quota: int):
        super().__init__(f"{quota} {entity}s held")
        self.entity = entity
        self.quota = quota


class CapReached(Refused):
    """A hold would take the user's spending this period past a spend cap: what the period has
    used (usage withdrawals plus pending holds, before this hold), the cap, and its period."""

    def __init__(self, used: int, cap: int, currency: str, period: str):
        super().__init__(f"{used} of {cap} cents {currency} this {period}")
        self.used = used
        self.cap = cap
        self.currency = currency
        self.period = period
