"""Params are validated first by a model without the Python validators of null (models.py, "the
first pass"), then, if that fails, by the full model. That is only the same service if whatever
the first pass takes, the full model takes too, with the same value: these draw valid params for
every method and put null or "" (the values those validators give a meaning) into any of their
fields, list items' fields included, and compare. No server: the models alone."""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fuzz_strategies import COMMANDS, Command, put, slots, valid_params


def _validated(validate: Any, params: dict[str, Any]) -> tuple[dict[str, Any], set[str]] | None:
    try:
        value = validate(params)
    except Exception:  # noqa: BLE001  # refused: the only other answer
        return None
    return value.model_dump(), value.model_fields_set


def _check(command: Command, params: dict[str, Any]) -> None:
    first = _validated(command.validate, params)
    if first is not None:
        assert _validated(command.validate_fully, params) == first, params


@pytest.mark.parametrize("wire", sorted(COMMANDS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_what_the_first_pass_takes_the_full_model_takes_alike(wire: str, data: st.DataObject) -> None:
    """Every field of the drawn params (present or not, list items' fields too) set to null and
    to "" one at a time; then up to three of them together."""
    command: Command = COMMANDS[wire]
    params = data.draw(valid_params(command))
    _check(command, params)
    for slot in slots(params, command.fields):
        for sent in (None, ""):
            _check(command, put(params, slot.path, sent))
    for _ in range(data.draw(st.integers(0, 3))):
        places = slots(params, command.fields)  # anew: a list put to null has no items left
        if not places:  # a method without params
            break
        params = put(params, data.draw(st.sampled_from(places)).path, data.draw(st.sampled_from([None, ""])))
    _check(command, params)


def test_null_and_empty_text_take_the_long_way_and_mean_what_they_meant() -> None:
    """The cases the first pass leaves to the full model, by name: a defaulted currency sent as
    null or "" is the default; a required user sent as null is missing; an optional text sent
    as "" is absent. The first pass refuses each; the full model answers."""
    balance = COMMANDS["billing.getBalance"]
    for sent in (None, ""):
        params = {"user": "u1", "currency": sent}
        with pytest.raises(Exception):
            balance.validate(params)
        assert balance.validate_fully(params).currency == "usd"
    with pytest.raises(Exception, match="user is required"):
        balance.validate_fully({"user": None})
    usage = COMMANDS["billing.recordUsage"]
    optional_texts = [f.name for f in usage.fields if f.optional and f.type.name == "Text"]
    assert optional_texts, "recordUsage has an optional text to try"
    params = {"user": "u1", "amount": 1, optional_texts[0]: ""}
    with pytest.raises(Exception):
        usage.validate(params)
    assert getattr(usage.validate_fully(params), optional_texts[0]) is None
