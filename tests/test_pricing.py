"""Unit tests of the pricing maths (zapbilling.billing.pricing): `price` and `check_rule`, as the
contract's "Pricing rules and invoice preview" section and the design choices describe them.

upTo is the cumulative last unit of a tier for graduated (`tiered`) and volume pricing alike;
the last tier, and only the last, has upTo 0 (no bound); `flat` is charged once when any unit
falls in the tier (graduated) or once for the chosen tier (volume). Every figure below is worked
out by hand in a comment."""
from __future__ import annotations

import pytest

from zapbilling.billing.pricing import INT64_MAX, PricingError, checked_sum, check_rule, price

pytestmark = pytest.mark.sqlite_only("pricing maths; the rules' storage is in test_quotas and test_invoice")

# The contract's example tiers.
EXAMPLE = [{"upTo": 100, "price": 10, "flat": 0}, {"upTo": 500, "price": 5, "flat": 0}, {"upTo": 0, "price": 1, "flat": 100}]


def tier(up_to: int = 0, price: int = 0, flat: int = 0) -> dict[str, int]:
    return {"upTo": up_to, "price": price, "flat": flat}


# -- price: the contract's worked example ---------------------------------------------------

def test_contract_example_graduated_600_units_cost_3200():
    # 100x10 + 400x5 + (100 flat + 100x1) = 1000 + 2000 + 200 = 3200
    p = price("tiered", 0, EXAMPLE, 600)
    assert p.total == 3200
    assert p.unit_cost == 0  # graduated pricing has no single unit price


def test_volume_equivalent_of_the_example_600_units_cost_700():
    # 600 falls in the last tier, which prices every unit: 600x1 + 100 flat = 700
    p = price("volume", 0, EXAMPLE, 600)
    assert p.total == 700
    assert p.unit_cost == 1


# -- price: units exactly on and just past a tier bound -------------------------------------

@pytest.mark.parametrize("quantity, total", [
    (1, 10),      # 1x10
    (100, 1000),  # 100x10: the 100th unit is still in the first tier
    (101, 1005),  # 100x10 + 1x5
    (500, 3000),  # 100x10 + 400x5: the 500th unit is still in the second tier
    (501, 3101),  # 100x10 + 400x5 + (100 flat + 1x1)
])
def test_graduated_units_on_tier_bounds(quantity, total):
    assert price("tiered", 0, EXAMPLE, quantity) == (total, 0)


@pytest.mark.parametrize("quantity, total, unit_cost", [
    (1, 10, 10),      # first tier: 1x10
    (100, 1000, 10),  # 100 <= 100: first tier, 100x10
    (101, 505, 5),    # second tier prices all 101 units: 101x5
    (500, 2500, 5),   # 500 <= 500: second tier, 500x5
    (501, 601, 1),    # last tier: 501x1 + 100 flat
])
def test_volume_units_on_tier_bounds(quantity, total, unit_cost):
    assert price("volume", 0, EXAMPLE, quantity) == (total, unit_cost)


# -- price: flat fees -----------------------------------------------------------------------

FLATS = [tier(10, 2, 50), tier(20, 1, 30), tier(0, 0, 1000)]


@pytest.mark.parametrize("quantity, total", [
    (1, 52),      # 1x2 + 50 flat: the flat is charged as soon as one unit falls in the tier
    (10, 70),     # 10x2 + 50
    (11, 101),    # 70 + (1x1 + 30)
    (20, 110),    # 70 + (10x1 + 30)
    (21, 1110),   # 110 + (1x0 + 1000): a flat-only tier
    (500, 1110),  # the last tier has price 0, so more units cost nothing more
])
def test_graduated_flat_is_charged_once_per_tier_reached(quantity, total):
    assert price("tiered", 0, FLATS, quantity) == (total, 0)


@pytest.mark.parametrize("quantity, total, unit_cost", [
    (1, 52, 2),       # 1x2 + 50
    (10, 70, 2),      # 10x2 + 50
    (11, 41, 1),      # 11x1 + 30: only the chosen tier's flat, not the first tier's
    (20, 50, 1),      # 20x1 + 30
    (21, 1000, 0),    # 21x0 + 1000
])
def test_volume_charges_only_the_chosen_tiers_flat(quantity, total, unit_cost):
    assert price("volume", 0, FLATS, quantity) == (total, unit_cost)


# -- price: no units, per unit ---------------------------------------------------------------

@pytest.mark.parametrize("model, unit_price, tiers", [
    ("per_unit", 7, []),
    ("tiered", 0, EXAMPLE),
    ("volume", 0, EXAMPLE),
    ("tiered", 0, FLATS),  # flat fees are not charged when no unit falls in a tier
    ("volume", 0, FLATS),
])
@pytest.mark.parametrize("quantity", [0, -1, -600])
def test_zero_and_negative_quantities_cost_nothing(model, unit_price, tiers, quantity):
    assert price(model, unit_price, tiers, quantity).total == 0


@pytest.mark.parametrize("quantity, unit_price, total", [
    (1, 7, 7),
    (13, 7, 91),     # 13x7
    (1000, 0, 0),    # a free meter
    (250, 12, 3000),  # 250x12
])
def test_per_unit_is_quantity_times_unit_price(quantity, unit_price, total):
    assert price("per_unit", unit_price, [], quantity) == (total, unit_price)


def test_price_accepts_tier_objects_as_well_as_dicts():
    class Tier:
        def __init__(self, upTo, price, flat):  # noqa: N803 (the schema's field names)
            self.upTo, self.price, self.flat = upTo, price, flat

    tiers = [Tier(t["upTo"], t["price"], t["flat"]) for t in EXAMPLE]
    assert price("tiered", 0, tiers, 600) == (3200, 0)
    assert price("volume", 0, tiers, 600) == (700, 1)


# -- check_rule -----------------------------------------------------------------------------

@pytest.mark.parametrize("model, unit_price, tiers", [
    ("per_unit", 0, []),
    ("per_unit", 25, []),
    ("tiered", 0, EXAMPLE),
    ("volume", 0, EXAMPLE),
    ("tiered", 0, [tier(0, 3)]),         # one unbounded tier
    ("volume", 0, [tier(0, 0, 500)]),   # a flat-only tier
    ("tiered", 0, [tier(1, 1), tier(2, 1), tier(0, 1)]),
])
def test_check_rule_accepts_well_formed_rules(model, unit_price, tiers):
    assert check_rule(model, unit_price, tiers) is None


def _rejects(model: str, unit_price: int, tiers: list, message: str, param: str) -> None:
    with pytest.raises(PricingError) as exc:
        check_rule(model, unit_price, tiers)
    assert message in str(exc.value)
    assert exc.value.param == param


def test_check_rule_rejects_an_unknown_model():
    _rejects("graduated", 0, EXAMPLE, "unknown pricing model: graduated", "model")
    _rejects("", 0, [], "unknown pricing model", "model")


@pytest.mark.parametrize("model", ["tiered", "volume"])
@pytest.mark.parametrize("tiers, at", [
    ([tier(500, 5), tier(100, 10), tier(0, 1)], 1),   # decreasing
    ([tier(100, 10), tier(100, 5), tier(0, 1)], 1),   # equal: upTo must strictly increase
    ([tier(100, 10), tier(500, 5), tier(300, 2), tier(0, 1)], 2),
])
def test_check_rule_rejects_tiers_out_of_order(model, tiers, at):
    _rejects(model, 0, tiers, "tiers out of order", f"tiers[{at}].upTo")


@pytest.mark.parametrize("model", ["tiered", "volume"])
def test_check_rule_rejects_an_unbounded_tier_before_the_last(model):
    _rejects(model, 0, [tier(0, 10), tier(0, 1)], "only the last tier may be unbounded", "tiers[0].upTo")
    _rejects(model, 0, [tier(100, 10), tier(0, 5), tier(0, 1)], "only the last tier may be unbounded", "tiers[1].upTo")
    _rejects(model, 0, [tier(100, 10), tier(0, 5), tier(500, 1)], "only the last tier may be unbounded", "tiers[1].upTo")


@pytest.mark.parametrize("model", ["tiered", "volume"])
def test_check_rule_rejects_a_bounded_last_tier(model):
    _rejects(model, 0, [tier(100, 10), tier(500, 5)], "the last tier must be unbounded", "tiers[1].upTo")
    _rejects(model, 0, [tier(100, 10)], "the last tier must be unbounded", "tiers[0].upTo")


@pytest.mark.parametrize("model", ["per_unit", "tiered", "volume"])
def test_check_rule_rejects_a_negative_unit_price(model):
    _rejects(model, -1, [] if model == "per_unit" else EXAMPLE, "unitPrice must not be negative", "unitPrice")


@pytest.mark.parametrize("model", ["tiered", "volume"])
@pytest.mark.parametrize("bad, at", [
    ([tier(-100, 10), tier(0, 1)], 0),           # negative upTo
    ([tier(100, -10), tier(0, 1)], 0),           # negative price
    ([tier(100, 10), tier(0, 1, -5)], 1),        # negative flat
    ([tier(100, 10), tier(500, 5, -1), tier(0, 1)], 1),
])
def test_check_rule_rejects_negative_tier_fields(model, bad, at):
    _rejects(model, 0, bad, "must not be negative", f"tiers[{at}]")


def test_check_rule_rejects_tiers_on_a_per_unit_rule():
    _rejects("per_unit", 5, EXAMPLE, "tiers are only for the tiered and volume models", "tiers")
    _rejects("per_unit", 5, [tier(0, 5)], "tiers are only for the tiered and volume models", "tiers")


@pytest.mark.parametrize("model", ["tiered", "volume"])
def test_check_rule_requires_tiers_for_tiered_and_volume(model):
    _rejects(model, 0, [], f"tiers are required for the {model} model", "tiers")
    _rejects(model, 5, [], f"tiers are required for the {model} model", "tiers")


# -- int64 ----------------------------------------------------------------------------------

def test_totals_up_to_int64_max_are_allowed():
    assert price("per_unit", 1, [], INT64_MAX).total == INT64_MAX
    # (MAX - 1) x 1 + 1 flat = MAX
    assert price("volume", 0, [tier(0, 1, 1)], INT64_MAX - 1).total == INT64_MAX
    assert price("tiered", 0, [tier(10, 0, INT64_MAX - 5), tier(0, 5)], 11).total == INT64_MAX
    assert checked_sum([INT64_MAX - 1, 1]) == INT64_MAX


@pytest.mark.parametrize("model, unit_price, tiers, quantity", [
    ("per_unit", 2, [], 2**62),                            # 2^63
    ("per_unit", INT64_MAX, [], 2),
    ("per_unit", 1, [], INT64_MAX + 1),
    ("volume", 0, [tier(0, 2)], 2**62),                    # 2^63
    ("volume", 0, [tier(0, 1, 1)], INT64_MAX),             # MAX + 1 flat
    ("tiered", 0, [tier(0, 3)], 2**62),                    # 3 x 2^62
    ("tiered", 0, [tier(1, 0, INT64_MAX), tier(0, 0, 1)], 2),  # two flats, MAX + 1
    ("tiered", 0, [tier(2**62, 1), tier(0, 1, 2**62)], 2**62 + 1),  # 2^62 + (2^62 + 1)
])
def test_int64_overflow_raises_pricing_error(model, unit_price, tiers, quantity):
    with pytest.raises(PricingError, match="64-bit"):
        price(model, unit_price, tiers, quantity)


def test_checked_sum_beyond_int64_raises_pricing_error():
    with pytest.raises(PricingError, match="64-bit"):
        checked_sum([INT64_MAX, 1])
    with pytest.raises(PricingError, match="64-bit"):
        checked_sum([2**62, 2**62])
