"""Events: which changes have one, their type names, and their data in the API's shape.

An event is recorded by the store in the same transaction as its change (a transactional
outbox, store/outbox.py); this module is the store's Herald (store/herald.py), installed once at
start-up (app.py), so that the store never learns the contract's words. Its data is the object
as the API returns it: a Transaction as listTransactions returns it, a Hold as getHold, a
CreditGrant as listCreditGrants (at the change's instant). Each event names the changed row as
its `subject` (a ledger row's, a hold's or a grant's id), and the outbox keeps one event of a
type per subject, so one change has one event whoever writes it. The account an event is about
(listEvents' userId) is the user its data names (store/herald.py), so every data here names it.

Which change makes which event:
- deposit.created: a caller's deposit, the starter credit included (a refund is not one);
- refund.created: a refund;
- credit.expired: each forfeit of expired credit, whether a write to the account or the sweep
  wrote it;
- hold.captured, hold.released: the capture or release;
- hold.expired: when the sweep marks the hold expired, in that transaction. A hold is expired for
  every reader from its expiresAt on, but its event comes with the server's expiry
  sweep (once a minute), dated then; its data's settledAt is its expiresAt all the same;
- grant.depleted: a burn took the grant's remaining to 0;
- grant.voided: the void;
- grant.expired: the expire row of the grant's journal (written by the first write to the
  user's grants after the expiry, or by the sweep);
- usage.recorded: a usage withdrawal (recordUsage, a hold's capture), only while the tenant has
  an enabled endpoint naming it (tenants.usage_hooks > 0, read in the same transaction).
"""
from __future__ import annotations

from ..store import GrantRow, HoldRow, LedgerRow
from ..store.herald import Told
from .grants import grant_result
from .holds import hold_result
from .ledger import USAGE_TAG, transaction_result

DEPOSIT_CREATED = "deposit.created"
REFUND_CREATED = "refund.created"
CREDIT_EXPIRED = "credit.expired"
HOLD_CAPTURED = "hold.captured"
HOLD_RELEASED = "hold.released"
HOLD_EXPIRED = "hold.expired"
GRANT_DEPLETED = "grant.depleted"
GRANT_VOIDED = "grant.voided"
GRANT_EXPIRED = "grant.expired"
USAGE_RECORDED = "usage.recorded"

CHANGE_TYPES = (
    DEPOSIT_CREATED, REFUND_CREATED, CREDIT_EXPIRED, HOLD_CAPTURED, HOLD_RELEASED, HOLD_EXPIRED,
    GRANT_DEPLETED, GRANT_VOIDED, GRANT_EXPIRED, USAGE_RECORDED,
)
"""The types this module makes (alerts' and endpoints' own are made where those are)."""

_HOLD_TYPES = {"captured": HOLD_CAPTURED, "released": HOLD_RELEASED, "expired": HOLD_EXPIRED}
_GRANT_TYPES = {"burn": GRANT_DEPLETED, "void": GRANT_VOIDED, "expire": GRANT_EXPIRED}


class BillingHerald:
    """The store's Herald (store/herald.py): plain functions of the row, no I/O, run inside
    the change's transaction."""

    def entry(self, row: LedgerRow) -> Told | None:
        if row["type"] != "deposit":
            return None  # a withdrawal's event is usage.recorded, asked for apart (`usage`)
        return (REFUND_CREATED if row["refundOf"] is not None else DEPOSIT_CREATED), transaction_result(row)

    def usage(self, row: LedgerRow) -> Told | None:
        return None if self.usage_type(row) is None else (USAGE_RECORDED, transaction_result(row))

    def usage_type(self, row: LedgerRow) -> str | None:
        return USAGE_RECORDED if row["type"] == "withdraw" and row["tags"] == USAGE_TAG else None

    def forfeit(self, row: LedgerRow) -> Told:
        return CREDIT_EXPIRED, transaction_result(row)

    def hold(self, row: HoldRow) -> Told:
        return _HOLD_TYPES[row["status"]], hold_result(row)

    def grant(self, row: GrantRow, change: str, now: int) -> Told:
        return _GRANT_TYPES[change], grant_result(row, now)


HERALD = BillingHerald()

