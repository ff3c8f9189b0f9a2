"""Credit burn-down: which grants pay for an amount, and how much each pays.

A pure function over grant rows, so the store can run it inside the burn's transaction and the
invoice preview can run it on copies without touching a grant.
"""
from __future__ import annotations

from typing import Any, Iterable


def eligible(grant: dict[str, Any], meter_id: str | None) -> bool:
    """A grant without eligibility pays for anything; one restricted to meters pays only for
    usage of those meters (so never for usage that names no meter)."""
    return not grant["eligibility"] or (meter_id is not None and meter_id in grant["eligibility"])


def _order(grant: dict[str, Any]) -> tuple[int, bool, int]:
    expires = grant["expiresAt"]
    return grant["priority"], expires is None, expires or 0


def plan_burn(grants: Iterable[dict[str, Any]], amount: int, meter_id: str | None) -> list[tuple[dict[str, Any], int]]:
    """(grant, cents taken) in burn order: priority ascending, then earliest expiry, grants
    that never expire last, then creation order. `grants` must be active, of one currency and
    in creation order; grants with nothing left are skipped."""
    plan = []
    left = amount
    for grant in sorted((g for g in grants if eligible(g, meter_id)), key=_order):
        if left <= 0:
            break
        take = min(grant["remainingCents"], left)
        if take > 0:
            plan.append((grant, take))
            left -= take
    return plan
