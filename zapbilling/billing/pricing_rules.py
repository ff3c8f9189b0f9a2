"""Pricing rules: create, list, delete. The maths lives in pricing.py."""
from __future__ import annotations

from typing import Any

from ..context import Context
from ..errors import Conflict, InvalidParams, NotFound
from ..store import Missing, NewRule, RuleRow
from ..store.refusals import QuotaReached
from ..times import format_ts
from .pricing import PricingError, check_rule


def rule_result(r: RuleRow) -> dict[str, Any]:
    return r | {"createdAt": format_ts(r["createdAt"])}


async def create_pricing_rule(ctx: Context, p: Any) -> dict[str, Any]:
    tiers = p.tiers
    try:
        check_rule(p.model, p.unitPrice, tiers)
    except PricingError as exc:
        raise InvalidParams(str(exc), param=exc.param) from None
    try:
        rule = await ctx.store.create_rule(ctx.tenant, NewRule(
            meter_id=p.meterId, plan_id=p.planId, model=p.model, currency=p.currency, unit_price=p.unitPrice,
            tiers=tiers, now=ctx.now,
        ), ctx.idempotency, quota=ctx.limits.rules_per_meter)
    except Missing:
        raise NotFound("meter not found", param="meterId") from None
    except QuotaReached as exc:
        raise Conflict(f"pricing rule quota reached: a meter holds at most {exc.quota} pricing rules", param="meterId") from None
    return rule_result(rule)


async def list_pricing_rules(ctx: Context, p: Any) -> dict[str, Any]:
    if p.meterId is not None and await ctx.store.get_meter(ctx.tenant, p.meterId) is None:
        raise NotFound("meter not found", param="meterId")  # an unknown id is 404, even as a filter
    rules = [rule_result(r) for r in await ctx.store.list_rules(ctx.tenant, meter_id=p.meterId, plan_id=p.planId)]
    return {"rules": rules, "count": len(rules)}


async def delete_pricing_rule(ctx: Context, p: Any) -> dict[str, Any]:
    try:
        await ctx.store.delete_rule(ctx.tenant, p.id, ctx.now, ctx.idempotency)
    except Missing:
        raise NotFound("pricing rule not found", param="id") from None
    return {"id": p.id, "deleted": True}
