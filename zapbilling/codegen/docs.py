"""docs/api.md, the API reference, generated from the registry (`zapbilling gen docs`).

Everything in it comes from what the server itself runs, so the API reference cannot describe an
operation the server does not have or parameters it does not take: the schema (docs, types,
defaults, routes, read-only or mutating), the parameter rules (registry.rules, with the bounds
they declare in `json_schema`), the error kinds (errors.py KINDS), the hand-kept errors of each
method (billing/errors_by_method.py, which the registry checks against the schema) and the
examples' answers, produced by running each example against a real server (docs_examples.py).
The conventions every operation shares are written by hand in docs/conventions.md.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..errors import KINDS
from ..models import MAX_DEPTH, Rule, SizeBounds
from ..registry import Command, Registry
from ..transport.calls import MAX_IDEMPOTENCY_KEY
from ..schema import MISSING, Field, Method, Schema, TypeRef
from .docs_examples import Exchange, load_examples, rest_request, run_examples

HOST = "localhost:8080"
AUTH = '-H "Authorization: Bearer $KEY"'
CONVENTIONS = "conventions.md"

KIND_MEANINGS = {
    "parse_error": "the body is not valid JSON or msgpack",
    "invalid_request": "a malformed envelope (no `method`, `params` not a map, a bad batch), a REST body that is not an object, an idempotency key too long",
    "method_not_found": "no such method (ZAP) or route (REST)",
    "invalid_params": "a parameter missing, unknown, of the wrong type, or refused by a rule or by the operation",
    "unauthorized": "no API key, or an unknown or revoked one",
    "forbidden": "a `read` key called an operation that changes data",
    "not_found": "an id that names nothing in this org and mode",
    "conflict": "the state refuses the call: an idempotency key reused with other params, a hold already settled, a taken name, a quota reached",
    "insufficient_funds": "a hold larger than what is available",
    "spend_cap_reached": "a hold that would take the user's spending this period past one of their spend caps",
    "payload_too_large": "a body over its size bound (1 MiB) or holding too many values; in a batch, an entry not run once the batch's answers passed their bound",
    "unsupported_media_type": "a Content-Type other than JSON or msgpack",
    "rate_limited": "more calls of one API key than its rate allows (each entry of a batch counts); retry after the `Retry-After` header's seconds",
    "internal_error": "a fault of the server: nothing is half-written and no detail leaks",
}
"""What each kind of zapbilling/errors.py means, for the API reference's table of kinds."""

UNKNOWN_PARAMETER = "unknown parameter: <name>"
REQUIRED = "<name> is required"
ITEM_REQUIRED = "<field> is required for each <item>"
NOT_ONE_OF = "<name> must be one of <values>"
UNAUTHORIZED = "missing or invalid API key"
READ_ONLY = "this API key is read-only and <method> changes data"
KEY_REUSED = "idempotency key was already used with different parameters"
KEY_TOO_LONG = f"idempotency key must be at most {MAX_IDEMPOTENCY_KEY} characters"

_TYPE_ERRORS = {
    "Int32": ("<name> must be an integer", "<name> is out of range (signed 32-bit integer)"),
    "Int64": ("<name> must be an integer", "<name> is out of range (signed 64-bit integer)"),
    "Text": ("<name> must be a string", "<name> is too long: at most <n>"),
    "Bool": ("<name> must be a boolean",),
    "Float64": ("<name> must be a number",),
    "List": ("<name> must be a list",),
    "Map": ("<name> must be an object", "<name> is too large: at most <bytes> bytes encoded", "<name> has too many keys: at most <keys>"),
    "struct": ("<name> must be an object",),
    "Data": (f"<name> must be a JSON value (objects with text keys, lists, text, numbers, booleans, null) nested at most {MAX_DEPTH} deep",
             "<name> is too large: at most <bytes> bytes encoded", "<name> has too many keys: at most <keys>"),
}
"""The invalid-params messages of a value of the wrong type or size (zapbilling/models.py), by
type; `<n>` is each text parameter's bound (its rules column), `<bytes>` and `<keys>` are filled
in from the registry's bounds."""

DERIVED_MESSAGES = (UNKNOWN_PARAMETER, REQUIRED, ITEM_REQUIRED, NOT_ONE_OF, UNAUTHORIZED, READ_ONLY, KEY_REUSED,
                    KEY_TOO_LONG, *dict.fromkeys(m for ms in _TYPE_ERRORS.values() for m in ms))
"""Every message the API reference derives rather than reads from the errors table, as templates
(`<...>` is filled in per operation): tests/test_docs.py finds each in the source."""


@dataclass(frozen=True)
class ErrorRow:
    kind: str
    messages: tuple[str, ...]
    """What the caller can rely on, `<...>` for what the server fills in."""
    when: str = ""


# -- errors of one method -------------------------------------------------------------------

def method_errors(registry: Registry, command: Command) -> list[ErrorRow]:
    """Every error `command` can answer besides the transport's own (parse_error, a malformed
    envelope, payload_too_large, unsupported_media_type, internal_error): the ones derived from
    its parameters and from mutating or not, then the method's own from the hand-kept table."""
    schema = registry.schema
    query = command.http is not None and command.http.verb in ("GET", "DELETE")
    rows = [ErrorRow("invalid_params", (UNKNOWN_PARAMETER,), "a name the operation does not take (checked first)")]
    for f in command.fields:
        if f.required:
            when = f"REST: `{f.name} query parameter is required`" if query and f.name not in _path_params(command) else ""
            rows.append(ErrorRow("invalid_params", (_fill(REQUIRED, name=f.name),), when))
    for parent, item in _list_items(schema, command.fields):
        singular = parent[:-1] if parent.endswith("s") else parent
        for f in item.fields:
            if f.required:
                rows.append(ErrorRow("invalid_params", (_fill(ITEM_REQUIRED, field=f.name, item=singular),)))
    for name, enum in _enum_fields(schema, command.fields):
        values = [f"'{v}'" for v in schema.enums[enum].values]
        allowed = values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]
        rows.append(ErrorRow("invalid_params", (_fill(NOT_ONE_OF, name=name, values=allowed),)))
    if type_messages := _type_messages(schema, command.fields):
        sized = tuple(_fill(m, bytes=str(registry.bounds.data_bytes), keys=str(registry.bounds.data_keys)) for m in type_messages)
        rows.append(ErrorRow("invalid_params", sized, "a value of the wrong type or size"))
    for name, rule in _applied_rules(registry, command):
        if messages := rule_messages(registry, rule, name):
            rows.append(ErrorRow("invalid_params", messages, f"`{name}` breaks its rule"))
    rows += [ErrorRow(kind, (message,)) for kind, message in registry.errors.get(command.name, ())]
    rows.append(ErrorRow("unauthorized", (UNAUTHORIZED,)))
    if command.mutates:
        rows += [
            ErrorRow("forbidden", (_fill(READ_ONLY, method=command.wire),), "a `read` key"),
            ErrorRow("conflict", (KEY_REUSED,), "the same idempotency key with other params"),
            ErrorRow("invalid_request", (KEY_TOO_LONG,)),
        ]
    return rows


def _fill(template: str, **values: str) -> str:
    for name, value in values.items():
        template = template.replace(f"<{name}>", value)
    return template


def rule_messages(registry: Registry, rule: Rule, name: str) -> tuple[str, ...]:
    return tuple(_fill(m, name=name) for m in registry.rule_errors.get(rule, ()))


def _path_params(command: Command) -> list[str]:
    return command.http.path_params if command.http else []


def _walk(schema: Schema, fields: Iterable[Field], seen: frozenset[str] = frozenset()) -> Iterable[tuple[Field, TypeRef]]:
    """Every field reachable from `fields` (through lists, maps and structs), with each type
    met on the way; a struct is entered once per path."""
    for f in fields:
        stack = [f.type]
        while stack:
            t = stack.pop()
            yield f, t
            stack += list(t.args)
            if t.name in schema.structs and t.name not in seen:
                yield from _walk(schema, schema.structs[t.name].fields, seen | {t.name})


def _applied_rules(registry: Registry, command: Command) -> list[tuple[str, Rule]]:
    """(field name, rule) for every rule the params model runs: the method's rules on its own
    parameters, the rules by field name on fields of nested structs."""
    own, by_name = registry.rules(command.name), registry.field_rules
    found = [(f.name, (own if any(f is p for p in command.fields) else by_name).get(f.name))
             for f, _ in _walk(registry.schema, command.fields)]
    return [(name, rule) for name, rule in dict.fromkeys(found) if rule is not None]


def _type_messages(schema: Schema, fields: list[Field]) -> tuple[str, ...]:
    kinds = ["struct" if t.name in schema.structs else t.name for _, t in _walk(schema, fields)]
    return tuple(dict.fromkeys(m for k in kinds for m in _TYPE_ERRORS.get(k, ())))


def _enum_fields(schema: Schema, fields: list[Field]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((f.name, t.name) for f, t in _walk(schema, fields) if t.name in schema.enums))


def _list_items(schema: Schema, fields: list[Field]) -> list[tuple[str, Any]]:
    return [(f.name, schema.structs[t.args[0].name]) for f, t in _walk(schema, fields)
            if t.name == "List" and t.args[0].name in schema.structs]


# -- markdown -------------------------------------------------------------------------------

def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _type_anchor(schema: Schema, name: str) -> str:
    return slug(f"{'enum' if name in schema.enums else 'struct'} {name}")


def type_md(schema: Schema, t: TypeRef) -> str:
    """A type with every declared type in it linked to its section."""
    if t.name in schema.structs or t.name in schema.enums:
        return f"[`{t.name}`](#{_type_anchor(schema, t.name)})"
    if not t.args:
        return f"`{t.name}`"
    return f"`{t.name}(`" + "`, `".join(type_md(schema, a) for a in t.args) + "`)`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _presence(f: Field) -> str:
    if f.default is not MISSING:
        return f"optional, default {_code(json.dumps(f.default))}"
    return "optional" if f.optional else "**required**"


def bound_text(bounds: SizeBounds, t: TypeRef, name: str) -> str:
    """The size bound of a parameter of type `t` (models.py SizeBounds), for its rules column."""
    if t.name == "Text":
        return f"at most {bounds.text_bound(name)} characters"
    if t.name == "List" and t.args[0].name == "Text":
        return f"items at most {bounds.text_bound(name)} characters"
    if t.name in ("Data", "Map"):
        values = f"; values at most {bounds.text_bound(name)} characters" if t.name == "Map" and t.args[1].name == "Text" else ""
        return f"at most {bounds.data_bytes} bytes as compact JSON and {bounds.data_keys} keys (at every depth){values}"
    return ""


def rules_cell(registry: Registry, rule: Rule | None, f: Field) -> str:
    """A parameter's rules column: its size bound, then what its rule enforces."""
    return "; ".join(p for p in (bound_text(registry.bounds, f.type, f.name), rule_text(registry, rule, f.name)) if p)


def rule_text(registry: Registry, rule: Rule | None, name: str) -> str:
    """What a rule enforces on parameter `name`, as its `json_schema` states it; where that
    states no bound, the messages it answers."""
    if rule is None:
        return ""
    bounds = getattr(rule, "json_schema", {})
    parts = []
    low, high = bounds.get("minimum"), bounds.get("maximum")
    if low is not None and high is not None:
        parts.append(f"{low} to {high}")
    elif low is not None:
        parts.append(f"at least {low}")
    elif high is not None:
        parts.append(f"at most {high}")
    if "minItems" in bounds or "maxItems" in bounds:
        parts.append(f"{bounds.get('minItems', 0)} to {bounds.get('maxItems', 'any number of')} items")
    if "pattern" in bounds:
        parts.append(f"matches {_code(bounds['pattern'])}")
    messages = rule_messages(registry, rule, name)
    if messages and not {"minimum", "maximum", "minItems", "maxItems"} & set(bounds):
        parts.append("else " + ", ".join(_code(m) for m in messages))  # a pattern, or none: the message says more
    return "; ".join(parts)


class _Writer:
    def __init__(self, registry: Registry, exchanges: dict[str, Exchange], examples: dict[str, Any], schema_name: str):
        self.registry, self.schema = registry, registry.schema
        self.exchanges, self.examples, self.schema_name = exchanges, examples, schema_name
        self.lines: list[str] = []

    def __call__(self, *lines: str) -> None:
        self.lines.extend(lines)

    def text(self) -> str:
        return "\n".join(self.lines).rstrip("\n") + "\n"

    # -- the document ------------------------------------------------------------------------
    def document(self) -> str:
        self(
            "# zapbilling API reference",
            "",
            f"<!-- Generated by `zapbilling gen docs` from {self.schema_name}: do not edit. Change the schema,",
            "     schemas/examples/, or zapbilling/billing/errors_by_method.py, and run `zapbilling gen docs`. -->",
            "",
            "Every operation of the billing service: what it does, how to call it over REST and over ZAP,",
            "its parameters and their rules, its result, the errors it can answer, and an example whose",
            "answer is the one the server gave (`zapbilling gen docs` runs every example against a real",
            f"server on a fresh database, on a clock stopped at {self._start()}; only ids are rewritten,",
            "so that the page is the same on every run).",
            "",
            "What holds for every operation (money, currencies, ids, times, paging, strict input, errors,",
            f"idempotency, authentication, durability, tenancy) is in [conventions.md]({CONVENTIONS}); the",
            "schema language these operations are declared in is described in [zap-schema.md](zap-schema.md).",
            "",
        )
        self.calling()
        self.kinds()
        self.index()
        for command in self.registry.commands.values():
            self.operation(command)
        self.types()
        return self.text()

    def _start(self) -> str:
        from ..times import format_ts
        from .docs_examples import START

        return format_ts(START)

    def calling(self) -> None:
        self(
            "## Calling an operation",
            "",
            "Each operation is reachable two ways, which answer alike:",
            "",
            "- **REST**: its own route under `/api/v1/billing/`. GET and DELETE take the parameters from the",
            "  query string, POST from a JSON (or msgpack) body; `{id}` in a route is a parameter sent in",
            "  the path. A success answers the result itself with the route's status; an error answers",
            '  `{"error": {"type": "api-error", "code": <kind>, "message": ..., "param": ...}}` with the',
            "  kind's REST status.",
            "- **ZAP**: `POST /api/v1/zap` with the envelope",
            '  `{"method": "billing.<name>", "id": <any>, "params": {...}}` (JSON, or msgpack with',
            "  `Content-Type: application/msgpack`), or a list of 1 to 100 envelopes (a batch). A success",
            '  answers `{"id": ..., "result": ...}`; an error',
            '  `{"id": ..., "error": {"code": <ZAP code>, "message": ..., "data": {"kind": ..., "param": ...}}}`.',
            "  `zap.discover` answers the catalogue of methods and types.",
            "",
            "Every call needs an API key (`Authorization: Bearer <key>`). An operation that changes data",
            "needs an `admin` key and accepts an idempotency key (`Idempotency-Key` header, `idempotencyKey`",
            "envelope member); a read-only one can be called with a `read` key too. See",
            f"[conventions.md]({CONVENTIONS}#authentication) and [idempotency]({CONVENTIONS}#idempotency).",
            "",
        )

    def kinds(self) -> None:
        self(
            "## Error kinds",
            "",
            "Every error has one of these kinds (`code` of a REST error body, `data.kind` of a ZAP one). The",
            "HTTP status of a ZAP answer is 200 for errors of the call itself, so that a batch can mix",
            "successes and errors; errors of the request as a whole have their own status.",
            "",
            "| kind | REST status | ZAP code | ZAP HTTP status | meaning |",
            "|---|---|---|---|---|",
        )
        for kind, info in KINDS.items():
            self(f"| `{kind}` | {info.rest_status} | {info.zap_code} | {info.zap_http_status} | {_cell(KIND_MEANINGS.get(kind, ''))} |")
        self("", "The messages each operation can answer are listed with it, below.", "")

    def index(self) -> None:
        self("## Operations", "", "| operation | REST route | changes data | what it does |", "|---|---|---|---|")
        for c in self.registry.commands.values():
            route = f"`{c.http.verb} {c.http.path}`" if c.http else "ZAP only"
            self(f"| [{c.name}](#{slug(c.name)}) | {route} | {'yes' if c.mutates else 'no'} | {_cell(_prose(_first_line(c.method.doc)))} |")
        self("")

    # -- one operation ---------------------------------------------------------------------------
    def operation(self, c: Command) -> None:
        self(f"### {c.name}", "")
        self._doc(c.method.doc, c.method.deprecated)
        self(f"- ZAP method: `{c.wire}`")
        if c.http:
            where = "the query string" if c.http.verb in ("GET", "DELETE") else "a JSON body"
            path = f"`{'`, `'.join(c.http.path_params)}` in the path, the other parameters in {where}" if c.http.path_params else f"parameters in {where}"
            self(f"- REST: `{c.http.verb} {c.http.path}` ({path}); success `{c.http.status}`")
        else:
            self("- REST: none (ZAP only)")
        if c.mutates:
            self("- Changes data: needs an `admin` key; accepts an idempotency key (`Idempotency-Key` header,"
                 " `idempotencyKey` envelope member): a retry with the same key and params gets the first answer")
        else:
            self("- Read-only: any key (`admin` or `read`); changes nothing, and ignores an idempotency key")
        self("")
        self.parameters(c)
        self.result(c.method)
        self.errors(c)
        self.example(c)

    def parameters(self, c: Command) -> None:
        self("**Parameters**", "")
        if not c.fields:
            self("None.", "")
            return
        flat = c.fields is not c.method.params
        if flat:
            struct = c.method.params[0].type
            self(f"The fields of {type_md(self.schema, struct)}, sent flat (not wrapped in `{c.method.params[0].name}`).", "")
        rules = self.registry.rules(c.name)
        path = _path_params(c)
        self("| name | type | presence | rules | description |", "|---|---|---|---|---|")
        for f in c.fields:
            name = f"`{f.name}`" + (" (path)" if f.name in path else "")
            self(f"| {name} | {type_md(self.schema, f.type)} | {_presence(f)} | {_cell(rules_cell(self.registry, rules.get(f.name), f))} | {_cell(_field_doc(f))} |")
        self("")

    def result(self, m: Method) -> None:
        self("**Result**", "")
        if m.result is None:
            self("Nothing (`null`).", "")
            return
        t = m.result.type
        self(f"{type_md(self.schema, t)}" + (f": {_prose(m.result.doc)}" if m.result.doc else ""), "")
        if t.name in self.schema.structs:
            self.fields_table(self.schema.structs[t.name].fields, rules=None)

    def fields_table(self, fields: list[Field], rules: dict[str, Rule] | None) -> None:
        header = "| field | type | presence | description |" if rules is None else "| field | type | presence | rules | description |"
        self(header, "|---|---|---|---|" + ("---|" if rules is not None else ""))
        for f in fields:
            presence = ("always" if not f.optional else "optional") if rules is None else _presence(f)
            rule = "" if rules is None else f" {_cell(rules_cell(self.registry, rules.get(f.name), f))} |"
            self(f"| `{f.name}` | {type_md(self.schema, f.type)} | {presence} |{rule} {_cell(_field_doc(f))} |")
        self("")

    def errors(self, c: Command) -> None:
        self("**Errors**", "", "| kind | REST | ZAP | message | when |", "|---|---|---|---|---|")
        for row in method_errors(self.registry, c):
            info = KINDS[row.kind]
            messages = "<br>".join(_code(m) for m in row.messages)
            self(f"| `{row.kind}` | {info.rest_status} | {info.zap_code} | {_cell(messages)} | {_cell(row.when)} |")
        self("")

    def example(self, c: Command) -> None:
        ex = self.exchanges[c.wire]
        example = self.examples[c.name]
        self("**Example**", "")
        if example.setup:
            steps = _counted(s.method for s in example.setup)
            self(f"Before the call, in a fresh org: {steps} (setup `{example.setup_name}` of `schemas/examples/`).", "")
        else:
            self("On a fresh org.", "")
        verb, url, body = rest_request(c, ex.params)
        lines = [f"curl -s{'' if verb == 'GET' else f' -X {verb}'} {shlex.quote(HOST + url)} {AUTH}"]
        if body is not None or ex.idempotency_key:
            extra = []
            if body is not None:
                extra.append("-H 'Content-Type: application/json'")
            if ex.idempotency_key:
                extra.append(f"-H {shlex.quote('Idempotency-Key: ' + ex.idempotency_key)}")
            lines[0] += " \\"
            lines.append("     " + " ".join(extra) + (" \\" if body is not None else ""))
            if body is not None:
                lines.append(f"     -d {shlex.quote(_compact(body))}")
        self("REST:", "", "```sh", *lines, "```", "", f"Answer `{ex.rest_status}`:", "", "```json", _pretty(ex.rest_body), "```", "")
        zap = [f"curl -s -X POST {HOST}/api/v1/zap {AUTH} -H 'Content-Type: application/json' \\",
               f"     -d {shlex.quote(_compact(ex.zap_envelope))}"]
        rest = {k: v for k, v in ex.zap_body.items() if k != "result"}
        self("ZAP (the same call; `zapbilling gen docs` checks that the result is the same as over REST):", "",
             "```sh", *zap, "```", "",
             f"Answer `{ex.zap_status}`: `{_compact(rest)[:-1]}, \"result\": ...}}` with the result above.", "")

    # -- types ---------------------------------------------------------------------------------
    def types(self) -> None:
        self(
            "## Types",
            "",
            "Every struct and enum of the schema, in the order it declares them. A struct callers send",
            "shows each field's presence and the rules that hold for its name everywhere; the rules of",
            "one operation's parameters are listed with the operation.",
            "",
        )
        used = self._used_by()
        sent = self._sent()
        for name in sorted(self.schema.order, key=self.schema.order.__getitem__):
            if name in self.schema.structs:
                s = self.schema.structs[name]
                self(f"### struct {name}", "")
                self._doc(s.doc, s.deprecated)
                self.fields_table(s.fields, rules=dict(self.registry.field_rules) if name in sent else None)
            elif name in self.schema.enums:
                e = self.schema.enums[name]
                self(f"### enum {name}", "")
                self._doc(e.doc, e.deprecated)
                self("Values, sent as strings: " + ", ".join(f"`{v}`" for v in e.values) + ".", "")
            else:
                continue
            if used.get(name):
                self("Used by: " + ", ".join(f"[{m}](#{slug(m)})" for m in used[name]) + ".", "")

    def _doc(self, doc: str, deprecated: str | None) -> None:
        if doc:
            self(_prose(doc), "")
        if deprecated:
            self(f"**Deprecated:** {deprecated}", "")

    def _sent(self) -> set[str]:
        """The types some operation's params contain: those a caller writes."""
        params = [f for c in self.registry.commands.values() for f in c.method.params]
        return {t.name for _, t in _walk(self.schema, params)}

    def _used_by(self) -> dict[str, list[str]]:
        """Type name -> the operations whose params or result contain it, at any depth."""
        out: dict[str, list[str]] = {}
        for c in self.registry.commands.values():
            fields = list(c.method.params) + ([c.method.result] if c.method.result else [])
            for name in dict.fromkeys(t.name for _, t in _walk(self.schema, fields)):
                if name in self.schema.structs or name in self.schema.enums:
                    out.setdefault(name, []).append(c.name)
        return out


def _first_line(doc: str) -> str:
    return doc.split("\n")[0]


def _prose(doc: str) -> str:
    """Schema doc text as markdown: one line, and `<` escaped so that `<model>` is not taken
    for an HTML tag."""
    return doc.replace("\n", " ").replace("<", "&lt;")


def _field_doc(f: Field) -> str:
    doc = _prose(f.doc)
    return f"**Deprecated:** {f.deprecated}. {doc}".strip() if f.deprecated else doc


def _counted(names: Iterable[str]) -> str:
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return ", ".join(f"`{n}`" + (f" x{k}" if k > 1 else "") for n, k in counts.items())


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _pretty(value: Any, indent: str = "", width: int = 96) -> str:
    """JSON indented by two spaces, but a list or object that fits on its line stays on it."""
    flat = _compact(value)
    if not isinstance(value, (dict, list)) or not value or len(indent) + len(flat) <= width:
        return flat
    inner = indent + "  "
    if isinstance(value, dict):
        items = [f"{inner}{_compact(k)}: {_pretty(v, inner, width - len(_compact(k)) - 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    return "[\n" + ",\n".join(f"{inner}{_pretty(v, inner, width)}" for v in value) + f"\n{indent}]"


def generate(registry: Registry, schema_path: Path, schema_name: str) -> str:
    """docs/api.md's text. Runs every example (a few seconds); raises ExampleError if one fails."""
    exchanges = run_examples(registry, schema_path)
    return _Writer(registry, exchanges, load_examples(schema_path), schema_name).document()


__all__ = ["DERIVED_MESSAGES", "ErrorRow", "KIND_MEANINGS", "bound_text", "generate", "method_errors", "rule_text", "rules_cell", "slug", "type_md"]
