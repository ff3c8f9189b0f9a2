"""Pricing maths in integer cents: per unit, graduated (`tiered`) and volume tiers.

A tier is {upTo, price, flat}. `upTo` is the cumulative last unit of the tier for both tiered
models (the Go reference service read it as a width for graduated pricing: a Fix); 0 means no upper bound
and is required on the last tier and allowed only there, as Stripe requires. Python integers do
not overflow, so every total is checked against the int64 range before it leaves this module.
"""
from __future__ import annotations

from typing import Any, Iterable, NamedTuple

INT64_MAX = 2**63 - 1
MODELS = ("per_unit", "tiered", "volume")


class PricingError(ValueError):
    """A rule that cannot price anything, or a total beyond the int64 range."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class Price(NamedTuple):
    total: int
    unit_cost: int
    """The one price every unit pays (per_unit, volume); 0 for graduated pricing."""


def _get(tier: Any, name: str) -> int:
    value: int = tier[name] if isinstance(tier, dict) else getattr(tier, name)
    return value


def check_rule(model: str, unit_price: int, tiers: list[Any]) -> None:
    """Raise PricingError with a caller-facing message if the rule is not well formed."""
    if model not in MODELS:
        raise PricingError(f"unknown pricing model: {model}", "model")
    if unit_price < 0:
        raise PricingError("unitPrice must not be negative", "unitPrice")
    if model == "per_unit":
        if tiers:
            raise PricingError("tiers are only for the tiered and volume models", "tiers")
        return
    if not tiers:
        raise PricingError(f"tiers are required for the {model} model", "tiers")
    previous = 0
    for i, tier in enumerate(tiers):
        up_to, price, flat = _get(tier, "upTo"), _get(tier, "price"), _get(tier, "flat")
        if up_to < 0 or price < 0 or flat < 0:
            raise PricingError(f"tiers[{i}]: upTo, price and flat must not be negative", f"tiers[{i}]")
        last = i == len(tiers) - 1
        if up_to == 0:
            if not last:
                raise PricingError(f"tiers[{i}]: only the last tier may be unbounded (upTo 0)", f"tiers[{i}].upTo")
        elif last:
            raise PricingError("the last tier must be unbounded (upTo 0)", f"tiers[{i}].upTo")
        elif up_to <= previous:
            raise PricingError(
                f"tiers[{i}]: upTo must be greater than the previous tier's ({previous}): tiers out of order", f"tiers[{i}].upTo"
            )
        previous = up_to


def _bounded(value: int) -> int:
    if value > INT64_MAX:
        raise PricingError("the price of this usage is beyond the signed 64-bit range")
    return value


def price(model: str, unit_price: int, tiers: list[Any], quantity: int) -> Price:
    """What `quantity` units cost. No units (or a negative quantity) cost nothing."""
    if quantity <= 0:
        return Price(0, unit_price if model == "per_unit" else 0)
    if model == "per_unit":
        return Price(_bounded(quantity * unit_price), unit_price)
    if model == "volume":
        for tier in tiers:
            up_to = _get(tier, "upTo")
            if up_to == 0 or quantity <= up_to:
                p = _get(tier, "price")
                return Price(_bounded(quantity * p + _get(tier, "flat")), p)
        raise PricingError("no tier covers this quantity")  # check_rule makes this unreachable
    total, floor = 0, 0
    for tier in tiers:
        up_to = _get(tier, "upTo")
        ceiling = quantity if up_to == 0 else min(quantity, up_to)
        if ceiling <= floor:
            break
        total += (ceiling - floor) * _get(tier, "price") + _get(tier, "flat")
        floor = ceiling
    return Price(_bounded(total), 0)


def checked_sum(values: Iterable[int]) -> int:
    return _bounded(sum(values))
