"""Pricing rules on PostgreSQL (as ../sqlite/pricing.py): how a meter's quantity becomes money,
per plan and currency."""
from __future__ import annotations

from typing import Any

import asyncpg

from ..base import Idempotency, NewRule, RuleRow
from ..ids import new_id
from ..refusals import Missing, QuotaReached
from ..rows import RULE_COLUMNS as _RULE, rule_row, json_text
from .connection import PgBase
from ...loop_turn import converted
from ..rows import ROWS_PER_STEP



class PricingQueries(PgBase):
    async def create_rule(
        self, tenant: int, rule: NewRule, idempotency: Idempotency | None = None, *, quota: int | None = None
    ) -> RuleRow:
        return await self._write(tenant, idempotency, rule.now, _create_rule, tenant, new_id("pr"), rule, quota)  # type: ignore[no-any-return]

    async def list_rules(
        self, tenant: int, meter_id: str | None = None, plan_id: str | None = None, currency: str | None = None
    ) -> list[RuleRow]:
        """In creation order, optionally only one meter's, one plan's or one currency's."""
        where, params = "tenant = $1", list[Any]([tenant])
        for column, value in (("meter_id", meter_id), ("plan_id", plan_id), ("currency", currency)):
            if value is not None:
                params.append(value)
                where += f" AND {column} = ${len(params)}"
        rows = await self._read(f"SELECT {_RULE} FROM pricing_rules WHERE {where} ORDER BY seq", *params)
        return await converted(rows, rule_row, ROWS_PER_STEP)

    async def delete_rule(self, tenant: int, rule_id: str, now: int, idempotency: Idempotency | None = None) -> None:
        await self._write(tenant, idempotency, now, _delete_rule, tenant, rule_id)


async def _create_rule(conn: asyncpg.Connection, tenant: int, rule_id: str, r: NewRule, quota: int | None) -> RuleRow:
    """The meter's rules counted and the rule inserted in one transaction. Under READ COMMITTED
    two creates at the bound could both count the same rules, so the meter's row is locked
    FOR UPDATE first (which is also the check that the meter exists): creates of one meter's
    rules queue there and each counts after the previous one's commit. No other write locks a
    meter row, so this lock joins no cycle."""
    if await conn.fetchval("SELECT 1 FROM meters WHERE tenant = $1 AND id = $2 FOR UPDATE", tenant, r.meter_id) is None:
        raise Missing("meter")
    if quota is not None:
        held = await conn.fetchval("SELECT COUNT(*) FROM pricing_rules WHERE tenant = $1 AND meter_id = $2", tenant, r.meter_id)
        if held >= quota:
            raise QuotaReached("pricing rule", quota)
    row = await conn.fetchrow(
        f"INSERT INTO pricing_rules (id, tenant, meter_id, plan_id, model, currency, unit_price, tiers, created_at)"
        f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {_RULE}",
        rule_id, tenant, r.meter_id, r.plan_id, r.model, r.currency, r.unit_price, json_text(r.tiers), r.now,
    )
    return rule_row(row)


async def _delete_rule(conn: asyncpg.Connection, tenant: int, rule_id: str) -> None:
    if await conn.fetchval("DELETE FROM pricing_rules WHERE tenant = $1 AND id = $2 RETURNING id", tenant, rule_id) is None:
        raise Missing("pricing rule")
