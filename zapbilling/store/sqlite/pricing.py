"""Pricing rules: how a meter's quantity becomes money, per plan and currency."""
from __future__ import annotations

import sqlite3
from typing import Any

from ..base import Idempotency, NewRule, RuleRow
from ..ids import new_id
from .connection import SqliteBase
from ..refusals import Missing, QuotaReached
from ..rows import RULE_COLUMNS as _RULE, rule_row, json_text
from ...loop_turn import converted
from ..rows import ROWS_PER_STEP



class PricingQueries(SqliteBase):
    async def create_rule(
        self, tenant: int, rule: NewRule, idempotency: Idempotency | None = None, *, quota: int | None = None
    ) -> RuleRow:
        return await self._write(tenant, idempotency, rule.now, _create_rule, tenant, new_id("pr"), rule, quota)

    async def list_rules(
        self, tenant: int, meter_id: str | None = None, plan_id: str | None = None, currency: str | None = None
    ) -> list[RuleRow]:
        """In creation order, optionally only one meter's, one plan's or one currency's."""
        where, params = "tenant = ?", list[Any]([tenant])
        for column, value in (("meter_id", meter_id), ("plan_id", plan_id), ("currency", currency)):
            if value is not None:
                where += f" AND {column} = ?"
                params.append(value)
        rows = await self._read(f"SELECT {_RULE} FROM pricing_rules WHERE {where} ORDER BY seq", tuple(params))
        return await converted(rows, rule_row, ROWS_PER_STEP)

    async def delete_rule(self, tenant: int, rule_id: str, now: int, idempotency: Idempotency | None = None) -> None:
        await self._write(tenant, idempotency, now, _delete_rule, tenant, rule_id)


def _create_rule(conn: sqlite3.Connection, tenant: int, rule_id: str, r: NewRule, quota: int | None) -> RuleRow:
    """The meter's rules counted and the rule inserted in one job on the writer (one
    transaction): two creates at the bound cannot both see room for one more."""
    if conn.execute("SELECT 1 FROM meters WHERE tenant = ? AND id = ?", (tenant, r.meter_id)).fetchone() is None:
        raise Missing("meter")
    if quota is not None:
        (held,), = conn.execute("SELECT COUNT(*) FROM pricing_rules WHERE tenant = ? AND meter_id = ?", (tenant, r.meter_id)).fetchall()
        if held >= quota:
            raise QuotaReached("pricing rule", quota)
    row = conn.execute(
        f"INSERT INTO pricing_rules (id, tenant, meter_id, plan_id, model, currency, unit_price, tiers, created_at)"
        f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {_RULE}",
        (rule_id, tenant, r.meter_id, r.plan_id, r.model, r.currency, r.unit_price, json_text(r.tiers), r.now),
    ).fetchone()
    return rule_row(row)


def _delete_rule(conn: sqlite3.Connection, tenant: int, rule_id: str) -> None:
    if conn.execute("DELETE FROM pricing_rules WHERE tenant = ? AND id = ? RETURNING id", (tenant, rule_id)).fetchone() is None:
        raise Missing("pricing rule")
