"""The balance ledger: balances, usage, deposits, the starter credit and refunds.

A mutating handler makes exactly one store write and builds its answer only from what that
write returned: an idempotent replay hands back the stored write result, and the same
formatting then yields the same answer byte for byte.
"""
from __future__ import annotations

from typing import Any

from ..context import Context, Unchanged
from ..store import LedgerRow, NewEntry, UsageEvent
from ..times import DAY, format_ts

STARTER_CREDIT_CENTS = 500
STARTER_CREDIT_DAYS = 30
STARTER_CREDIT_TAG = "starter-credit"
USAGE_TAG = "api-usage"
REFUND_TAG = "refund"


def _balance(user: str, currency: str, balance: int, holds: int) -> dict[str, Any]:
    return {"user": user, "currency": currency, "balance": balance, "holds": holds, "available": max(balance - holds, 0)}


async def get_balance(ctx: Context, p: Any) -> dict[str, Any]:
    balance, holds = await ctx.store.balance(ctx.tenant, p.user, p.currency, ctx.now)
    return _balance(p.user, p.currency, balance, holds)


async def get_balance_all(ctx: Context, p: Any) -> dict[str, Any]:
    rows = await ctx.store.balances(ctx.tenant, p.user, ctx.now)
    balances = []
    for currency, balance, holds in rows:
        entry = _balance(p.user, currency, balance, holds)
        del entry["user"]
        balances.append(entry)
    return {"user": p.user, "balances": balances}


async def get_usage(ctx: Context, p: Any) -> dict[str, Any]:
    rows, has_more = await ctx.store.usage_page(ctx.tenant, p.user, p.currency, p.limit, p.startingAfter)
    usage = [
        {"transactionId": r["id"], "amount": r["amount"], "currency": r["currency"], "notes": r["notes"],
         "metadata": r["metadata"] or {}, "createdAt": format_ts(r["createdAt"])}
        for r in rows
    ]
    return {"user": p.user, "count": len(usage), "hasMore": has_more, "usage": usage}


async def record_usage(ctx: Context, p: Any) -> dict[str, Any]:
    if p.amount <= 0:
        return Unchanged(user=p.user, amount=0, status="skipped")
    metadata = {
        "model": p.model, "provider": p.provider, "promptTokens": p.promptTokens,
        "completionTokens": p.completionTokens, "totalTokens": p.totalTokens, "requestId": p.requestId,
        "premium": p.premium, "stream": p.stream, "status": p.status, "clientIp": p.clientIp,
    }
    row = await ctx.store.append_ledger_row(ctx.tenant, NewEntry(
        type="withdraw", user=p.user, currency=p.currency, amount=p.amount, now=ctx.now, tags=USAGE_TAG,
        notes=f"API usage: {p.model} ({p.totalTokens} tokens)", metadata=metadata,
        dedupe_key=f"usage:{p.requestId}" if p.requestId else None,
        usage_event=UsageEvent(USAGE_TAG, {"model": p.model, "provider": p.provider}, f"usage:{p.user}:{p.requestId}" if p.requestId else None),
    ), ctx.idempotency)
    return {"user": row["user"], "amount": row["amount"], "transactionId": row["id"], "currency": row["currency"], "type": row["type"]}


def _transaction(row: LedgerRow) -> dict[str, Any]:
    return {"transactionId": row["id"], "user": row["user"], "amount": row["amount"], "currency": row["currency"], "type": row["type"], "tags": row["tags"]}


async def deposit(ctx: Context, p: Any) -> dict[str, Any]:
    row = await ctx.store.append_ledger_row(ctx.tenant, NewEntry(
        type="deposit", user=p.user, currency=p.currency, amount=p.amount, now=ctx.now, tags=p.tags,
        notes=p.notes or f"Deposit: {p.amount} cents {p.currency}", metadata=p.metadata,
        expires_at=ctx.now + p.expiresIn * DAY if p.expiresIn > 0 else None,
    ), ctx.idempotency)
    result = _transaction(row) | {"metadata": row["metadata"] or {}}
    if row["expiresAt"] is not None:
        result["expiresAt"] = format_ts(row["expiresAt"])
    return result


async def grant_starter_credit(ctx: Context, p: Any) -> dict[str, Any]:
    row = await ctx.store.append_ledger_row(ctx.tenant, NewEntry(
        type="deposit", user=p.user, currency="usd", amount=STARTER_CREDIT_CENTS, now=ctx.now, tags=STARTER_CREDIT_TAG,
        notes=f"Welcome credit: ${STARTER_CREDIT_CENTS // 100}.{STARTER_CREDIT_CENTS % 100:02d} USD (expires in {STARTER_CREDIT_DAYS} days)",
        metadata={"creditType": "starter", "expiryDays": STARTER_CREDIT_DAYS},
        expires_at=ctx.now + STARTER_CREDIT_DAYS * DAY, dedupe_key=STARTER_CREDIT_TAG,
    ), ctx.idempotency)
    return _transaction(row) | {"expiresAt": format_ts(row["expiresAt"])}


async def refund(ctx: Context, p: Any) -> dict[str, Any]:
    row = await ctx.store.append_ledger_row(ctx.tenant, NewEntry(
        type="deposit", user=p.user, currency=p.currency, amount=p.amount, now=ctx.now, tags=REFUND_TAG,
        notes=p.notes or f"Refund: {p.amount} cents {p.currency} (original tx: {p.originalTransactionId})",
        metadata={"refundType": "billing-correction", "originalTransactionId": p.originalTransactionId},
        refund_of=p.originalTransactionId,
    ), ctx.idempotency)
    return _transaction(row) | {"originalTransactionId": row["refundOf"]}
