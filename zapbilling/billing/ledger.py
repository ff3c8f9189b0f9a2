"""The balance ledger: balances, usage, deposits, the starter credit and refunds.

A mutating handler makes exactly one store write and builds its answer only from what that
write returned: an idempotent replay hands back the stored write result, and the same
formatting then yields the same answer byte for byte.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

from ..context import Context, Unchanged
from ..errors import InvalidParams, NotFound
from ..store import (
    LedgerFilter, LedgerRow, Lot, LotRules, Missing, NewEntry, NotRefundable, OutOfRange, RefundLeft, UsageEvent,
)
from ..times import DAY, format_ts, parse_ts

STARTER_CREDIT_CENTS = 500
STARTER_CREDIT_DAYS = 30
STARTER_CREDIT_TAG = "starter-credit"
USAGE_TAG = "api-usage"
REFUND_TAG = "refund"
EXPIRED_TAG = "credit-expired"


def lot_takes(lots: Iterable[Lot], spend: int, now: int) -> Iterator[tuple[Lot, int, bool]]:
    """Expiring money: what is left of a deposit at its expiry is forfeited, by the first write
    to the account after it (or the sweep); a withdrawal spends expiring money before money that
    never expires, the earliest expiry first (ties: the oldest deposit), so a user loses as
    little as possible to expiry. A deposit that arrives while the balance is negative does not
    pay off the debt first: if it expires unspent, all of it is forfeited.

    `lots` come in expiry order, so expired ones first; once nothing is left to spend, the
    first lot that has not expired ends the walk (for most writes: at once)."""
    left = spend
    for lot in lots:
        if lot.expires_at <= now:
            yield lot, lot.remaining, True
        elif left == 0:
            return
        else:
            take = min(lot.remaining, left)
            yield lot, take, False
            left -= take


def forfeiture(lot: Lot, currency: str, cents: int) -> tuple[str, str, dict[str, Any]]:
    """A forfeit is a withdraw of its own, tagged and noted so that it leads back to its deposit."""
    return (EXPIRED_TAG, f"Expired credit: {cents} cents {currency} (deposit {lot.id})",
            {"expiredTransactionId": lot.id, "expiredAt": format_ts(lot.expires_at)})


LOTS = LotRules(lot_takes, forfeiture)


def available(balance: int, holds: int) -> int:
    """What a user may still spend or hold: never below zero, even when usage (recorded
    whatever the balance) has taken the balance negative."""
    return max(balance - holds, 0)


def _balance(user: str, currency: str, balance: int, holds: int) -> dict[str, Any]:
    """One account's balance as answered (get_balance writes it out: keep the two alike)."""
    return {"user": user, "currency": currency, "balance": balance, "holds": holds, "available": available(balance, holds)}


async def get_balance(ctx: Context, p: Any) -> dict[str, Any]:
    # `_balance` and `available` written out, and the tenant read off the principal: three
    # Python calls fewer on the most frequent call (callgrind, getBalance: 329.6k -> 326.2k
    # instructions per request, with Caller.call testing authorize's case before calling it)
    user, currency = p.user, p.currency
    balance, holds = await ctx.store.balance(ctx.principal.tenant, user, currency, ctx.now)
    spendable = balance - holds
    return {"user": user, "currency": currency, "balance": balance, "holds": holds, "available": spendable if spendable > 0 else 0}


async def get_balance_all(ctx: Context, p: Any) -> dict[str, Any]:
    rows = await ctx.store.balances(ctx.tenant, p.user, ctx.now)
    balances = []
    for currency, balance, holds in rows:
        entry = _balance(p.user, currency, balance, holds)
        del entry["user"]
        balances.append(entry)
    return {"user": p.user, "balances": balances}


async def get_usage(ctx: Context, p: Any) -> dict[str, Any]:
    try:
        rows, has_more = await ctx.store.usage_page(ctx.tenant, p.user, p.currency, p.limit, p.startingAfter)
    except Missing:
        raise NotFound("transaction not found", param="startingAfter") from None
    usage = [
        {"transactionId": r["id"], "amount": r["amount"], "currency": r["currency"], "notes": r["notes"],
         "metadata": r["metadata"] or {}, "createdAt": format_ts(r["createdAt"])}
        for r in rows
    ]
    return {"user": p.user, "count": len(usage), "hasMore": has_more, "usage": usage}


async def record_usage(ctx: Context, p: Any) -> dict[str, Any]:
    if p.amount <= 0:
        skipped = Unchanged(user=p.user, amount=0, status="skipped")
        if ctx.idempotency is None:
            return skipped
        # A key is claimed by every call that carries it, whatever the call wrote: unclaimed, the
        # same key with an amount would charge, and a true retry of this call would then be a
        # conflict.
        return Unchanged(await ctx.store.claim_idempotency(ctx.tenant, ctx.idempotency, ctx.now, skipped))
    metadata = {
        "model": p.model, "provider": p.provider, "promptTokens": p.promptTokens,
        "completionTokens": p.completionTokens, "totalTokens": p.totalTokens, "requestId": p.requestId,
        "premium": p.premium, "stream": p.stream, "status": p.status, "clientIp": p.clientIp,
    }
    row = await append(ctx, NewEntry(
        type="withdraw", user=p.user, currency=p.currency, amount=p.amount, now=ctx.now, key_id=ctx.key_id, lots=LOTS, tags=USAGE_TAG,
        notes=f"API usage: {p.model} ({p.totalTokens} tokens)", metadata=metadata,
        dedupe_key=f"usage:{p.requestId}" if p.requestId else None,
        usage_event=UsageEvent(USAGE_TAG, {"model": p.model, "provider": p.provider}),
    ))
    return {"user": row["user"], "amount": row["amount"], "transactionId": row["id"], "currency": row["currency"], "type": row["type"]}


def _transaction(row: LedgerRow) -> dict[str, Any]:
    return {"transactionId": row["id"], "user": row["user"], "amount": row["amount"], "currency": row["currency"], "type": row["type"], "tags": row["tags"]}


async def deposit(ctx: Context, p: Any) -> dict[str, Any]:
    row = await append(ctx, NewEntry(
        type="deposit", user=p.user, currency=p.currency, amount=p.amount, now=ctx.now, key_id=ctx.key_id, lots=LOTS, tags=p.tags,
        notes=p.notes or f"Deposit: {p.amount} cents {p.currency}", metadata=p.metadata,
        expires_at=ctx.now + p.expiresIn * DAY if p.expiresIn > 0 else None,
    ))
    result = _transaction(row) | {"metadata": row["metadata"] or {}}
    if row["expiresAt"] is not None:
        result["expiresAt"] = format_ts(row["expiresAt"])
    return result


async def grant_starter_credit(ctx: Context, p: Any) -> dict[str, Any]:
    row = await append(ctx, NewEntry(
        type="deposit", user=p.user, currency="usd", amount=STARTER_CREDIT_CENTS, now=ctx.now, key_id=ctx.key_id, lots=LOTS,
        tags=STARTER_CREDIT_TAG,
        notes=f"Welcome credit: ${STARTER_CREDIT_CENTS // 100}.{STARTER_CREDIT_CENTS % 100:02d} USD (expires in {STARTER_CREDIT_DAYS} days)",
        metadata={"creditType": "starter", "expiryDays": STARTER_CREDIT_DAYS},
        expires_at=ctx.now + STARTER_CREDIT_DAYS * DAY, dedupe_key=STARTER_CREDIT_TAG,
    ))
    expires_at = row["expiresAt"]
    assert expires_at is not None, "a starter credit always expires"
    return _transaction(row) | {"expiresAt": format_ts(expires_at)}


def is_charge(row: LedgerRow) -> bool:
    """Only a charge can be refunded: a refund of a refund, a deposit or a starter credit would
    add money that was never taken (a chain of refunds of refunds minted it without bound).
    A forfeit of expired credit is a withdraw but no charge: refunding it would turn credit
    that was given away, and has expired, into money that never expires (restore expired
    credit with a new deposit, which can expire again)."""
    return row["type"] == "withdraw" and row["tags"] != EXPIRED_TAG


async def refund(ctx: Context, p: Any) -> dict[str, Any]:
    try:
        row = await append(ctx, NewEntry(
            type="deposit", user=p.user, currency=p.currency, amount=p.amount, now=ctx.now, key_id=ctx.key_id, lots=LOTS,
            tags=REFUND_TAG,
            notes=p.notes or f"Refund: {p.amount} cents {p.currency} (original tx: {p.originalTransactionId})",
            metadata={"refundType": "billing-correction", "originalTransactionId": p.originalTransactionId},
            refund_of=p.originalTransactionId,
        ), is_charge)
    except Missing:
        raise NotFound("original transaction not found", param="originalTransactionId") from None
    except NotRefundable as exc:
        what = "a forfeit of expired credit" if exc.type == "withdraw" and exc.tags == EXPIRED_TAG else f"a {exc.type}"
        raise InvalidParams(f"only a charge can be refunded: {p.originalTransactionId} is {what}",
                            param="originalTransactionId") from None
    except RefundLeft as exc:
        raise InvalidParams(f"refund exceeds original: {exc.left} of {exc.amount} cents left to refund", param="amount") from None
    return _transaction(row) | {"originalTransactionId": row["refundOf"]}


async def append(ctx: Context, entry: NewEntry, refundable: Any = None) -> LedgerRow:
    """Every ledger write of a handler: one store write, under the call's idempotency key."""
    try:
        return await ctx.store.append_ledger_row(ctx.tenant, entry, ctx.idempotency, refundable)
    except OutOfRange as exc:
        raise InvalidParams(_OUT_OF_RANGE.get(exc.total, _OUT_OF_RANGE["balance"]), param="amount") from None


_OUT_OF_RANGE = {
    "balance": "amount would take the balance outside the signed 64-bit range",
    # an expiring deposit's: the store keeps an account's unspent expiring credit within int64,
    # so that every sum of it a read makes is one too (store/sqlite/ledger.py _bound_credit)
    "credit": "amount would take the user's unspent expiring credit outside the signed 64-bit range",
}


# -- the money history ----------------------------------------------------------------------

def transaction_result(row: LedgerRow) -> dict[str, Any]:
    out = {
        "transactionId": row["id"], "user": row["user"], "currency": row["currency"], "type": row["type"],
        "amount": row["amount"], "tags": row["tags"], "notes": row["notes"], "metadata": row["metadata"] or {},
        "createdAt": format_ts(row["createdAt"]),
    }
    if row["expiresAt"] is not None:
        out["expiresAt"] = format_ts(row["expiresAt"])
    if row["refundOf"] is not None:
        out["originalTransactionId"] = row["refundOf"]
    if row["holdId"] is not None:
        out["holdId"] = row["holdId"]
    out["keyId"] = row["keyId"]
    return out


async def list_transactions(ctx: Context, p: Any) -> dict[str, Any]:
    where = LedgerFilter(
        currency=p.currency, type=p.type, tag=p.tag,
        created_from=parse_ts(p.createdAfter) if p.createdAfter else None,
        created_before=parse_ts(p.createdBefore, period_end=True) if p.createdBefore else None,
    )
    try:
        rows, has_more = await ctx.store.ledger_page(ctx.tenant, p.user, where, p.limit, p.startingAfter)
    except Missing:
        raise NotFound("transaction not found", param="startingAfter") from None
    transactions = [transaction_result(r) for r in rows]
    return {"user": p.user, "count": len(transactions), "hasMore": has_more, "transactions": transactions}


async def list_accounts(ctx: Context, p: Any) -> dict[str, Any]:
    rows, has_more = await ctx.store.accounts_page(ctx.tenant, p.currency, p.maxAvailable, p.limit, p.startingAfter, ctx.now)
    accounts = [_balance(r["user"], p.currency, r["balance"], r["holds"]) for r in rows]
    for a in accounts:
        del a["currency"]
    return {"currency": p.currency, "count": len(accounts), "hasMore": has_more, "accounts": accounts}
