"""Schema + handlers -> commands. Built once at start-up; both transports, zap.discover and the
tests read the same commands, so the REST and ZAP paths cannot disagree about an operation."""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Mapping

from pydantic import BaseModel

from .errors import KINDS
from .models import ModelBuilder, Rule, SizeBounds
from .schema import MISSING, Field, Http, Method, Schema, TypeRef, load

if TYPE_CHECKING:
    from .limits import Limits

Handler = Callable[[Any, Any], Awaitable[dict[str, Any]]]
MethodErrors = Mapping[str, tuple[tuple[str, str], ...]]
"""Method name -> the (kind, message) errors only its handler knows (billing/errors_by_method.py)."""


def default_schema_path() -> Path:
    return Path(str(resources.files("zapbilling") / "schemas" / "billing.zap"))


class RegistryError(RuntimeError):
    """The schema and the handlers do not match: raised at start-up, never at request time."""


@dataclass(frozen=True)
class Command:
    name: str
    wire: str
    method: Method
    fields: list[Field]
    """The parameters a caller sends (a single struct parameter's fields, flattened)."""
    params_model: type[BaseModel]
    result_model: type[BaseModel] | None
    handler: Handler
    http: Http | None
    mutates: bool = field(init=False)
    """The method's, copied here: read on every call."""
    first_pass_model: type[BaseModel]
    """`params_model` without its validators of null (models.py: the first pass): tried first."""
    validate: Callable[[Any], Any] = field(init=False)
    """The first-pass model's pydantic-core validator, called directly: what `model_validate`
    does for a dict, without its Python wrapper (seven keyword arguments passed on). Measured
    (timeit) on getBalance's params: 1.38 -> 0.91 us a call."""
    validate_fully: Callable[[Any], Any] = field(init=False)
    """`params_model`'s, for params the first pass refused: its value or its error is the call's."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mutates", self.method.mutates)
        object.__setattr__(self, "validate", self.first_pass_model.__pydantic_validator__.validate_python)
        object.__setattr__(self, "validate_fully", self.params_model.__pydantic_validator__.validate_python)


@dataclass(frozen=True)
class Registry:
    schema: Schema
    commands: dict[str, Command]
    """By wire name (`billing.getBalance`)."""
    catalogue: dict[str, Any]
    """What zap.discover answers."""
    field_rules: Mapping[str, Rule] = field(default_factory=dict)
    method_rules: Mapping[str, Mapping[str, Rule]] = field(default_factory=dict)
    """The rules the params models apply, kept for the OpenAPI document."""
    errors: MethodErrors = field(default_factory=dict)
    """Each method's own errors, for the API reference (docs/api.md)."""
    rule_errors: Mapping[Rule, tuple[str, ...]] = field(default_factory=dict)
    """The messages each rule answers, for the API reference."""
    bounds: SizeBounds = field(default_factory=SizeBounds)
    """The size bounds the params models enforce, for the API reference and the OpenAPI document."""

    def rules(self, method: str) -> Mapping[str, Rule]:
        """A method's parameter rules as its params model applies them: its own rule for a
        parameter replaces the rule for every field of that name."""
        return {**self.field_rules, **self.method_rules.get(method, {})}


def build_registry(
    schema: Schema,
    handlers: Mapping[str, Handler],
    field_rules: Mapping[str, Rule] | None = None,
    method_rules: Mapping[str, Mapping[str, Rule]] | None = None,
    errors: MethodErrors | None = None,
    rule_errors: Mapping[Rule, tuple[str, ...]] | None = None,
    bounds: SizeBounds | None = None,
) -> Registry:
    method_rules = method_rules or {}
    methods = {m.name: (i, m) for i, m in schema.methods()}
    if len(methods) != len(schema.methods()):
        raise RegistryError("two interfaces declare a method of the same name; handlers are keyed by method name")
    if missing := sorted(set(methods) - set(handlers)):
        raise RegistryError(f"schema methods without a handler: {', '.join(missing)}")
    if extra := sorted(set(handlers) - set(methods)):
        raise RegistryError(f"handlers for methods the schema does not declare: {', '.join(extra)}")
    all_fields = {f.name for s in schema.structs.values() for f in s.fields} | {
        f.name for _, m in methods.values() for f in schema.flat_params(m)
    }
    if unknown := sorted(set(field_rules or {}) - all_fields):
        raise RegistryError(f"field rules for fields the schema does not declare: {', '.join(unknown)}")
    for name, rules in method_rules.items():
        if name not in methods:
            raise RegistryError(f"rules for a method the schema does not declare: {name}")
        params = {f.name for f in schema.flat_params(methods[name][1])}
        if unknown := sorted(set(rules) - params):
            raise RegistryError(f"rules for parameters `{name}` does not take: {', '.join(unknown)}")
    bounds = bounds or SizeBounds()
    texts = {f.name for s in schema.structs.values() for f in s.fields if _holds_text(f.type)} | {
        f.name for _, m in methods.values() for f in schema.flat_params(m) if _holds_text(f.type)
    }
    if unknown := sorted(set(bounds.text) - texts):
        raise RegistryError(f"length bounds for fields the schema does not declare as text: {', '.join(unknown)}")
    if errors is not None:
        _check_errors(errors, set(methods))

    builder = ModelBuilder(schema, field_rules, bounds)
    first_pass = ModelBuilder(schema, field_rules, bounds, first_pass=True)
    commands = {}
    for name, (iface, m) in methods.items():
        wire = f"{iface.service}.{name}"
        commands[wire] = Command(
            name=name, wire=wire, method=m, fields=schema.flat_params(m),
            params_model=builder.params_model(m, method_rules.get(name, {})),
            first_pass_model=first_pass.params_model(m, method_rules.get(name, {})),
            result_model=builder.result_model(m), handler=handlers[name], http=m.http,
        )
    return Registry(
        schema, commands, catalogue(schema), dict(field_rules or {}), dict(method_rules), dict(errors or {}), dict(rule_errors or {}),
        bounds,
    )


def _holds_text(t: TypeRef) -> bool:
    """Text, or a list or map of it: the types a length bound applies to."""
    return t.name == "Text" or (t.name in ("List", "Map") and _holds_text(t.args[-1]))


def _check_errors(errors: MethodErrors, methods: set[str]) -> None:
    """The errors table names exactly the schema's methods, as the handlers do: a method added
    to the schema without its errors would be documented as answering none."""
    if missing := sorted(methods - set(errors)):
        raise RegistryError(f"schema methods without an entry in the errors table: {', '.join(missing)}")
    if extra := sorted(set(errors) - methods):
        raise RegistryError(f"errors table entries for methods the schema does not declare: {', '.join(extra)}")
    for name, entries in errors.items():
        if unknown := sorted({kind for kind, _ in entries} - set(KINDS)):
            raise RegistryError(f"errors table entry `{name}` names unknown error kinds: {', '.join(unknown)}")


def check_enum_tables(schema: Schema, tables: Mapping[str, Iterable[str]], owner: str) -> None:
    """Tables keyed by a schema enum's values (a pricing model's maths, an aggregation's SQL,
    a hold status's filter) must cover exactly its values: a value added to the enum would
    otherwise pass validation and fail at request time. Checked at start-up, as handlers are."""
    for enum, keys in tables.items():
        if enum not in schema.enums:
            raise RegistryError(f"{owner} keys a table by enum {enum}, which the schema does not declare")
        want, have = set(schema.enums[enum].values), set(keys)
        if want != have:
            raise RegistryError(
                f"{owner}'s table of {enum} does not match the schema: missing {sorted(want - have) or 'nothing'},"
                f" unknown {sorted(have - want) or 'nothing'}"
            )


def load_registry(path: str | Path | None = None, limits: Limits | None = None) -> Registry:
    """The service's registry: billing.zap with the billing handlers, rules, length bounds and
    errors table; the free-form values' bounds are `limits`' (the defaults without)."""
    from .billing import ENUM_TABLES, ERRORS_BY_METHOD, ERRORS_BY_RULE, FIELD_RULES, HANDLERS, METHOD_RULES
    from .billing.validation import TEXT_BOUND, TEXT_BOUNDS
    from .limits import Limits

    limits = limits or Limits()
    schema = load(path or default_schema_path())
    check_enum_tables(schema, ENUM_TABLES, "billing/")
    bounds = SizeBounds(TEXT_BOUNDS, TEXT_BOUND, limits.data_bytes, limits.data_keys)
    return build_registry(schema, HANDLERS, FIELD_RULES, METHOD_RULES, ERRORS_BY_METHOD, ERRORS_BY_RULE, bounds)


# -- zap.discover --------------------------------------------------------------------------

def _field_info(f: Field) -> dict[str, Any]:
    info: dict[str, Any] = {"name": f.name, "type": str(f.type), "required": f.required}
    if f.optional:
        info["optional"] = True
    if f.default is not MISSING:
        info["default"] = f.default
    if f.doc:
        info["doc"] = f.doc
    if f.deprecated:
        info["deprecated"] = f.deprecated
    return info


def catalogue(schema: Schema) -> dict[str, Any]:
    methods: dict[str, Any] = {}
    for iface, m in schema.methods():
        flat = schema.flat_params(m)
        entry: dict[str, Any] = {
            "service": iface.name,
            "doc": m.doc,
            "params": [_field_info(f) for f in flat],
            "paramsType": m.params[0].type.name if flat is not m.params else None,
            "result": str(m.result.type) if m.result else None,
            "mutates": m.mutates,
            "http": {"method": m.http.verb, "path": m.http.path, "status": m.http.status} if m.http else None,
        }
        if m.deprecated:
            entry["deprecated"] = m.deprecated
        methods[f"{iface.service}.{m.name}"] = entry
    types: dict[str, Any] = {}
    for e in schema.enums.values():
        types[e.name] = {"kind": "enum", "doc": e.doc, "values": list(e.values)}
    for s in schema.structs.values():
        types[s.name] = {"kind": "struct", "doc": s.doc, "fields": [_field_info(f) for f in s.fields]}
    return {"methods": methods, "types": types}


__all__ = ["Command", "Registry", "RegistryError", "build_registry", "catalogue", "check_enum_tables", "load_registry"]
