"""Credit grants: separate pots of credit, burned down in one transaction so that two
concurrent burns can never spend the same cents."""
from __future__ import annotations

import json
import sqlite3
from typing import Any

from ..errors import InvalidParams, NotFound
from .base import BurnPlan, Idempotency
from .connection import SqliteBase, new_id

_GRANT = ("id, user_id, name, amount, remaining, currency, priority, effective_at, expires_at, eligibility, tags,"
          " voided_at, created_at")
_ACTIVE = ("voided_at IS NULL AND remaining > 0 AND effective_at <= :now AND (expires_at IS NULL OR expires_at > :now)")


def grant_row(r: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "id": r[0], "userId": r[1], "name": r[2], "amountCents": r[3], "remainingCents": r[4], "currency": r[5],
        "priority": r[6], "effectiveAt": r[7], "expiresAt": r[8], "eligibility": json.loads(r[9]), "tags": r[10],
        "voidedAt": r[11], "createdAt": r[12],
    }


class GrantQueries(SqliteBase):
    async def create_grant(
        self, tenant: int, user: str, name: str, amount: int, currency: str, priority: int,
        effective_at: int, expires_at: int | None, eligibility: list[str], tags: str, now: int,
        idempotency: Idempotency | None = None,
    ) -> dict[str, Any]:
        return await self._write(
            tenant, idempotency, now, _create_grant, tenant, new_id("cg"), user, name, amount, currency, priority, effective_at, expires_at, eligibility, tags, now
        )

    async def list_grants(self, tenant: int, user: str) -> list[dict[str, Any]]:
        rows = await self._read(f"SELECT {_GRANT} FROM credit_grants WHERE tenant = ? AND user_id = ? ORDER BY seq", (tenant, user))
        return [grant_row(r) for r in rows]

    async def active_grants(self, tenant: int, user: str, now: int, currency: str | None = None) -> list[dict[str, Any]]:
        """Active grants (of one currency, if given) in creation order."""
        where = "tenant = :tenant AND user_id = :user" + (" AND currency = :currency" if currency is not None else "")
        rows = await self._read(
            f"SELECT {_GRANT} FROM credit_grants WHERE {where} AND {_ACTIVE} ORDER BY seq",
            {"tenant": tenant, "user": user, "currency": currency, "now": now},
        )
        return [grant_row(r) for r in rows]

    async def void_grant(self, tenant: int, grant_id: str, now: int, idempotency: Idempotency | None = None) -> dict[str, Any]:
        return await self._write(tenant, idempotency, now, _void_grant, tenant, grant_id, now)

    async def burn_grants(
        self, tenant: int, user: str, currency: str, amount: int, meter_id: str | None, now: int, plan: BurnPlan,
        idempotency: Idempotency | None = None,
    ) -> list[dict[str, Any]]:
        """Burn `amount` from the active grants as `plan` (the domain's burn order) decides,
        inside one transaction. Returns [{id, burned, remainingCents}] in burn order."""
        return await self._write(tenant, idempotency, now, _burn, tenant, user, currency, amount, meter_id, now, plan)


def _check_meters(conn: sqlite3.Connection, tenant: int, meter_ids: list[str], param: str) -> None:
    for i, meter_id in enumerate(meter_ids):
        if conn.execute("SELECT 1 FROM meters WHERE tenant = ? AND id = ?", (tenant, meter_id)).fetchone() is None:
            raise NotFound("meter not found", param=f"{param}[{i}]" if param == "eligibility" else param)


def _create_grant(
    conn: sqlite3.Connection, tenant: int, grant_id: str, user: str, name: str, amount: int, currency: str,
    priority: int, effective_at: int, expires_at: int | None, eligibility: list[str], tags: str, now: int,
) -> dict[str, Any]:
    _check_meters(conn, tenant, eligibility, "eligibility")
    row = conn.execute(
        f"INSERT INTO credit_grants (id, tenant, user_id, name, amount, remaining, currency, priority, effective_at,"
        f" expires_at, eligibility, tags, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {_GRANT}",
        (grant_id, tenant, user, name, amount, amount, currency, priority, effective_at, expires_at,
         json.dumps(eligibility), tags, now),
    ).fetchone()
    return grant_row(row)


def _void_grant(conn: sqlite3.Connection, tenant: int, grant_id: str, now: int) -> dict[str, Any]:
    row = conn.execute(
        f"UPDATE credit_grants SET voided_at = ? WHERE tenant = ? AND id = ? AND voided_at IS NULL RETURNING {_GRANT}",
        (now, tenant, grant_id),
    ).fetchone()
    if row is not None:
        return grant_row(row)
    if conn.execute("SELECT 1 FROM credit_grants WHERE tenant = ? AND id = ?", (tenant, grant_id)).fetchone():
        raise InvalidParams("grant is already voided", param="id")
    raise NotFound("credit grant not found", param="id")


def _burn(
    conn: sqlite3.Connection, tenant: int, user: str, currency: str, amount: int, meter_id: str | None, now: int, plan: BurnPlan
) -> list[dict[str, Any]]:
    if meter_id is not None:
        _check_meters(conn, tenant, [meter_id], "meterId")
    rows = conn.execute(
        f"SELECT {_GRANT} FROM credit_grants WHERE tenant = :tenant AND user_id = :user AND currency = :currency"
        f" AND {_ACTIVE} ORDER BY seq",
        {"tenant": tenant, "user": user, "currency": currency, "now": now},
    ).fetchall()
    burned = []
    for grant, take in plan([grant_row(r) for r in rows], amount, meter_id):
        (left,), = conn.execute(
            "UPDATE credit_grants SET remaining = remaining - ? WHERE id = ? AND remaining >= ? RETURNING remaining",
            (take, grant["id"], take),
        ).fetchall()
        burned.append({"id": grant["id"], "burned": take, "remainingCents": left})
    return burned
