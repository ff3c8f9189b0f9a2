"""No text a call carries may hold a NUL character (U+0000): PostgreSQL can store none, in TEXT
or JSONB, and a NUL reached it as an internal error (a deposit with `notes` "a\\u0000b", a user
"u\\u0000x", a metadata value: each a 500 on PostgreSQL while SQLite stored it). Both backends
now refuse it before the store, as invalid params naming the parameter (models.NO_NUL), and an
idempotency key the same way (transport/calls.py).

The sweep over every text parameter is derived from the schema, as tests/test_input_bounds.py's
length bounds are; the money calls run on both backends."""
from __future__ import annotations

import pytest

from conftest import TRANSPORTS, assert_error, ok
from examples import prepare
from test_input_bounds import COMMANDS, EXAMPLES, path_name, text_slots, with_value
from zapbilling.registry import Command

ALICE = "hanzo/alice"
NUL = "a\x00b"


def message(where: str) -> str:
    return f"{where} must not contain the NUL character (U+0000)"


@pytest.mark.sqlite_only("checked before the store: the sweep runs once")
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("command", COMMANDS, ids=[c.name for c in COMMANDS])
async def test_every_text_parameter_refuses_a_nul(api, command: Command, transport):
    api = api.using(transport)
    params, _ = await prepare(api, EXAMPLES[command.wire])
    for path, _name in text_slots(command.fields):
        # a map's values and keys are looked at together, as the map's size is: the map is named
        where = path_name(path[:-1] if path[-1] == "k" else path)  # "k": test_input_bounds' key for a map's value
        r = await api.call(command.name, with_value(params, path, NUL))
        assert_error(api, r, "invalid_params", message(where), param=where)


async def test_money_calls_with_a_nul_anywhere_are_refused_and_write_nothing(any_api):
    """The calls that were internal errors on PostgreSQL: a text parameter, a metadata value, a
    metadata key, text deep in metadata, a meter event's dimension; each refused, nothing written."""
    await ok(any_api, "deposit", {"user": ALICE, "amount": 100})
    cases = [
        ("deposit", {"user": ALICE, "amount": 5, "notes": NUL}, "notes"),
        ("deposit", {"user": "u\x00x", "amount": 5}, "user"),
        ("deposit", {"user": ALICE, "amount": 5, "tags": "x\x00"}, "tags"),
        ("deposit", {"user": ALICE, "amount": 5, "metadata": {"k": NUL}}, "metadata"),
        ("deposit", {"user": ALICE, "amount": 5, "metadata": {"k\x00": 1}}, "metadata"),
        ("deposit", {"user": ALICE, "amount": 5, "metadata": {"k": [1, {"deep": ["x", NUL]}]}}, "metadata"),
        ("recordUsage", {"user": ALICE, "amount": 5, "model": NUL}, "model"),
        ("recordUsage", {"user": ALICE, "amount": 5, "requestId": NUL}, "requestId"),
    ]
    for method, params, where in cases:
        r = await any_api.call(method, params)
        assert_error(any_api, r, "invalid_params", message(where), param=where)
    meter = await ok(any_api, "createMeter", {"name": "Tokens", "eventName": "tokens"})
    r = await any_api.call("recordMeterEvents", {"events": [{"meterId": meter["id"], "userId": ALICE, "value": 1,
                                                            "dimensions": {"model": NUL}}]})
    assert_error(any_api, r, "invalid_params", message("events[0].dimensions"), param="events[0].dimensions")
    balance = await ok(any_api, "getBalance", {"user": ALICE})
    assert balance["balance"] == 100
    assert (await ok(any_api, "listTransactions", {"user": ALICE}))["count"] == 1


async def test_an_idempotency_key_with_a_nul_is_refused(any_api):
    r = await any_api.call("deposit", {"user": ALICE, "amount": 5}, idempotency_key="k\x00" if any_api.transport != "rest" else None)
    if any_api.transport == "rest":  # a header cannot carry one: HTTP refuses it before any route
        return
    assert_error(any_api, r, "invalid_request", "idempotency key must not contain the NUL character (U+0000)", param="idempotencyKey")
    assert (await ok(any_api, "getBalance", {"user": ALICE}))["balance"] == 0
