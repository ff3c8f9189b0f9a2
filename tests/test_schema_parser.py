"""Unit tests of the .zap schema parser (zapbilling/schema) on good and bad input.

The language is described in docs/zap-schema.md: every line is understood or is an error naming
the file, the line and what was expected.
"""
from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from zapbilling.schema import MISSING, Http, SchemaError, TypeRef, load, parse_text

pytestmark = pytest.mark.sqlite_only("the schema parser; no store")

REPO = Path(__file__).resolve().parents[1]
BILLING_ZAP = REPO / "schemas" / "billing.zap"


def zap(text: str) -> str:
    return dedent(text).lstrip("\n")


def schema_error(text: str, file: str = "bad.zap") -> SchemaError:
    with pytest.raises(SchemaError) as info:
        parse_text(zap(text), file=file)
    return info.value


def load_error(path: Path) -> SchemaError:
    """The error of loading the schema file at `path` (with its imports)."""
    with pytest.raises(SchemaError) as info:
        load(path)
    return info.value


def assert_error(err: SchemaError, file: str, line: int, *needles: str) -> None:
    assert (err.file, err.line) == (file, line), f"got {err}"
    assert str(err).startswith(f"{file}:{line}: "), str(err)
    for needle in needles:
        assert needle in err.message, f"{needle!r} not in {err.message!r}"


# -- the real schema -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def billing():
    return load(BILLING_ZAP)


CONTRACT_METHODS = {
    # name: (verb, path, status, mutates)
    "getBalance": ("GET", "/api/v1/billing/balance", 200, False),
    "getBalanceAll": ("GET", "/api/v1/billing/balance/all", 200, False),
    "getUsage": ("GET", "/api/v1/billing/usage", 200, False),
    "recordUsage": ("POST", "/api/v1/billing/usage", 201, True),
    "deposit": ("POST", "/api/v1/billing/deposit", 201, True),
    "grantStarterCredit": ("POST", "/api/v1/billing/credit", 201, True),
    "refund": ("POST", "/api/v1/billing/refund", 201, True),
    "createMeter": ("POST", "/api/v1/billing/meters", 201, True),
    "listMeters": ("GET", "/api/v1/billing/meters", 200, False),
    "getMeter": ("GET", "/api/v1/billing/meters/{id}", 200, False),
    "recordMeterEvents": ("POST", "/api/v1/billing/meter-events", 201, True),
    "getMeterEventsSummary": ("GET", "/api/v1/billing/meter-events/summary", 200, False),
    "createCreditGrant": ("POST", "/api/v1/billing/credit-grants", 201, True),
    "listCreditGrants": ("GET", "/api/v1/billing/credit-grants", 200, False),
    "getCreditBalance": ("GET", "/api/v1/billing/credit-balance", 200, False),
    "voidCreditGrant": ("POST", "/api/v1/billing/credit-grants/{id}/void", 200, True),
    "burnCredits": ("POST", "/api/v1/billing/credit-grants/burn", 200, True),
    "createPricingRule": ("POST", "/api/v1/billing/pricing-rules", 201, True),
    "listPricingRules": ("GET", "/api/v1/billing/pricing-rules", 200, False),
    "deletePricingRule": ("DELETE", "/api/v1/billing/pricing-rules/{id}", 200, True),
    "invoicePreview": ("POST", "/api/v1/billing/invoice-preview", 200, False),
    "createHold": ("POST", "/api/v1/billing/holds", 201, True),
    "captureHold": ("POST", "/api/v1/billing/holds/{id}/capture", 200, True),
    "releaseHold": ("POST", "/api/v1/billing/holds/{id}/release", 200, True),
    "getHold": ("GET", "/api/v1/billing/holds/{id}", 200, False),
    "listHolds": ("GET", "/api/v1/billing/holds", 200, False),
    "listTransactions": ("GET", "/api/v1/billing/transactions", 200, False),
    "listAccounts": ("GET", "/api/v1/billing/accounts", 200, False),
    "listCreditTransactions": ("GET", "/api/v1/billing/credit-transactions", 200, False),
    "createWebhookEndpoint": ("POST", "/api/v1/billing/webhook-endpoints", 201, True),
    "listWebhookEndpoints": ("GET", "/api/v1/billing/webhook-endpoints", 200, False),
    "deleteWebhookEndpoint": ("DELETE", "/api/v1/billing/webhook-endpoints/{id}", 200, True),
    "rotateWebhookSecret": ("POST", "/api/v1/billing/webhook-endpoints/{id}/rotate-secret", 200, True),
    "listEvents": ("GET", "/api/v1/billing/events", 200, False),
    "getEvent": ("GET", "/api/v1/billing/events/{id}", 200, False),
    "redeliverEvent": ("POST", "/api/v1/billing/events/{id}/redeliver", 200, True),
    "createAlert": ("POST", "/api/v1/billing/alerts", 201, True),
    "listAlerts": ("GET", "/api/v1/billing/alerts", 200, False),
    "deleteAlert": ("DELETE", "/api/v1/billing/alerts/{id}", 200, True),
    "setSpendCap": ("PUT", "/api/v1/billing/spend-caps", 200, True),
    "getSpendCaps": ("GET", "/api/v1/billing/spend-caps", 200, False),
    "deleteSpendCap": ("DELETE", "/api/v1/billing/spend-caps", 200, True),
    "getMeterEventsSeries": ("GET", "/api/v1/billing/meter-events/series", 200, False),
}


def test_billing_zap_declares_every_contract_method_in_order(billing):
    assert list(billing.interfaces) == ["BillingService"]
    assert [m.name for m in billing.interfaces["BillingService"].methods] == list(CONTRACT_METHODS)


@pytest.mark.parametrize("name", list(CONTRACT_METHODS))
def test_billing_zap_method_has_its_http_route_status_and_mutates_flag(billing, name):
    verb, path, status, mutates = CONTRACT_METHODS[name]
    method = {m.name: m for _, m in billing.methods()}[name]
    assert method.http == Http(verb, path, status)
    assert method.mutates is mutates
    assert method.readonly is (not mutates)


def test_billing_zap_method_params_and_results(billing):
    methods = {m.name: m for _, m in billing.methods()}
    get_balance = methods["getBalance"]
    assert [(p.name, str(p.type), p.required, p.default) for p in get_balance.params] == [
        ("user", "Text", True, MISSING),
        ("currency", "Text", False, "usd"),
    ]
    assert (get_balance.result.name, get_balance.result.type) == ("balance", TypeRef("Balance"))
    get_usage = methods["getUsage"]
    assert [(p.name, p.optional, p.default) for p in get_usage.params] == [
        ("user", False, MISSING), ("currency", True, MISSING), ("limit", False, 100), ("startingAfter", True, MISSING),
    ]
    assert [(p.name, p.type) for p in methods["deposit"].params] == [("request", TypeRef("DepositRequest"))]


def test_billing_zap_struct_fields_optional_and_defaults(billing):
    usage = {f.name: f for f in billing.structs["UsageRequest"].fields}
    assert list(usage) == [
        "user", "currency", "amount", "model", "provider", "promptTokens", "completionTokens",
        "totalTokens", "requestId", "premium", "stream", "status", "clientIp",
    ]
    assert usage["user"].required and usage["user"].type == TypeRef("Text")
    assert (usage["currency"].default, usage["currency"].required) == ("usd", False)
    assert usage["amount"].required and usage["amount"].type == TypeRef("Int64")  # strict input: no silent 0
    assert usage["model"].default == ""
    assert usage["premium"].default is False and usage["premium"].type == TypeRef("Bool")
    assert usage["requestId"].optional and usage["requestId"].default is MISSING and not usage["requestId"].required
    deposit = {f.name: f for f in billing.structs["DepositRequest"].fields}
    assert deposit["amount"].required
    assert deposit["metadata"].optional and deposit["metadata"].type == TypeRef("Data")
    assert billing.structs["BalanceAll"].fields[1].type == TypeRef("List", (TypeRef("CurrencyBalance"),))
    result = {f.name: f for f in billing.structs["UsageResult"].fields}
    assert result["type"].type == TypeRef("TransactionType") and result["type"].optional


def test_billing_zap_doc_comments_from_lines_above_and_trailing(billing):
    assert billing.enums["TransactionType"].doc == "The direction of a ledger row. Amounts are always positive."
    assert billing.structs["Balance"].doc == "A user's money in one currency, in cents."
    available = billing.structs["Balance"].fields[-1]
    assert (available.name, available.doc) == ("available", "max(balance - holds, 0)")
    assert billing.structs["Balance"].fields[0].doc == ""
    methods = {m.name: m for _, m in billing.methods()}
    assert methods["getBalance"].doc == "The user's balance in one currency. A user never seen has zeros."
    assert methods["deposit"].doc == "Add funds to a user's account."
    # The file's header block is separated by a blank line: it documents nothing.
    assert "single source of truth" not in billing.enums["TransactionType"].doc
    # A struct with no comment above it has no doc, even after another declaration's comments.
    assert billing.structs["CurrencyBalance"].doc == ""


def test_billing_zap_enum_values_keep_hyphens(billing):
    assert billing.enums["TransactionType"].values == ["deposit", "withdraw", "hold", "hold-removed", "transfer"]


def test_billing_zap_wire_prefix_is_billing(billing):
    assert billing.interfaces["BillingService"].service == "billing"


def test_billing_zap_single_struct_param_is_flattened(billing):
    methods = {m.name: m for _, m in billing.methods()}
    assert [f.name for f in billing.flat_params(methods["deposit"])] == [
        "user", "currency", "amount", "notes", "tags", "expiresIn", "metadata",
    ]
    assert [f.name for f in billing.flat_params(methods["getBalance"])] == ["user", "currency"]


# -- a small schema, inline ----------------------------------------------------------------

GOOD = zap('''
    # Kinds of pricing.
    # Second doc line.
    enum Kind
      per_unit
      hold-removed
      uniqueCount

    struct Child
      id Text

    # A thing.
    struct Thing                  # trailing doc
      id Text
      # The display name.
      name Text = "n/a #1"          # shown to humans
      count Int32 = 0
      big Int64 = -5
      ratio Float64 = 1.5
      active Bool = true
      tags List(Text) = []
      labels Map(Text, Int64) = {}
      nested Map(Text, List(Child))?
      kind Kind = "per_unit"
      note Text?
      extra Data?
      children List(Child)
        @deprecated use kids

    struct Filter
      @deprecated use Query
      kind Kind?
      limit Int64 = 10

    interface ThingService
      # Read one thing.
      getThing (id Text) -> (thing Thing)
        @http GET /things/{id}
      listThings (filter Filter) -> (things List(Thing))
        @http GET /things
      putThing (thing Thing) -> (thing Thing)
        @http POST /things 201
      preview (thing Thing) -> (count Int64)
        @http POST /things/preview
        @readonly
      ping () -> ()
      remove (id Text, hard Bool = false) -> ()
        @http DELETE /things/{id}
        @deprecated use archive
      byKind (kind Kind) -> (things List(Thing))
        @readonly

    interface Admin
      reset (confirm Bool, reason Text = "") -> ()
''')


@pytest.fixture(scope="module")
def good():
    return parse_text(GOOD, file="good.zap")


def test_inline_enum_values_in_order(good):
    assert good.enums["Kind"].values == ["per_unit", "hold-removed", "uniqueCount"]
    assert good.enums["Kind"].doc == "Kinds of pricing.\nSecond doc line."
    assert (good.enums["Kind"].file, good.enums["Kind"].line) == ("good.zap", 3)


def test_inline_struct_fields_types_defaults_and_optional(good):
    fields = {f.name: f for f in good.structs["Thing"].fields}
    assert list(fields) == ["id", "name", "count", "big", "ratio", "active", "tags", "labels", "nested", "kind", "note", "extra", "children"]
    assert fields["id"].required
    assert fields["name"].default == "n/a #1"
    assert (fields["count"].type, fields["count"].default) == (TypeRef("Int32"), 0)
    assert fields["big"].default == -5
    assert fields["ratio"].default == 1.5
    assert fields["active"].default is True
    assert (fields["tags"].type, fields["tags"].default) == (TypeRef("List", (TypeRef("Text"),)), [])
    assert (fields["labels"].type, fields["labels"].default) == (TypeRef("Map", (TypeRef("Text"), TypeRef("Int64"))), {})
    assert fields["nested"].type == TypeRef("Map", (TypeRef("Text"), TypeRef("List", (TypeRef("Child"),))))
    assert fields["nested"].optional and fields["nested"].default is MISSING
    assert str(fields["nested"].type) == "Map(Text, List(Child))"
    assert (fields["kind"].type, fields["kind"].default) == (TypeRef("Kind"), "per_unit")
    assert fields["note"].optional and not fields["note"].required
    assert fields["extra"].optional and fields["extra"].type == TypeRef("Data")
    assert fields["children"].required and fields["children"].type == TypeRef("List", (TypeRef("Child"),))


def test_inline_doc_comments_above_and_trailing(good):
    thing = good.structs["Thing"]
    assert thing.doc == "A thing.\ntrailing doc"
    fields = {f.name: f for f in thing.fields}
    assert fields["name"].doc == "The display name.\nshown to humans"
    assert fields["id"].doc == ""
    assert good.structs["Child"].doc == ""
    methods = {m.name: m for m in good.interfaces["ThingService"].methods}
    assert methods["getThing"].doc == "Read one thing."
    assert methods["listThings"].doc == ""


def test_inline_comment_block_separated_by_blank_line_is_not_a_doc():
    s = parse_text(zap('''
        # About the file, not about Lonely.

        struct Lonely
          x Text
    '''))
    assert s.structs["Lonely"].doc == ""


def test_inline_deprecated_on_field_struct_and_method(good):
    fields = {f.name: f for f in good.structs["Thing"].fields}
    assert fields["children"].deprecated == "use kids"
    assert fields["id"].deprecated is None
    assert good.structs["Filter"].deprecated == "use Query"
    assert [f.name for f in good.structs["Filter"].fields] == ["kind", "limit"]
    methods = {m.name: m for m in good.interfaces["ThingService"].methods}
    assert methods["remove"].deprecated == "use archive"
    assert methods["getThing"].deprecated is None


def test_inline_http_routes_and_path_params(good):
    methods = {m.name: m for m in good.interfaces["ThingService"].methods}
    assert methods["getThing"].http == Http("GET", "/things/{id}", 200)
    assert methods["getThing"].http.path_params == ["id"]
    assert methods["putThing"].http == Http("POST", "/things", 201)
    assert methods["remove"].http == Http("DELETE", "/things/{id}", 200)
    assert methods["ping"].http is None


def test_inline_get_implies_readonly(good):
    methods = {m.name: m for m in good.interfaces["ThingService"].methods}
    assert methods["getThing"].readonly and not methods["getThing"].mutates
    assert methods["listThings"].readonly and not methods["listThings"].mutates


def test_inline_explicit_readonly_on_post_and_without_route(good):
    methods = {m.name: m for m in good.interfaces["ThingService"].methods}
    assert methods["preview"].readonly and not methods["preview"].mutates
    assert methods["byKind"].readonly and methods["byKind"].http is None


def test_inline_other_methods_mutate(good):
    methods = {m.name: m for m in good.interfaces["ThingService"].methods}
    for name in ("putThing", "ping", "remove"):
        assert methods[name].mutates and not methods[name].readonly, name


def test_inline_empty_params_and_result(good):
    ping = {m.name: m for m in good.interfaces["ThingService"].methods}["ping"]
    assert ping.params == [] and ping.result is None


def test_inline_method_params_and_result(good):
    methods = {m.name: m for m in good.interfaces["ThingService"].methods}
    remove = methods["remove"]
    assert [(p.name, p.type, p.default) for p in remove.params] == [("id", TypeRef("Text"), MISSING), ("hard", TypeRef("Bool"), False)]
    assert methods["listThings"].result.type == TypeRef("List", (TypeRef("Thing"),))
    assert methods["preview"].result.name == "count"


def test_inline_wire_service_name(good):
    assert good.interfaces["ThingService"].service == "thing"
    assert good.interfaces["Admin"].service == "admin"
    assert [(i.service, m.name) for i, m in good.methods()][-1] == ("admin", "reset")


def test_inline_single_struct_param_is_flattened(good):
    methods = {m.name: m for m in good.interfaces["ThingService"].methods}
    assert good.flat_params(methods["putThing"]) == good.structs["Thing"].fields
    assert [f.name for f in good.flat_params(methods["listThings"])] == ["kind", "limit"]


def test_inline_non_struct_or_several_params_are_not_flattened(good):
    methods = {m.name: m for m in good.interfaces["ThingService"].methods}
    assert good.flat_params(methods["getThing"]) == methods["getThing"].params  # single Text
    assert good.flat_params(methods["byKind"]) == methods["byKind"].params  # single enum
    assert [f.name for f in good.flat_params(methods["remove"])] == ["id", "hard"]
    assert good.flat_params(methods["ping"]) == []


def test_using_import_makes_other_files_types_visible(tmp_path):
    (tmp_path / "common.zap").write_text(zap('''
        enum Currency
          usd
          eur

        # Money in cents.
        struct Money
          amount Int64
          currency Currency = "usd"
    '''))
    main = tmp_path / "main.zap"
    main.write_text(zap('''
        # Uses common types.
        using import "common.zap"

        struct Invoice
          total Money
          currency Currency?

        interface InvoiceService
          pay (invoice Invoice) -> (paid Money)
            @http POST /invoices/pay
    '''))
    s = load(main)
    assert set(s.structs) == {"Money", "Invoice"} and set(s.enums) == {"Currency"}
    assert s.structs["Money"].file == str(tmp_path / "common.zap")
    assert s.structs["Invoice"].file == str(main)
    assert s.structs["Invoice"].fields[0].type == TypeRef("Money")
    assert s.structs["Money"].doc == "Money in cents."
    assert set(s.files) == {str(main), str(tmp_path / "common.zap")}
    assert [f.name for f in s.flat_params(s.interfaces["InvoiceService"].methods[0])] == ["total", "currency"]


def test_using_import_resolves_relative_to_importing_file_and_loads_each_file_once(tmp_path):
    (tmp_path / "types").mkdir()
    (tmp_path / "types" / "base.zap").write_text("enum Color\n  red\n")
    (tmp_path / "types" / "shapes.zap").write_text('using import "base.zap"\n\nstruct Shape\n  color Color\n')
    main = tmp_path / "main.zap"
    main.write_text('using import "types/shapes.zap"\nusing import "types/base.zap"\n\nstruct Picture\n  shapes List(Shape)\n')
    s = load(main)
    assert set(s.structs) == {"Shape", "Picture"} and list(s.enums) == ["Color"]
    assert len(s.files) == 3


# -- bad input -----------------------------------------------------------------------------

def test_tab_in_indentation_is_an_error():
    err = schema_error("struct A\n  x Text\n\ty Text\n")
    assert_error(err, "bad.zap", 3, "tab", "2 spaces")


def test_tab_after_spaces_in_indentation_is_an_error():
    err = schema_error("struct A\n  \tx Text\n")
    assert_error(err, "bad.zap", 2, "tab")


def test_odd_indentation_is_an_error():
    err = schema_error('''
        struct A
          x Text
           y Text
    ''')
    assert_error(err, "bad.zap", 3, "3 spaces", "multiple of 2")


def test_odd_indentation_of_an_annotation_is_an_error():
    err = schema_error('''
        interface AService
          m () -> ()
             @readonly
    ''')
    assert_error(err, "bad.zap", 3, "multiple of 2")


def test_unknown_type_in_struct_field_is_an_error():
    err = schema_error('''
        struct A
          x Text
          y Strnig
    ''')
    assert_error(err, "bad.zap", 3, "unknown type `Strnig`", "expected")


def test_unknown_type_inside_list_is_an_error():
    err = schema_error("struct A\n  xs List(Nope)\n")
    assert_error(err, "bad.zap", 2, "unknown type `Nope`")


def test_unknown_type_in_method_param_or_result_is_an_error():
    err = schema_error('''
        interface AService
          ok () -> ()
          m (x Text) -> (r Missing)
    ''')
    assert_error(err, "bad.zap", 3, "unknown type `Missing`")
    err = schema_error('''
        interface AService
          m (x Nope) -> ()
    ''')
    assert_error(err, "bad.zap", 2, "unknown type `Nope`")


def test_struct_used_before_its_declaration_is_an_error():
    # zap-schema.md: "a struct used before it is declared anywhere in the imported files" is an error.
    err = schema_error('''
        struct A
          b B

        struct B
          x Text
    ''')
    assert_error(err, "bad.zap", 2, "`B`")


def test_duplicate_type_name_is_an_error():
    err = schema_error('''
        struct A
          x Text

        enum A
          one
    ''')
    assert_error(err, "bad.zap", 4, "duplicate name `A`")


def test_type_named_like_a_builtin_is_an_error():
    err = schema_error("struct Text\n  x Int64\n")
    assert_error(err, "bad.zap", 1, "duplicate name `Text`")


def test_duplicate_type_name_across_imported_file_is_an_error(tmp_path):
    (tmp_path / "common.zap").write_text("struct A\n  x Text\n")
    main = tmp_path / "main.zap"
    main.write_text('using import "common.zap"\n\nstruct A\n  y Text\n')
    assert_error(load_error(main), str(main), 3, "duplicate name `A`")


def test_duplicate_field_is_an_error():
    err = schema_error('''
        struct A
          x Text
          y Int64
          x Int64
    ''')
    assert_error(err, "bad.zap", 4, "duplicate field `x`")


def test_duplicate_enum_value_is_an_error():
    err = schema_error("enum E\n  a\n  b\n  a\n")
    assert_error(err, "bad.zap", 4, "duplicate enum value `a`")


def test_duplicate_method_is_an_error():
    err = schema_error('''
        interface AService
          m () -> ()
          n () -> ()
          m (x Text) -> ()
    ''')
    assert_error(err, "bad.zap", 4, "duplicate method `m`")


def test_duplicate_parameter_is_an_error():
    err = schema_error("interface AService\n  m (x Text, x Int64) -> ()\n")
    assert_error(err, "bad.zap", 2, "duplicate parameter")


def test_method_without_arrow_is_an_error():
    err = schema_error('''
        interface AService
          ok () -> ()
          m (x Text)
    ''')
    assert_error(err, "bad.zap", 3, "expected `name (params) -> (result)`")


def test_method_result_without_parentheses_is_an_error():
    err = schema_error("struct R\n  x Text\n\ninterface AService\n  m () -> R\n")
    assert_error(err, "bad.zap", 5, "expected `name (params) -> (result)`")


@pytest.mark.parametrize("route, expected", [
    ("@http FETCH /x", "METHOD one of GET, POST"),
    ("@http get /x", "METHOD one of GET, POST"),
    ("@http GET", "expected `@http METHOD /path [STATUS]`"),
    ("@http POST x/y", "expected `@http METHOD /path [STATUS]`"),
    ("@http", "expected `@http METHOD /path [STATUS]`"),
    ("@http POST /x 201 extra", "expected `@http METHOD /path [STATUS]`"),
    ("@http POST /x 404", "expected a 2xx status code"),
    ("@http POST /x 302", "expected a 2xx status code"),
    ("@http POST /x 2000", "expected a 2xx status code"),
    ("@http POST /x ok", "expected a 2xx status code"),
])
def test_malformed_http_annotation_is_an_error(route, expected):
    err = schema_error(f"interface AService\n  m () -> ()\n    {route}\n")
    assert_error(err, "bad.zap", 3, expected)


def test_two_http_annotations_on_one_method_is_an_error():
    err = schema_error("interface AService\n  m () -> ()\n    @http POST /a\n    @http POST /b\n")
    assert_error(err, "bad.zap", 4, "two `@http` routes")


def test_unknown_annotation_is_an_error():
    err = schema_error('''
        interface AService
          m () -> ()
            @readOnly
    ''')
    assert_error(err, "bad.zap", 3, "unknown annotation `@readOnly`", "expected @http, @readonly or @deprecated")


def test_readonly_with_arguments_is_an_error():
    err = schema_error("interface AService\n  m () -> ()\n    @readonly yes\n")
    assert_error(err, "bad.zap", 3, "takes no arguments")


def test_http_on_a_struct_field_is_an_error():
    err = schema_error('''
        struct A
          x Text
            @http GET /a
    ''')
    assert_error(err, "bad.zap", 3, "`@http` applies only to interface methods")


def test_readonly_on_a_struct_is_an_error():
    err = schema_error("struct A\n  @readonly\n  x Text\n")
    assert_error(err, "bad.zap", 2, "`@readonly` applies only to interface methods")


@pytest.mark.parametrize("field, shown", [
    ('n Int64 = "5"', '"5"'),
    ("n Int64 = 1.5", "1.5"),
    ("n Int64 = true", "true"),
    ("n Int32 = 3000000000", "3000000000"),
    ("n Int64 = 9223372036854775808", "9223372036854775808"),
    ("b Bool = 1", "1"),
    ("t Text = 5", "5"),
    ("f Float64 = true", "true"),
    ('k Kind = "c"', '"c"'),
    ("xs List(Text) = {}", "{}"),
    ("m Map(Text, Int64) = []", "[]"),
    ("s Sub = {}", "{}"),
])
def test_default_not_matching_its_type_is_an_error(field, shown):
    err = schema_error(f"enum Kind\n  a\n  b\n\nstruct Sub\n  x Text\n\nstruct A\n  ok Text\n  {field}\n")
    assert_error(err, "bad.zap", 10, f"default {shown} of", "is not a literal of type")


def test_default_not_matching_its_type_in_method_param_is_an_error():
    err = schema_error('interface AService\n  m (limit Int64 = "ten") -> ()\n')
    assert_error(err, "bad.zap", 2, "`limit`", "is not a literal of type `Int64`")


def test_default_that_is_not_a_literal_is_an_error():
    err = schema_error("struct A\n  t Text = usd\n")
    assert_error(err, "bad.zap", 2, "default `usd`", 'expected a literal such as "usd"')


def test_optional_with_default_is_an_error():
    err = schema_error('''
        struct A
          x Text
          currency Text? = "usd"
    ''')
    assert_error(err, "bad.zap", 3, "optional (?) or has a default, not both")


def test_get_route_with_struct_parameter_is_an_error():
    err = schema_error('''
        struct Filter
          kind Text

        interface AService
          list (user Text, filter Filter) -> ()
            @http GET /list
    ''')
    assert_error(err, "bad.zap", 5, "`list` is GET", "`filter`", "cannot travel in a query string")


def test_get_route_with_flattened_struct_holding_a_struct_is_an_error():
    err = schema_error('''
        struct Inner
          x Text

        struct Query
          user Text
          inner Inner

        interface AService
          find (query Query) -> ()
            @http GET /find
    ''')
    assert_error(err, "bad.zap", 9, "`inner`", "cannot travel in a query string")


def test_delete_route_with_data_parameter_is_an_error():
    err = schema_error("interface AService\n  drop (id Text, meta Data) -> ()\n    @http DELETE /x/{id}\n")
    assert_error(err, "bad.zap", 2, "`meta`", "cannot travel in a query string")


def test_get_route_with_flattened_scalar_struct_is_accepted():
    s = parse_text("struct Q\n  user Text\n  limit Int64 = 5\n\ninterface AService\n  find (q Q) -> ()\n    @http GET /find\n")
    assert s.interfaces["AService"].methods[0].http.verb == "GET"


def test_path_param_not_among_params_is_an_error():
    err = schema_error('''
        interface AService
          ok (id Text) -> ()
            @http GET /ok/{id}
          get (id Text) -> ()
            @http GET /things/{thingId}
    ''')
    assert_error(err, "bad.zap", 4, "path parameter `{thingId}`", "not one of its parameters")


def test_two_methods_with_the_same_route_is_an_error():
    err = schema_error('''
        interface AService
          first (id Text) -> ()
            @http POST /things/{id}
          other () -> ()
            @http GET /things
          second (name Text) -> ()
            @http POST /things/{name}
    ''')
    assert_error(err, "bad.zap", 6, "route POST /things/{name} is already used by `first`")


def test_same_path_with_different_verbs_is_accepted():
    s = parse_text("interface AService\n  a () -> ()\n    @http GET /x\n  b () -> ()\n    @http POST /x\n")
    assert [m.http.verb for m in s.interfaces["AService"].methods] == ["GET", "POST"]


def test_same_wire_name_in_two_interfaces_is_an_error():
    err = schema_error("interface ThingService\n  m () -> ()\n\ninterface Thing\n  m () -> ()\n")
    assert_error(err, "bad.zap", 5, "duplicate wire name `thing.m`")


@pytest.mark.parametrize("line", [
    "strcut A",
    "struct",
    "struct A B",
    "record A",
    "x Text",
    "using import other.zap",
    "@readonly",
])
def test_top_level_line_outside_the_grammar_is_an_error(line):
    err = schema_error(f"enum E\n  a\n\n{line}\n")
    assert_error(err, "bad.zap", 4, "expected `enum Name`, `struct Name`, `interface Name` or `using import")


def test_declaration_name_not_pascal_case_is_an_error():
    err = schema_error("struct balance\n  x Text\n")
    assert_error(err, "bad.zap", 1, "expected PascalCase")


def test_member_line_outside_the_grammar_is_an_error():
    err = schema_error("struct A\n  x\n")
    assert_error(err, "bad.zap", 2, "expected `name Type`")
    err = schema_error("enum E\n  two words\n")
    assert_error(err, "bad.zap", 2, "expected a single word")
    err = schema_error("struct A\n  X Text\n")
    assert_error(err, "bad.zap", 2, "expected camelCase")
    err = schema_error("interface AService\n  GetX () -> ()\n")
    assert_error(err, "bad.zap", 2, "method name `GetX`", "expected camelCase")
    err = schema_error("interface AService\n  getX (User Text) -> ()\n")
    assert_error(err, "bad.zap", 2, "field name `User`", "expected camelCase")


def test_line_indented_two_levels_that_is_not_an_annotation_is_an_error():
    err = schema_error("struct A\n  x Text\n    y Text\n")
    assert_error(err, "bad.zap", 3, "expected an annotation starting with @")


def test_annotation_before_any_declaration_is_an_error():
    err = schema_error('''
        # nothing declared yet
          @deprecated old
        struct A
          x Text
    ''')
    assert_error(err, "bad.zap", 2, "annotation without a declaration to belong to")


def test_member_annotation_without_a_member_is_an_error():
    err = schema_error('''
        interface AService
            @readonly
          m () -> ()
    ''')
    assert_error(err, "bad.zap", 2, "annotation without a declaration to belong to")


def test_member_annotation_right_after_a_new_declaration_is_an_error():
    # The method above belongs to another declaration: the annotation has no member to belong to.
    err = schema_error('''
        interface AService
          m () -> ()
        struct B
            @deprecated old
          x Text
    ''')
    assert_error(err, "bad.zap", 4, "annotation without a declaration to belong to")


def test_using_import_after_a_declaration_is_an_error(tmp_path):
    (tmp_path / "common.zap").write_text("enum E\n  a\n")
    main = tmp_path / "main.zap"
    main.write_text('struct A\n  x Text\n\nusing import "common.zap"\n')
    assert_error(load_error(main), str(main), 4, "`using import` must come before any declaration")


def test_import_of_a_missing_file_is_an_error(tmp_path):
    main = tmp_path / "main.zap"
    main.write_text('# header\nusing import "nowhere.zap"\n\nstruct A\n  x Text\n')
    assert_error(load_error(main), str(main), 2, 'imported file "nowhere.zap" not found')


def test_error_in_an_imported_file_names_that_file_and_line(tmp_path):
    common = tmp_path / "common.zap"
    common.write_text("struct Money\n  amount Int64\n  currency Currncy\n")
    main = tmp_path / "main.zap"
    main.write_text('using import "common.zap"\n\nstruct A\n  m Money\n')
    assert_error(load_error(main), str(common), 3, "unknown type `Currncy`")


def test_syntax_error_in_an_imported_file_names_that_file_and_line(tmp_path):
    common = tmp_path / "common.zap"
    common.write_text("enum E\n  a\n   b\n")
    main = tmp_path / "main.zap"
    main.write_text('using import "common.zap"\n')
    assert_error(load_error(main), str(common), 3, "multiple of 2")


def test_missing_schema_file_is_an_error(tmp_path):
    path = tmp_path / "absent.zap"
    err = load_error(path)
    assert err.file == str(path) and "cannot read schema file" in err.message


def test_indented_line_before_any_declaration_is_an_error():
    err = schema_error('''
        # header

          x Text
        struct A
          y Text
    ''')
    assert_error(err, "bad.zap", 3, "indented line outside a declaration", "expected `enum`, `struct` or `interface` first")


@pytest.mark.parametrize("type_text, expected", [
    ("List", "`List` takes 1 type argument"),
    ("List(Text, Text)", "`List` takes 1 type argument"),
    ("Map(Text)", "`Map` takes 2 type arguments"),
    ("Map(Text, Text, Text)", "`Map` takes 2 type arguments"),
    ("Map", "`Map` takes 2 type arguments"),
    ("Text(Int64)", "type `Text` takes no arguments"),
])
def test_generic_with_wrong_number_of_arguments_is_an_error(type_text, expected):
    err = schema_error(f"struct A\n  ok Text\n  xs {type_text}\n")
    assert_error(err, "bad.zap", 3, expected)


@pytest.mark.parametrize("type_text", ["Map(Int64, Text)", "Map(Kind, Text)", "List(Map(Bool, Int64))"])
def test_map_with_non_text_keys_is_an_error(type_text):
    err = schema_error(f"enum Kind\n  a\n\nstruct A\n  ok Text\n  m {type_text}\n")
    assert_error(err, "bad.zap", 6, "Map keys must be Text")
