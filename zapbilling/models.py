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

import json
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal, Mapping, Optional

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field as PydanticField, ValidationError, create_model, with_config
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from typing_extensions import NotRequired, Required, TypedDict

from .errors import InvalidParams
from .schema import MISSING, Field, Method, Schema, TypeRef

Rule = Callable[[Any, str], Any]
"""A domain check for one field: gets the value and the field's name, returns the (possibly
normalised) value or raises `invalid(message)`. A rule may carry `json_schema`, the JSON Schema
keywords that state what it enforces (see billing/validation.py `documented`), which the
OpenAPI document adds to the field."""

INT_RANGES = {"Int32": (-(2**31), 2**31 - 1), "Int64": (-(2**63), 2**63 - 1)}
MAX_TEXT = 65_536
"""The length bound of a Text whose name `SizeBounds.text` does not name, when the registry is
built without bounds of its own (the service's are in billing/validation.py)."""
MAX_DEPTH = 32


@dataclass(frozen=True)
class SizeBounds:
    """How large a parameter may be, built into the params models once at start-up, so that a
    request pays nothing to look them up.

    A Text's length is checked by pydantic-core as it reads the value (`max_length`), before the
    field's rule, so no rule ever parses an over-long text, and at C speed: the same constraint
    as the flat 65,536 before it, so getBalance and recordUsage validate as fast as they did.
    A free-form value (Data, Map) is measured before pydantic walks into it, in one walk that
    stops as soon as it has seen more than `data_bytes` bytes' worth or `data_keys` keys, so that
    refusing one costs at most what the largest legal one does."""

    text: Mapping[str, int] = field(default_factory=dict)
    """Length bound by field name (in every method and struct; list items and map values too)."""
    text_default: int = MAX_TEXT
    """Every other Text."""
    data_bytes: int = 1 << 20
    """A Data or Map value's compact JSON encoding (UTF-8), in bytes."""
    data_keys: int = 1 << 16
    """The keys of every object in a Data or Map value, at every depth."""

    def text_bound(self, name: str) -> int:
        return self.text.get(name, self.text_default)

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
    "string_too_long": "{} is too long: at most {max_length}",
    "too_large": "{} is too large: at most {bound} bytes encoded",
    "too_many_keys": "{} has too many keys: at most {bound}",
    "string_pattern_mismatch": "{} must not contain the NUL character (U+0000)",  # NO_NUL, the only pattern
}
_TYPE_MESSAGES["nul"] = NUL_REFUSED = _TYPE_MESSAGES["string_pattern_mismatch"]
"""A text's NUL refused, as a pattern (Text) or found in a free-form value's walk; calls.py
words an idempotency key's with it too."""
"""Messages by pydantic error type; `{}` is the parameter's path (`events[0].userId`), the other
fields come from the error's context."""


NO_NUL = "^[^\x00]*$"
"""Every text a call carries, free-form values' keys and text included, is refused with a NUL
character in it: PostgreSQL can store none (in TEXT or JSONB), and the two backends must take
the same input. A Text's as a pattern, checked by pydantic-core with its length (timeit, getBalance's
two texts: +40-120 ns a call); a free-form value's in the walk that measures it."""


def _nul() -> PydanticCustomError:
    return PydanticCustomError("nul", "NUL character")


def invalid(message: str) -> PydanticCustomError:
    """The error a rule raises; its message reaches the caller as is."""
    return PydanticCustomError("zap", message)


def _missing(name: str) -> PydanticCustomError:
    return PydanticCustomError("missing", "{name} is required", {"name": name})


# -- generic input checks ------------------------------------------------------------------

# Every check is made for one field and knows its name: pydantic calls a validator without a
# ValidationInfo argument markedly faster (it builds that object per call), and these run on
# every request.

def _int_range(kind: str) -> FieldInfo:
    """The integer's range as pydantic-core's own bounds, checked in the same step as its type:
    a validator in Python cost a call per integer (a meter event has one, a batch a hundred).
    params_error words their failure."""
    lo, hi = INT_RANGES[kind]
    bounds: FieldInfo = PydanticField(ge=lo, le=hi)
    return bounds


def _measure(v: Any, depth: int, acc: list[int], bounds: SizeBounds) -> bool:
    """Adds to `acc` ([low, high, keys]) a lower and an upper bound of `v`'s compact JSON
    encoding in bytes and the keys of its objects; False when `v` is not a JSON value or is
    nested deeper than MAX_DEPTH. Raises the size errors as soon as `low` or `keys` passes its
    bound: every value adds at least one byte to `low`, so the walk visits at most `data_bytes`
    values whatever the input holds (a list of a million empty maps is refused on its length;
    a map holds at most `data_keys` entries, and is refused on its length too).
    Text inside a list or map is measured in place, not by a call: most free-form values are
    flat maps of text (a meter event's dimensions), and this walk runs for each of them."""
    if depth > MAX_DEPTH:
        return False
    if isinstance(v, dict):
        acc[2] += len(v)
        if acc[2] > bounds.data_keys:
            raise PydanticCustomError("too_many_keys", "too many keys", {"bound": bounds.data_keys})
        low = high = 2 * len(v) + 1  # braces, colons and commas
        for k, x in v.items():
            if type(k) is not str:
                return False
            if "\x00" in k:
                raise _nul()
            if type(x) is str:
                if "\x00" in x:
                    raise _nul()
                low += len(k) + len(x) + 4
                high += 6 * (len(k) + len(x)) + 4  # a character is at most 6 bytes: \u0000, or 4 of UTF-8
            else:
                low += len(k) + 2
                high += 6 * len(k) + 2
                if not _measure(x, depth + 1, acc, bounds):
                    return False
        acc[0] += low
        acc[1] += high
    elif isinstance(v, list):
        acc[0] += len(v) + 1  # brackets and commas, counted first: a long list is refused unread
        acc[1] += len(v) + 1
        if acc[0] > bounds.data_bytes:
            raise PydanticCustomError("too_large", "too large", {"bound": bounds.data_bytes})
        low = high = 0
        for x in v:
            if type(x) is str:
                if "\x00" in x:
                    raise _nul()
                low += len(x) + 2
                high += 6 * len(x) + 2
            elif not _measure(x, depth + 1, acc, bounds):
                return False
        acc[0] += low
        acc[1] += high
    elif isinstance(v, str):
        if "\x00" in v:
            raise _nul()
        acc[0] += len(v) + 2
        acc[1] += 6 * len(v) + 2
    elif isinstance(v, bool) or v is None:
        acc[0] += 4
        acc[1] += 5
    elif isinstance(v, int):
        acc[0] += 1
        acc[1] += v.bit_length() // 3 + 2  # digits <= bits * log10(2) + 1, and a sign
    elif isinstance(v, float):
        if not math.isfinite(v):
            return False
        acc[0] += 1
        acc[1] += 24  # the longest repr: -1.2345678901234567e-308
    else:
        return False
    if acc[0] > bounds.data_bytes:
        raise PydanticCustomError("too_large", "too large", {"bound": bounds.data_bytes})
    return True


def _encoded_size(v: Any) -> int:
    """The compact JSON encoding's size in UTF-8 (a lone surrogate, which a JSON body may
    carry, counted as its three bytes)."""
    return len(json.dumps(v, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))


def _free_form(name: str, bounds: SizeBounds, *, data: bool) -> BeforeValidator:
    """The size bounds of a Data (`data`: also that it is a JSON value) or Map value, checked
    before anything else looks inside it. Most values are far inside the bound and cost one
    walk; only a value whose upper bound passes it is encoded to be measured exactly (at most a
    few times `data_bytes`, since its lower bound did not)."""

    most_bytes, most_keys = bounds.data_bytes, bounds.data_keys

    def check(v: Any) -> Any:
        if v is None or (not data and not isinstance(v, dict)):
            return v  # null is absent; a Map that is not a map is a type error, reported by pydantic
        if type(v) is dict and len(v) <= most_keys:
            # The common case, a flat map of short text (dimensions, most metadata), without the
            # walk: 0.2 us for two keys instead of 1.3 us (timeit), paid by every meter event.
            chars = 0
            for k, x in v.items():
                if type(k) is not str or type(x) is not str:
                    break
                if "\x00" in k or "\x00" in x:
                    raise _nul()
                chars += len(k) + len(x)
            else:
                if 6 * (chars + len(v)) + 2 <= most_bytes:  # each character at most 6 bytes; quotes, colon, comma
                    return v
        acc = [0, 0, 0]
        if not _measure(v, 0, acc, bounds):
            if data:
                raise invalid(f"{name} must be a JSON value (objects with text keys, lists, text, numbers, booleans, null) nested at most {MAX_DEPTH} deep")
            return v  # a Map's keys or values of the wrong type: pydantic says which
        if acc[1] > bounds.data_bytes and _encoded_size(v) > bounds.data_bytes:
            raise PydanticCustomError("too_large", "too large", {"bound": bounds.data_bytes})
        return v

    return BeforeValidator(check)


# The first pass. Params are validated first against a first-pass model
# (ModelBuilder(first_pass=True)): the same model without the Python validators that read null
# as absent (`_null_means`, `_null_is_missing`). There the type refuses null (and "" where ""
# means absent, by a min_length of 1), and only a call that fails goes on to the full model,
# whose answer, value or error, is the call's. A call the first pass takes holds no null and no
# such "" in those fields, where the validators left out would have changed nothing: both
# models give it the same value (tests/test_first_pass.py). Valid calls, nearly all of them, so
# pay no Python call per such field (pydantic-core calls a Python validator at ~0.17 us:
# getBalance had two, each meter event of a batch three); a refused one is validated twice.
# Data fields keep theirs: null is a value there.


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

    def __init__(self, schema: Schema, field_rules: Mapping[str, Rule] | None = None, bounds: SizeBounds | None = None,
                 *, first_pass: bool = False):
        """`first_pass`: build the models a call's params are tried against first (the first
        pass, above `_null_means`), without the Python validators that turn null (and, for some
        texts, "") into a default or a missing parameter."""
        self.schema = schema
        self.field_rules = dict(field_rules or {})
        self.bounds = bounds or SizeBounds()
        self.first_pass = first_pass
        self._inputs: dict[str, Any] = {}
        self._outputs: dict[str, type[BaseModel]] = {}

    def annotation(self, t: TypeRef, *, output: bool, name: str = "value") -> Any:
        """`name`: the field this type belongs to (a list's items too), for error messages."""
        n = t.name
        if n == "Bool":
            return bool
        if n in INT_RANGES:
            return int if output else Annotated[int, _int_range(n)]
        if n == "Float64":
            return float
        if n == "Text":
            return str if output else Annotated[str, PydanticField(max_length=self.bounds.text_bound(name), pattern=NO_NUL)]
        if n == "Data":
            return Any if output else Annotated[Any, _free_form(name, self.bounds, data=True)]
        if n == "List":
            return list[self.annotation(t.args[0], output=output, name=name)]  # type: ignore[misc]
        if n == "Map":
            values = dict[str, self.annotation(t.args[1], output=output, name=name)]  # type: ignore[misc,valid-type]
            return values if output else Annotated[values, _free_form(name, self.bounds, data=False)]
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
        text = f.type.name == "Text"
        nonempty_text = Annotated[str, PydanticField(min_length=1, max_length=self.bounds.text_bound(f.name), pattern=NO_NUL)]
        # A first-pass model leaves null (and "" where it means absent) to the type, which
        # refuses it: the call then goes the long way (the first pass, above `_null_means`).
        # Data takes null as a value.
        nulls_refused = self.first_pass and f.type.name != "Data"
        if f.optional:
            if text and nulls_refused:
                return _annotated(Optional[nonempty_text], validators), None
            absent = [_null_means(None, empty_text_too=True)] if text else []
            return _annotated(Optional[ann], absent + validators), None
        if f.default is MISSING:
            if text:  # empty is missing: bounded with the length, before any validator wraps it
                ann = nonempty_text
            return _annotated(ann, ([] if nulls_refused else [_null_is_missing(f.name)]) + validators), ...
        default = f.default
        factory: Callable[[], Any] | None = (list if default == [] else dict) if isinstance(default, (list, dict)) else None
        empty_too = text and default != ""
        if nulls_refused:
            before = []
            if empty_too:
                ann = nonempty_text
        else:
            before = [_null_means(factory or default, empty_text_too=empty_too)]
        # A rule also judges the default (an absent `events` is `at least one event is required`).
        judge = bool(validators)
        spec = PydanticField(default_factory=factory, validate_default=judge) if factory else PydanticField(default, validate_default=judge)  # type: ignore[call-overload]  # pydantic's overloads reject a factory typed loosely
        return _annotated(ann, before + validators), spec

    def input_model(self, name: str) -> Any:
        """A struct inside params (an event of a batch, a price tier): a TypedDict, so that each
        validates into a plain dict with every declared key (an absent one holds its default),
        read by key. A model instance each cost more than validating its fields: a batch of 100
        meter events validated in 160 us as models and in ~80 us as TypedDicts (timeit); the
        params themselves stay a model, one per request."""
        if name not in self._inputs:
            s = self.schema.structs[name]
            keys: dict[str, Any] = {}
            for f in s.fields:
                ann, spec = self._field(f, output=False, rules={})
                if spec is ...:
                    keys[f.name] = Required[ann]
                else:
                    keys[f.name] = NotRequired[Annotated[ann, spec if isinstance(spec, FieldInfo) else PydanticField(default=spec)]]
            typed: Any = TypedDict(name, keys)  # type: ignore[misc]  # its name and keys come from the schema
            typed.__doc__ = s.doc or None
            self._inputs[name] = with_config(_INPUT)(typed)
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

_STEPS = ("function-", "literal[", "list[", "dict[", "nullable[")
"""How pydantic names a validator's own step in an error's location (not the input's)."""


def _param_name(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not isinstance(part, str) or part.startswith(_STEPS):
            continue
        else:
            out += ("." if out else "") + part
    return out


_MISSING = ("missing", "string_too_short")
"""Absent, or a required Text sent empty: its min_length of 1 (ModelBuilder._field), a bound
pydantic-core checks with the type, where a validator in Python cost a call per text (two per
meter event)."""
_OUT_OF_RANGE = ("greater_than_equal", "less_than_equal")
"""An integer past its type's range (_int_range): the only bounds the models set on numbers."""


def _field_name(loc: tuple[Any, ...]) -> str:
    """The name of the field a failure belongs to, without its path (`value`, not
    `events[0].value`): the range errors name the field alone. (The schema declares no integer
    inside a Map, where the last name would be the map's key.)"""
    names = [part for part in loc if isinstance(part, str) and not part.startswith(_STEPS)]
    return names[-1] if names else "value"


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
    if kind in _OUT_OF_RANGE:
        bound = err["ctx"].get("ge", err["ctx"].get("le"))
        bits = 64 if bound in INT_RANGES["Int64"] else 32
        message = f"{_field_name(tuple(err['loc']))} is out of range (signed {bits}-bit integer)"
    elif kind in _MISSING:
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
        message = _TYPE_MESSAGES[kind].format(name, **err.get("ctx", {}))
    else:
        message = f"{name}: {err['msg']}"
    return InvalidParams(message, param=name)
