"""Pydantic v2 models derived from the parsed schema, built once at start-up.

Input models (params) are strict: a string or a float where an integer is declared is invalid,
never coerced. An empty string or null for a required field counts as missing, and null or an
empty string for a field with a default means the default (as the reference's Go callers send
zero values). Fields are validated in schema order and the first failure is the one reported,
so the schema's field order is the contract's validation order. A name the method does not
declare (at any depth but inside Data and Map values) is refused as `unknown parameter: <path>`,
ahead of every other failure.

Output models (results) are used by the contract tests and generators to check that handlers
return exactly what the schema declares; the hot path does not build them.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Callable, Literal, Mapping, Optional

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field as PydanticField, ValidationError, create_model
from pydantic_core import PydanticCustomError

from .errors import InvalidParams
from .schema import MISSING, Field, Method, Schema, TypeRef

Rule = Callable[[Any, str], Any]
"""A domain check for one field: gets the value and the field's name, returns the (possibly
normalised) value or raises `invalid(message)`. A rule may carry `json_schema`, the JSON Schema
keywords that state what it enforces (see billing/validation.py `documented`), which the
OpenAPI document adds to the field."""

INT_RANGES = {"Int32": (-(2**31), 2**31 - 1), "Int64": (-(2**63), 2**63 - 1)}
MAX_TEXT = 65_536
MAX_DEPTH = 32

# extra="forbid": an undeclared name is refused (contract, "Strict input"), in every struct
# (nested ones too, so `events[0].valeu` is caught) but not inside Data or Map values, which are
# not models. pydantic-core then tracks the keys it used and walks the input's keys once more:
# under callgrind, model_validate of getBalance's params (2 keys) went 13.4k -> 14.6k
# instructions and recordUsage's (5 keys) 25.8k -> 28.0k, i.e. +0.4% of a whole request of
# either (~325k and ~560k); python -m bench.instructions cannot tell the two apart (getBalance
# medians of 5 runs 325.4k before, 326.2k after, runs spread over 322k-327k). A check in Python
# (`frozenset.issuperset(raw)`) costs about as much (1.1k / 1.6k) and would leave nested structs
# to pydantic anyway.
_INPUT = ConfigDict(strict=True, extra="forbid")
_OUTPUT = ConfigDict(strict=True, extra="forbid")

_TYPE_MESSAGES = {
    "int_type": "{} must be an integer",
    "string_type": "{} must be a string",
    "bool_type": "{} must be a boolean",
    "float_type": "{} must be a number",
    "list_type": "{} must be a list",
    "dict_type": "{} must be an object",
    "model_type": "{} must be an object",
    "model_attributes_type": "{} must be an object",
    "string_too_long": "{} is too long (at most %d characters)" % MAX_TEXT,
}


def invalid(message: str) -> PydanticCustomError:
    """The error a rule raises; its message reaches the caller as is."""
    return PydanticCustomError("zap", message)


def _missing(name: str) -> PydanticCustomError:
    return PydanticCustomError("missing", "{name} is required", {"name": name})


# -- generic input checks ------------------------------------------------------------------

# Every check is made for one field and knows its name: pydantic calls a validator without a
# ValidationInfo argument markedly faster (it builds that object per call), and these run on
# every request.

def _int_range(kind: str, name: str) -> AfterValidator:
    lo, hi = INT_RANGES[kind]
    bits = 32 if kind == "Int32" else 64

    def check(v: int) -> int:
        if not lo <= v <= hi:
            raise invalid(f"{name} is out of range (signed {bits}-bit integer)")
        return v

    return AfterValidator(check)


def _json_value(v: Any, depth: int = 0) -> bool:
    if depth > MAX_DEPTH:
        return False
    if v is None or isinstance(v, (bool, int, str)):
        return True
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, list):
        return all(_json_value(x, depth + 1) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _json_value(x, depth + 1) for k, x in v.items())
    return False


def _check_data(name: str) -> AfterValidator:
    def check(v: Any) -> Any:
        if not _json_value(v):
            raise invalid(f"{name} must be a JSON value (objects with text keys, lists, text, numbers, booleans, null) nested at most {MAX_DEPTH} deep")
        return v

    return AfterValidator(check)


def _non_empty(name: str) -> AfterValidator:
    def check(v: Any) -> Any:
        if v == "":
            raise _missing(name)
        return v

    return AfterValidator(check)


def _null_means(default: Any, *, empty_text_too: bool) -> BeforeValidator:
    def absent_to_default(v: Any) -> Any:
        if v is None or (empty_text_too and v == ""):
            return default() if callable(default) else default
        return v

    return BeforeValidator(absent_to_default)


def _null_is_missing(name: str) -> BeforeValidator:
    def check(v: Any) -> Any:
        if v is None:
            raise _missing(name)
        return v

    return BeforeValidator(check)


def _rule(rule: Rule, name: str) -> AfterValidator:
    def check(v: Any) -> Any:
        return v if v is None else rule(v, name)

    return AfterValidator(check)


def _annotated(ann: Any, metadata: list[Any]) -> Any:
    return Annotated[(ann, *metadata)] if metadata else ann


# -- schema types -> annotations -----------------------------------------------------------

class ModelBuilder:
    """Turns schema structs and method parameter lists into pydantic models."""

    def __init__(self, schema: Schema, field_rules: Mapping[str, Rule] | None = None):
        self.schema = schema
        self.field_rules = dict(field_rules or {})
        self._inputs: dict[str, type[BaseModel]] = {}
        self._outputs: dict[str, type[BaseModel]] = {}

    def annotation(self, t: TypeRef, *, output: bool, name: str = "value") -> Any:
        """`name`: the field this type belongs to (a list's items too), for error messages."""
        n = t.name
        if n == "Bool":
            return bool
        if n in INT_RANGES:
            return int if output else Annotated[int, _int_range(n, name)]
        if n == "Float64":
            return float
        if n == "Text":
            return str if output else Annotated[str, PydanticField(max_length=MAX_TEXT)]
        if n == "Data":
            return Any if output else Annotated[Any, _check_data(name)]
        if n == "List":
            return list[self.annotation(t.args[0], output=output, name=name)]  # type: ignore[misc]
        if n == "Map":
            return dict[str, self.annotation(t.args[1], output=output, name=name)]  # type: ignore[misc]
        if n in self.schema.enums:
            return Literal[tuple(self.schema.enums[n].values)]
        return self.output_model(n) if output else self.input_model(n)

    def _field(self, f: Field, *, output: bool, rules: Mapping[str, Rule]) -> tuple[Any, Any]:
        ann = self.annotation(f.type, output=output, name=f.name)
        if output:
            if f.optional:
                return Optional[ann], None
            return ann, (... if f.default is MISSING else f.default)
        validators: list[Any] = []
        rule = rules.get(f.name) or self.field_rules.get(f.name)
        if rule is not None:
            validators.append(_rule(rule, f.name))
        if f.optional:
            absent = [_null_means(None, empty_text_too=True)] if f.type.name == "Text" else []
            return _annotated(Optional[ann], absent + validators), None
        if f.default is MISSING:
            checks = [_null_is_missing(f.name)] + ([_non_empty(f.name)] if f.type.name == "Text" else [])
            return _annotated(ann, checks + validators), ...
        default = f.default
        factory: Callable[[], Any] | None = (list if default == [] else dict) if isinstance(default, (list, dict)) else None
        before = _null_means(factory or default, empty_text_too=f.type.name == "Text" and default != "")
        # A rule also judges the default (an absent `events` is `at least one event is required`).
        judge = bool(validators)
        spec = PydanticField(default_factory=factory, validate_default=judge) if factory else PydanticField(default, validate_default=judge)  # type: ignore[call-overload]  # pydantic's overloads reject a factory typed loosely
        return _annotated(ann, [before] + validators), spec

    def input_model(self, name: str) -> type[BaseModel]:
        if name not in self._inputs:
            s = self.schema.structs[name]
            fields = {f.name: self._field(f, output=False, rules={}) for f in s.fields}
            self._inputs[name] = create_model(name, __config__=_INPUT, __doc__=s.doc or None, **fields)  # type: ignore[call-overload]
        return self._inputs[name]

    def output_model(self, name: str) -> type[BaseModel]:
        if name not in self._outputs:
            s = self.schema.structs[name]
            fields = {f.name: self._field(f, output=True, rules={}) for f in s.fields}
            self._outputs[name] = create_model(name + "Out", __config__=_OUTPUT, __doc__=s.doc or None, **fields)  # type: ignore[call-overload]
        return self._outputs[name]

    def params_model(self, method: Method, rules: Mapping[str, Rule]) -> type[BaseModel]:
        """One model per method, so that method-specific rules (`amount must be positive`
        for deposit but not for recordUsage) never leak into a shared struct."""
        fields = {f.name: self._field(f, output=False, rules=rules) for f in self.schema.flat_params(method)}
        title = method.name[0].upper() + method.name[1:] + "Params"
        model: type[BaseModel] = create_model(title, __config__=_INPUT, __doc__=method.doc or None, **fields)  # type: ignore[call-overload]
        return model

    def result_model(self, method: Method) -> type[BaseModel] | None:
        if method.result is None:
            return None
        ann, _ = self._field(method.result, output=True, rules={})
        return create_model(method.name[0].upper() + method.name[1:] + "Result", __config__=_OUTPUT, value=(ann, ...))


# -- errors --------------------------------------------------------------------------------

def _param_name(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not isinstance(part, str) or part.startswith(("function-", "literal[", "list[", "dict[", "nullable[")):
            continue
        else:
            out += ("." if out else "") + part
    return out


_UNKNOWN = ("extra_forbidden", "invalid_key")
"""An undeclared name; `invalid_key` is a key that is not text at all (msgpack allows any)."""


def _sent_at(raw: Any, loc: tuple[Any, ...]) -> tuple[int, ...]:
    """Where the caller put `loc` in `raw`: the position of each key or item on the way down,
    so that sorting by it is the order of the request as sent (depth first)."""
    at: list[int] = []
    node = raw
    for part in loc:
        if isinstance(node, dict):
            keys = list(node)
            i = next((n for n, k in enumerate(keys) if k == part or repr(k) == part), len(keys))
            at.append(i)
            node = node[keys[i]] if i < len(keys) else None
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            at.append(part)
            node = node[part]
        # anything else is a validator's step in the loc (`function-after[...]`), not the input's
    return tuple(at)


def _unknown(errors: list[Any], raw: Any) -> InvalidParams | None:
    """`unknown parameter: <path>` for the first undeclared name in the order the caller sent
    them. pydantic lists a struct's undeclared names after the failures of its declared fields
    and nested structs' before their parent's, so the order is taken from the input itself."""
    unknown = [e for e in errors if e["type"] in _UNKNOWN]
    if not unknown:
        return None
    loc = tuple(min(unknown, key=lambda e: _sent_at(raw, tuple(e["loc"])))["loc"])
    parent = _param_name(loc[:-1])
    name = f"{parent}.{loc[-1]}" if parent else str(loc[-1])
    return InvalidParams(f"unknown parameter: {name}", param=name)


def params_error(exc: ValidationError, *, query: bool = False, raw: Any = None) -> InvalidParams:
    """The contract's answer to failed params: an undeclared name first (a misspelt name is the
    likeliest cause of a missing one), else the first failure in field order. `raw` is what
    the caller sent, for the order among several undeclared names."""
    errors = exc.errors(include_url=False)
    unknown = _unknown(errors, raw)
    if unknown is not None:
        return unknown
    err = errors[0]
    name = _param_name(tuple(err["loc"])) or "params"
    kind = err["type"]
    if kind == "missing":
        message = f"{name} query parameter is required" if query else f"{name} is required"
        items = [i for i, part in enumerate(err["loc"]) if isinstance(part, int)]
        if items and isinstance(err["loc"][-1], str):  # a field of a list item: `meterId is required for each event`
            parent = str(err["loc"][items[-1] - 1])
            message = f"{err['loc'][-1]} is required for each {parent[:-1] if parent.endswith('s') else parent}"
    elif kind == "zap":
        message = err["msg"]
    elif kind == "literal_error":
        allowed = err.get("ctx", {}).get("expected", "")
        message = f"{name} must be one of {allowed}"
    elif kind in _TYPE_MESSAGES:
        message = _TYPE_MESSAGES[kind].format(name)
    else:
        message = f"{name}: {err['msg']}"
    return InvalidParams(message, param=name)
