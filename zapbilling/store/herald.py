"""The herald: how the store tells of the changes it writes, in the domain's words.

Every change that has an event (a deposit, a refund, a forfeit, a hold settled or expired, a
grant used up, voided or expired, a usage withdrawal) records it in the outbox (outbox.py) in the
change's own transaction. Which changes have one, the event's type name and its data (the
object as the API returns it) are the domain's business (billing/events.py), so the domain hands
the store a Herald once, at start-up (`Store.announce_with`, called by app.py), like the LotRules
and burn plans it passes into writes. Once rather than with each write: the herald is the same
for every write, and installing it keeps the handlers' calls (and the hot paths' arguments)
unchanged. A store with no herald (one opened by a tool or a test of the store alone) records
no events; the watch (alerts, spend caps) works all the same.

The account an event is about (events.user_id, which listEvents' userId filter reads) is not a
separate answer of the herald: it is the user the event's data names (`user`, or `userId` for a
CreditGrant and alert.triggered), read by the outbox as it writes the row (outbox.about), so
every writer of events, the store's own (alerts, spend caps, a disabled endpoint) included, gets
it without a change to its call; migration 0009 applies the same rule to older events, and on
PostgreSQL a trigger to the one insert that does not name the column (the ledger's append
statement). On SQLite a usage.recorded is the exception: it is found by account through its
ledger row (`evented`, migration 12), and written without user_id.

The store calls the herald only where an event is written (a row inserted, not a replay or a
dedupe repeat), so a write without an event (recordUsage with no endpoint subscribed to usage)
pays for no rendering at all.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .base import GrantRow, HoldRow, LedgerRow

Told = tuple[str, dict[str, Any]]
"""An event as the domain renders it: (its type, its data)."""


class Herald(Protocol):
    def entry(self, row: LedgerRow) -> Told | None:
        """A ledger row a caller's write appended (a deposit, a refund, a withdrawal, a hold's
        capture): its event, or None when such a row has none of its own."""
        ...

    def usage(self, row: LedgerRow) -> Told | None:
        """The same row's high-volume event, asked only when the tenant has endpoints that name
        it (tenants.usage_hooks > 0): None when the row is not one."""
        ...

    def usage_type(self, row: LedgerRow) -> str | None:
        """`usage`'s type alone, its data not rendered: the SQLite outbox makes that data from
        the row when the event is read (sqlite/outbox.py USAGE_DATA, held to `usage` at start-up)."""
        ...

    def forfeit(self, row: LedgerRow) -> Told:
        """A forfeit row of expired credit, written by a write to its account or by the sweep."""
        ...

    def hold(self, row: HoldRow) -> Told:
        """A hold that was just captured, released or marked expired (its `status` says which)."""
        ...

    def grant(self, row: GrantRow, change: str, now: int) -> Told:
        """A grant after a change of the credit journal's `change` type: `burn` (that took it
        to 0), `void`, `expire`; `now`: the change's instant."""
        ...


@dataclass(slots=True)
class Outbox:
    """What a store keeps for its writes' events: the domain's herald, and on PostgreSQL the
    last tenants.usage_hooks count each tenant's writes saw (a hint only: see
    postgres/ledger.py; the database decides)."""

    herald: Herald
    usage_hooks: dict[int, int] = field(default_factory=dict)
