"""Unit tests of the command registry (zapbilling/registry.py) and the pydantic models derived
from the schema (zapbilling/models.py): start-up checks, commands, strict params, error wording,
result models and the zap.discover catalogue."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from zapbilling.billing import FIELD_RULES, HANDLERS, METHOD_RULES
from zapbilling.models import params_error
from zapbilling.registry import RegistryError, build_registry, catalogue, default_schema_path, load_registry
from zapbilling.schema import Http, Schema, load, parse_text

pytestmark = pytest.mark.sqlite_only("the registry; no store")

REPO = Path(__file__).resolve().parents[1]
BILLING_ZAP = REPO / "schemas" / "billing.zap"

EXPECTED = {
    # wire name: (method, verb, path, status, mutates, flat params in order, result type)
    "billing.getBalance": ("getBalance", "GET", "/api/v1/billing/balance", 200, False, ["user", "currency"], "Balance"),
    "billing.getBalanceAll": ("getBalanceAll", "GET", "/api/v1/billing/balance/all", 200, False, ["user"], "BalanceAll"),
    "billing.getUsage": ("getUsage", "GET", "/api/v1/billing/usage", 200, False, ["user", "currency", "limit", "startingAfter"], "UsagePage"),
    "billing.recordUsage": ("recordUsage", "POST", "/api/v1/billing/usage", 201, True, [
        "user", "currency", "amount", "model", "provider", "promptTokens", "completionTokens", "totalTokens",
        "requestId", "premium", "stream", "status", "clientIp"], "UsageResult"),
    "billing.deposit": ("deposit", "POST", "/api/v1/billing/deposit", 201, True,
                        ["user", "currency", "amount", "notes", "tags", "expiresIn", "metadata"], "DepositResult"),
    "billing.grantStarterCredit": ("grantStarterCredit", "POST", "/api/v1/billing/credit", 201, True, ["user"], "StarterCreditResult"),
    "billing.refund": ("refund", "POST", "/api/v1/billing/refund", 201, True,
                       ["user", "currency", "amount", "originalTransactionId", "notes"], "RefundResult"),
    "billing.createMeter": ("createMeter", "POST", "/api/v1/billing/meters", 201, True,
                            ["name", "eventName", "aggregationType", "currency", "dimensions"], "Meter"),
    "billing.listMeters": ("listMeters", "GET", "/api/v1/billing/meters", 200, False, ["limit", "startingAfter"], "MeterList"),
    "billing.getMeter": ("getMeter", "GET", "/api/v1/billing/meters/{id}", 200, False, ["id"], "Meter"),
    "billing.recordMeterEvents": ("recordMeterEvents", "POST", "/api/v1/billing/meter-events", 201, True, ["events"], "MeterEventsResult"),
    "billing.getMeterEventsSummary": ("getMeterEventsSummary", "GET", "/api/v1/billing/meter-events/summary", 200, False,
                                      ["meterId", "userId", "periodStart", "periodEnd"], "MeterEventsSummary"),
    "billing.createCreditGrant": ("createCreditGrant", "POST", "/api/v1/billing/credit-grants", 201, True,
                                  ["userId", "name", "amountCents", "currency", "expiresIn", "priority", "eligibility", "tags"], "CreditGrant"),
    "billing.listCreditGrants": ("listCreditGrants", "GET", "/api/v1/billing/credit-grants", 200, False, ["userId"], "CreditGrantList"),
    "billing.getCreditBalance": ("getCreditBalance", "GET", "/api/v1/billing/credit-balance", 200, False, ["userId"], "CreditBalance"),
    "billing.voidCreditGrant": ("voidCreditGrant", "POST", "/api/v1/billing/credit-grants/{id}/void", 200, True, ["id"], "VoidResult"),
    "billing.burnCredits": ("burnCredits", "POST", "/api/v1/billing/credit-grants/burn", 200, True,
                            ["userId", "amount", "meterId", "currency"], "BurnResult"),
    "billing.createPricingRule": ("createPricingRule", "POST", "/api/v1/billing/pricing-rules", 201, True,
                                  ["meterId", "planId", "model", "currency", "unitPrice", "tiers"], "PricingRule"),
    "billing.listPricingRules": ("listPricingRules", "GET", "/api/v1/billing/pricing-rules", 200, False, ["meterId", "planId"], "PricingRuleList"),
    "billing.deletePricingRule": ("deletePricingRule", "DELETE", "/api/v1/billing/pricing-rules/{id}", 200, True, ["id"], "DeleteResult"),
    "billing.invoicePreview": ("invoicePreview", "POST", "/api/v1/billing/invoice-preview", 200, False,
                               ["userId", "periodStart", "periodEnd", "currency", "planId"], "InvoicePreview"),
    "billing.createHold": ("createHold", "POST", "/api/v1/billing/holds", 201, True,
                           ["user", "currency", "amount", "expiresIn", "requestId", "allowOverdraft", "metadata"], "Hold"),
    "billing.captureHold": ("captureHold", "POST", "/api/v1/billing/holds/{id}/capture", 200, True,
                            ["id", "amount", "model", "notes", "metadata"], "Hold"),
    "billing.releaseHold": ("releaseHold", "POST", "/api/v1/billing/holds/{id}/release", 200, True, ["id"], "Hold"),
    "billing.getHold": ("getHold", "GET", "/api/v1/billing/holds/{id}", 200, False, ["id"], "Hold"),
    "billing.listHolds": ("listHolds", "GET", "/api/v1/billing/holds", 200, False, ["user", "status", "limit", "startingAfter"], "HoldList"),
    "billing.listTransactions": ("listTransactions", "GET", "/api/v1/billing/transactions", 200, False,
                                 ["user", "currency", "type", "tag", "createdAfter", "createdBefore", "limit", "startingAfter"],
                                 "TransactionPage"),
    "billing.listAccounts": ("listAccounts", "GET", "/api/v1/billing/accounts", 200, False,
                             ["currency", "maxAvailable", "limit", "startingAfter"], "AccountPage"),
    "billing.listCreditTransactions": ("listCreditTransactions", "GET", "/api/v1/billing/credit-transactions", 200, False,
                                       ["userId", "grantId", "limit", "startingAfter"], "CreditTransactionPage"),
    "billing.createWebhookEndpoint": ("createWebhookEndpoint", "POST", "/api/v1/billing/webhook-endpoints", 201, True,
                                      ["url", "events", "description"], "WebhookEndpoint"),
    "billing.listWebhookEndpoints": ("listWebhookEndpoints", "GET", "/api/v1/billing/webhook-endpoints", 200, False, [],
                                     "WebhookEndpointList"),
    "billing.deleteWebhookEndpoint": ("deleteWebhookEndpoint", "DELETE", "/api/v1/billing/webhook-endpoints/{id}", 200, True,
                                      ["id"], "DeleteResult"),
    "billing.rotateWebhookSecret": ("rotateWebhookSecret", "POST", "/api/v1/billing/webhook-endpoints/{id}/rotate-secret", 200,
                                    True, ["id"], "WebhookSecret"),
    "billing.listEvents": ("listEvents", "GET", "/api/v1/billing/events", 200, False, ["type", "limit", "startingAfter", "userId"], "EventPage"),
    "billing.getEvent": ("getEvent", "GET", "/api/v1/billing/events/{id}", 200, False, ["id"], "Event"),
    "billing.redeliverEvent": ("redeliverEvent", "POST", "/api/v1/billing/events/{id}/redeliver", 200, True,
                               ["id", "endpointId"], "Redelivery"),
    "billing.createAlert": ("createAlert", "POST", "/api/v1/billing/alerts", 201, True,
                            ["type", "userId", "currency", "threshold", "period", "meterId"], "Alert"),
    "billing.listAlerts": ("listAlerts", "GET", "/api/v1/billing/alerts", 200, False, ["userId"], "AlertList"),
    "billing.deleteAlert": ("deleteAlert", "DELETE", "/api/v1/billing/alerts/{id}", 200, True, ["id"], "DeleteResult"),
    "billing.setSpendCap": ("setSpendCap", "PUT", "/api/v1/billing/spend-caps", 200, True,
                            ["user", "currency", "period", "limit"], "SpendCap"),
    "billing.getSpendCaps": ("getSpendCaps", "GET", "/api/v1/billing/spend-caps", 200, False, ["user"], "SpendCapList"),
    "billing.deleteSpendCap": ("deleteSpendCap", "DELETE", "/api/v1/billing/spend-caps", 200, True,
                               ["user", "currency", "period"], "SpendCapDeleted"),
    "billing.getMeterEventsSeries": ("getMeterEventsSeries", "GET", "/api/v1/billing/meter-events/series", 200, False,
                                     ["meterId", "userId", "periodStart", "periodEnd", "windowSize"], "MeterEventsSeries"),
}


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.fixture(scope="module")
def schema() -> Schema:
    return load(BILLING_ZAP)


def params(registry, method: str):
    return registry.commands[f"billing.{method}"].params_model


def reject(registry, method: str, raw: dict[str, Any], *, query: bool = False):
    """The InvalidParams a caller would get for these params."""
    with pytest.raises(ValidationError) as info:
        params(registry, method).model_validate(raw)
    return params_error(info.value, query=query)


async def _handler(ctx: Any, p: Any) -> dict[str, Any]:
    return {}


# -- start-up checks -----------------------------------------------------------------------

def test_build_registry_with_the_billing_handlers_and_rules_succeeds(schema):
    r = build_registry(schema, HANDLERS, FIELD_RULES, METHOD_RULES)
    assert set(r.commands) == set(EXPECTED)


def test_schema_method_without_handler_fails_at_start_up(schema):
    handlers = {k: v for k, v in HANDLERS.items() if k != "refund"}
    with pytest.raises(RegistryError, match="without a handler: refund"):
        build_registry(schema, handlers, FIELD_RULES, METHOD_RULES)


def test_new_schema_method_without_handler_fails_at_start_up():
    text = BILLING_ZAP.read_text(encoding="utf-8").rstrip("\n") + "\n  ping () -> ()\n"
    grown = parse_text(text, file="billing.zap")
    with pytest.raises(RegistryError, match="without a handler: ping"):
        build_registry(grown, HANDLERS, FIELD_RULES, METHOD_RULES)


def test_handler_without_schema_method_fails_at_start_up(schema):
    handlers = dict(HANDLERS, transferFunds=_handler)
    with pytest.raises(RegistryError, match="does not declare: transferFunds"):
        build_registry(schema, handlers, FIELD_RULES, METHOD_RULES)


def test_field_rule_for_a_field_the_schema_lacks_fails_at_start_up(schema):
    rules = dict(FIELD_RULES, curency=lambda v, name: v)
    with pytest.raises(RegistryError, match="field rules for fields the schema does not declare: curency"):
        build_registry(schema, HANDLERS, rules, METHOD_RULES)


def test_method_rules_for_an_unknown_method_fail_at_start_up(schema):
    rules = dict(METHOD_RULES, deposits={"amount": lambda v, name: v})
    with pytest.raises(RegistryError, match="rules for a method the schema does not declare: deposits"):
        build_registry(schema, HANDLERS, FIELD_RULES, rules)


def test_method_rules_for_an_unknown_parameter_fail_at_start_up(schema):
    rules = dict(METHOD_RULES, refund={"amount": lambda v, name: v, "expiresIn": lambda v, name: v})
    with pytest.raises(RegistryError, match=r"`refund` does not take: expiresIn"):
        build_registry(schema, HANDLERS, FIELD_RULES, rules)


@pytest.mark.parametrize("name", ["note", "amount", "metadata", "aggregationType"],
                         ids=["unknown", "an-integer", "data", "an-enum"])
def test_a_length_bound_for_a_name_that_is_no_text_field_fails_at_start_up(schema, name):
    """billing/validation.py TEXT_BOUNDS names text fields (Text, List(Text), Map(_, Text)): a
    misspelt name, or one of another type, would bound nothing."""
    from zapbilling.billing.validation import TEXT_BOUND, TEXT_BOUNDS
    from zapbilling.models import SizeBounds

    build_registry(schema, HANDLERS, FIELD_RULES, METHOD_RULES, bounds=SizeBounds(TEXT_BOUNDS, TEXT_BOUND))
    bounds = SizeBounds({**TEXT_BOUNDS, name: 10}, TEXT_BOUND)
    with pytest.raises(RegistryError, match=f"length bounds for fields the schema does not declare as text: {name}"):
        build_registry(schema, HANDLERS, FIELD_RULES, METHOD_RULES, bounds=bounds)
    for text_name in ("dimensions", "eligibility", "user"):  # List(Text) and Map(Text, Text); Text
        build_registry(schema, HANDLERS, FIELD_RULES, METHOD_RULES, bounds=SizeBounds({text_name: 10}))


def test_method_rules_accept_a_flattened_struct_field(schema):
    # deposit's only parameter is `request DepositRequest`; its fields are the method's params.
    r = build_registry(schema, HANDLERS, FIELD_RULES, {"deposit": {"tags": lambda v, name: v.upper()}})
    assert r.commands["billing.deposit"].params_model.model_validate({"user": "u", "amount": 1, "tags": "a,b"}).tags == "A,B"


# -- commands ------------------------------------------------------------------------------

def test_load_registry_has_one_command_per_schema_method(registry):
    assert set(registry.commands) == set(EXPECTED)
    assert len(registry.commands) == len(registry.schema.methods())


def test_load_registry_uses_the_source_schema(registry, schema):
    # README: schemas/billing.zap is the single source of truth; the packaged copy must not drift.
    assert default_schema_path().read_text(encoding="utf-8") == BILLING_ZAP.read_text(encoding="utf-8")
    assert registry.catalogue == catalogue(schema)


@pytest.mark.parametrize("wire", list(EXPECTED))
def test_command_has_wire_name_route_mutates_params_and_result(registry, wire):
    name, verb, path, status, mutates, flat, result = EXPECTED[wire]
    c = registry.commands[wire]
    assert (c.name, c.wire, c.method.name) == (name, wire, name)
    assert c.http == Http(verb, path, status)
    assert c.mutates is mutates
    assert [f.name for f in c.fields] == flat
    assert list(c.params_model.model_fields) == flat
    assert c.result_model is not None
    assert c.result_model.model_fields["value"].annotation.__name__ == result + "Out"
    assert c.handler is HANDLERS[name]


def test_params_model_required_and_default_fields_follow_the_schema(registry):
    fields = params(registry, "deposit").model_fields
    assert fields["user"].is_required() and fields["amount"].is_required()
    assert fields["currency"].default == "usd" and fields["tags"].default == "" and fields["expiresIn"].default == 0
    assert fields["notes"].default is None and fields["metadata"].default is None


def test_params_model_applies_defaults(registry):
    p = params(registry, "recordUsage").model_validate({"user": "hanzo/alice", "amount": 0})
    assert p.model_dump() == {
        "user": "hanzo/alice", "currency": "usd", "amount": 0, "model": "", "provider": "", "promptTokens": 0,
        "completionTokens": 0, "totalTokens": 0, "requestId": None, "premium": False, "stream": False,
        "status": "", "clientIp": "",
    }


def test_params_model_refuses_unknown_fields_ahead_of_other_failures(registry):
    # contract Part 2, "Strict input": before `user is required`, and the first one as sent
    err = reject(registry, "getBalance", {"nonsense": 1, "currency": 7, "also": 2})
    assert (err.kind, err.message, err.param) == ("invalid_params", "unknown parameter: nonsense", "nonsense")


def test_params_model_names_an_unknown_field_of_a_list_item_by_its_path(registry):
    tiers = [{"upTo": 1, "price": 1}, {"upto": 0, "price": 1}]
    err = reject(registry, "createPricingRule", {"meterId": "m", "tiers": tiers, "zzz": 1})
    assert (err.message, err.param) == ("unknown parameter: tiers[1].upto", "tiers[1].upto")


def test_params_model_takes_any_keys_in_free_form_maps(registry):
    p = params(registry, "deposit").model_validate({"user": "u", "amount": 1, "metadata": {"nonsense": {"deep": 1}}})
    assert p.metadata == {"nonsense": {"deep": 1}}
    err = reject(registry, "deposit", {"user": "u", "amount": 1, "nonsense": {"deep": 1}})
    assert err.message == "unknown parameter: nonsense"


# -- strict params ---------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["1000", "0", 1000.0, 10.5, True, False, [1000], {"v": 1}])
def test_int64_param_rejects_non_integers_without_coercion(registry, value):
    err = reject(registry, "deposit", {"user": "u", "amount": value})
    assert (err.message, err.param) == ("amount must be an integer", "amount")


@pytest.mark.parametrize("value", ["5", 5.0, True])
def test_int64_param_with_default_rejects_non_integers(registry, value):
    err = reject(registry, "getUsage", {"user": "u", "limit": value})
    assert (err.message, err.param) == ("limit must be an integer", "limit")


@pytest.mark.parametrize("value", [1, "true", "yes", 0.0])
def test_bool_param_rejects_non_booleans(registry, value):
    err = reject(registry, "recordUsage", {"user": "u", "amount": 1, "premium": value})
    assert (err.message, err.param) == ("premium must be a boolean", "premium")


@pytest.mark.parametrize("value", [5, 1.5, True, ["u"], {"u": 1}])
def test_text_param_rejects_non_strings(registry, value):
    err = reject(registry, "getBalance", {"user": value})
    assert (err.message, err.param) == ("user must be a string", "user")


def test_valid_params_keep_their_types(registry):
    p = params(registry, "deposit").model_validate({"user": "u", "amount": 1000, "expiresIn": 7})
    assert p.amount == 1000 and type(p.amount) is int and p.expiresIn == 7


@pytest.mark.parametrize("value", ["", None])
def test_required_text_empty_or_null_is_required(registry, value):
    err = reject(registry, "getBalance", {"user": value})
    assert (err.message, err.param) == ("user is required", "user")


def test_required_text_absent_is_required(registry):
    err = reject(registry, "refund", {"user": "u", "amount": 5})
    assert (err.message, err.param) == ("originalTransactionId is required", "originalTransactionId")


@pytest.mark.parametrize("value", ["", None])
def test_required_text_in_flattened_struct_empty_or_null_is_required(registry, value):
    err = reject(registry, "refund", {"user": "u", "amount": 5, "originalTransactionId": value})
    assert (err.message, err.param) == ("originalTransactionId is required", "originalTransactionId")


def test_required_int64_null_is_required(registry):
    err = reject(registry, "deposit", {"user": "u", "amount": None})
    assert (err.message, err.param) == ("amount is required", "amount")


@pytest.mark.parametrize("value", ["", None])
@pytest.mark.parametrize("method", ["getBalance", "deposit", "recordUsage", "refund"])
def test_text_with_non_empty_default_empty_or_null_gives_the_default(registry, method, value):
    declared = set(params(registry, method).model_fields)
    raw = {k: v for k, v in {"user": "u", "amount": 5, "originalTransactionId": "tx"}.items() if k in declared}
    assert params(registry, method).model_validate({**raw, "currency": value}).currency == "usd"


@pytest.mark.parametrize("value", ["", None])
def test_text_with_empty_default_null_gives_the_default(registry, value):
    assert params(registry, "recordUsage").model_validate({"user": "u", "amount": 1, "model": value}).model == ""


def test_int64_with_default_null_gives_the_default(registry):
    assert params(registry, "getUsage").model_validate({"user": "u", "limit": None}).limit == 100


@pytest.mark.parametrize("value", ["", None])
def test_optional_text_empty_or_null_means_absent(registry, value):
    # README "Nulls and empty strings in params mean 'absent'"; REST query strings already drop
    # empty values, so ZAP params must too or the transports disagree.
    p = params(registry, "getUsage").model_validate({"user": "u", "currency": value, "startingAfter": value})
    assert (p.currency, p.startingAfter) == (None, None)


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 10**30])
def test_int64_out_of_range_is_rejected(registry, value):
    err = reject(registry, "deposit", {"user": "u", "amount": value})
    assert err.param == "amount" and "amount is out of range" in err.message


@pytest.mark.parametrize("value", [2**63 - 1, -(2**63)])
def test_int64_bounds_are_accepted(registry, value):
    assert params(registry, "recordUsage").model_validate({"user": "u", "amount": value}).amount == value


def test_first_failing_field_in_schema_order_is_reported(registry):
    err = reject(registry, "deposit", {"user": "u", "currency": "xyz", "amount": 0})
    assert (err.message, err.param) == ("unknown currency: xyz", "currency")


def test_first_failing_field_is_reported_whatever_the_key_order(registry):
    err = reject(registry, "deposit", {"amount": 0, "currency": "xyz", "user": "u"})
    assert (err.message, err.param) == ("unknown currency: xyz", "currency")


def test_missing_earlier_field_is_reported_before_later_rule_failures(registry):
    err = reject(registry, "deposit", {"currency": "xyz", "amount": -1})
    assert (err.message, err.param) == ("user is required", "user")


def test_later_failure_reported_once_earlier_fields_pass(registry):
    err = reject(registry, "deposit", {"user": "u", "currency": "EUR", "amount": 0, "expiresIn": 99_999})
    assert (err.message, err.param) == ("amount must be positive", "amount")


def test_method_rules_apply_only_to_their_method(registry):
    # `amount must be positive` is deposit's rule, not recordUsage's.
    assert params(registry, "recordUsage").model_validate({"user": "u", "amount": -5}).amount == -5
    assert reject(registry, "deposit", {"user": "u", "amount": -5}).message == "amount must be positive"


def test_field_rule_normalises_currency(registry):
    assert params(registry, "getBalance").model_validate({"user": "u", "currency": "EUR"}).currency == "eur"


def test_missing_wording_in_a_query_string(registry):
    err = reject(registry, "getBalance", {}, query=True)
    assert (err.message, err.param) == ("user query parameter is required", "user")
    err = reject(registry, "getBalance", {"user": ""}, query=True)
    assert err.message == "user query parameter is required"


def test_other_messages_are_the_same_in_a_query_string(registry):
    body = reject(registry, "getBalance", {"user": "u", "currency": "xyz"})
    query = reject(registry, "getBalance", {"user": "u", "currency": "xyz"}, query=True)
    assert body.message == query.message == "unknown currency: xyz"


def test_params_error_is_invalid_params(registry):
    err = reject(registry, "getBalance", {})
    assert err.kind == "invalid_params" and err.info.rest_status == 400 and err.info.zap_code == -32602


# -- result models -------------------------------------------------------------------------

def _sample(schema: Schema, type_ref) -> Any:
    """A minimal valid value of a schema type (required and optional fields all filled)."""
    n = type_ref.name
    if n == "Bool":
        return True
    if n in ("Int32", "Int64"):
        return 1
    if n == "Float64":
        return 1.5
    if n == "Text":
        return "x"
    if n == "Data":
        return {"k": "v"}
    if n == "List":
        return [_sample(schema, type_ref.args[0])]
    if n == "Map":
        return {"k": _sample(schema, type_ref.args[1])}
    if n in schema.enums:
        return schema.enums[n].values[-1]
    return {f.name: _sample(schema, f.type) for f in schema.structs[n].fields}


@pytest.mark.parametrize("wire", list(EXPECTED))
def test_result_model_accepts_what_the_schema_declares(registry, wire):
    c = registry.commands[wire]
    value = _sample(registry.schema, c.method.result.type)
    c.result_model.model_validate({"value": value})


@pytest.mark.parametrize("wire", list(EXPECTED))
def test_result_model_forbids_extra_fields(registry, wire):
    c = registry.commands[wire]
    value = dict(_sample(registry.schema, c.method.result.type), surprise=1)
    with pytest.raises(ValidationError) as info:
        c.result_model.model_validate({"value": value})
    assert [e["type"] for e in info.value.errors()] == ["extra_forbidden"]


def test_result_model_forbids_extra_fields_in_nested_structs(registry):
    c = registry.commands["billing.getBalanceAll"]
    value = {"user": "u", "balances": [{"currency": "usd", "balance": 1, "holds": 0, "available": 1, "extra": 0}]}
    with pytest.raises(ValidationError) as info:
        c.result_model.model_validate({"value": value})
    assert [e["type"] for e in info.value.errors()] == ["extra_forbidden"]


def test_result_model_requires_non_optional_fields_and_allows_optional_absent(registry):
    c = registry.commands["billing.recordUsage"]
    c.result_model.model_validate({"value": {"user": "u", "amount": 0, "status": "skipped"}})
    with pytest.raises(ValidationError):
        c.result_model.model_validate({"value": {"amount": 0, "status": "skipped"}})


def test_result_model_restricts_enums_to_their_values(registry):
    c = registry.commands["billing.refund"]
    value = _sample(registry.schema, c.method.result.type)
    c.result_model.model_validate({"value": dict(value, type="hold-removed")})
    with pytest.raises(ValidationError):
        c.result_model.model_validate({"value": dict(value, type="credit")})


# -- zap.discover --------------------------------------------------------------------------

def test_catalogue_lists_every_method(registry):
    assert set(registry.catalogue["methods"]) == set(registry.commands) == set(EXPECTED)


@pytest.mark.parametrize("wire", list(EXPECTED))
def test_catalogue_method_has_params_result_mutates_and_http(registry, wire):
    name, verb, path, status, mutates, flat, result = EXPECTED[wire]
    entry = registry.catalogue["methods"][wire]
    assert [p["name"] for p in entry["params"]] == flat
    assert entry["result"] == result
    assert entry["mutates"] is mutates
    assert entry["http"] == {"method": verb, "path": path, "status": status}
    assert entry["service"] == "BillingService"
    assert entry["doc"] == registry.commands[wire].method.doc and entry["doc"]


def test_catalogue_params_show_types_required_optional_and_defaults(registry):
    by_name = {p["name"]: p for p in registry.catalogue["methods"]["billing.getUsage"]["params"]}
    assert by_name["user"] == {"name": "user", "type": "Text", "required": True}
    assert by_name["currency"] == {"name": "currency", "type": "Text", "required": False, "optional": True}
    assert by_name["limit"] == {"name": "limit", "type": "Int64", "required": False, "default": 100}
    deposit = {p["name"]: p for p in registry.catalogue["methods"]["billing.deposit"]["params"]}
    assert deposit["currency"]["default"] == "usd"
    assert deposit["amount"]["required"] is True and deposit["amount"]["doc"] == "cents, positive"
    assert deposit["metadata"]["type"] == "Data" and deposit["metadata"]["optional"] is True


def test_catalogue_names_the_struct_of_flattened_params(registry):
    methods = registry.catalogue["methods"]
    assert methods["billing.deposit"]["paramsType"] == "DepositRequest"
    assert methods["billing.recordUsage"]["paramsType"] == "UsageRequest"
    assert methods["billing.refund"]["paramsType"] == "RefundRequest"
    assert methods["billing.getBalance"]["paramsType"] is None


def test_catalogue_lists_every_type(registry, schema):
    types = registry.catalogue["types"]
    assert set(types) == set(schema.enums) | set(schema.structs)
    assert types["TransactionType"] == {
        "kind": "enum", "doc": "The direction of a ledger row. Amounts are always positive.",
        "values": ["deposit", "withdraw", "hold", "hold-removed", "transfer"],
    }
    for name, s in schema.structs.items():
        assert types[name]["kind"] == "struct"
        assert [f["name"] for f in types[name]["fields"]] == [f.name for f in s.fields]
        assert [f["type"] for f in types[name]["fields"]] == [str(f.type) for f in s.fields]
    assert types["BalanceAll"]["fields"][1]["type"] == "List(CurrencyBalance)"
    assert types["Balance"]["doc"] == "A user's money in one currency, in cents."


def test_catalogue_is_json_serialisable(registry):
    text = json.dumps(registry.catalogue)
    assert "MISSING" not in text
    assert json.loads(text) == registry.catalogue


def test_catalogue_follows_a_small_schema():
    s = parse_text(
        "enum Color\n  red\n  dark-blue\n\n"
        "struct Paint\n  color Color = \"red\"\n  litres Int64\n\n"
        "interface ShopService\n"
        "  # Mix paint.\n"
        "  mix (paint Paint) -> (paint Paint)\n    @http POST /mix 201\n"
        "  quote (paint Paint) -> (cents Int64)\n    @http POST /quote\n    @readonly\n"
        "  reset () -> ()\n    @deprecated no more\n",
        file="shop.zap",
    )
    r = build_registry(s, {"mix": _handler, "quote": _handler, "reset": _handler})
    assert set(r.commands) == {"shop.mix", "shop.quote", "shop.reset"}
    methods = r.catalogue["methods"]
    assert methods["shop.mix"] == {
        "service": "ShopService", "doc": "Mix paint.",
        "params": [{"name": "color", "type": "Color", "required": False, "default": "red"},
                   {"name": "litres", "type": "Int64", "required": True}],
        "paramsType": "Paint", "result": "Paint", "mutates": True,
        "http": {"method": "POST", "path": "/mix", "status": 201},
    }
    assert methods["shop.quote"]["mutates"] is False and methods["shop.quote"]["result"] == "Int64"
    assert methods["shop.reset"]["params"] == [] and methods["shop.reset"]["result"] is None
    assert methods["shop.reset"]["http"] is None and methods["shop.reset"]["deprecated"] == "no more"
    assert r.commands["shop.reset"].result_model is None
    assert r.catalogue["types"]["Color"]["values"] == ["red", "dark-blue"]
    assert r.commands["shop.mix"].params_model.model_validate({"litres": 2, "color": None}).color == "red"
    with pytest.raises(ValidationError):
        r.commands["shop.mix"].params_model.model_validate({"litres": 2, "color": "green"})


def test_int32_param_range():
    s = parse_text("interface TService\n  t (n Int32) -> ()\n")
    model = build_registry(s, {"t": _handler}).commands["t.t"].params_model
    assert model.model_validate({"n": 2**31 - 1}).n == 2**31 - 1
    with pytest.raises(ValidationError) as info:
        model.model_validate({"n": 2**31})
    assert params_error(info.value).message.startswith("n is out of range")

