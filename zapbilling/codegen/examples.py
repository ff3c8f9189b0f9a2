"""The schema's examples, loaded: valid params for every schema method, read from data next to
the schema, schemas/examples/<stem>.json for schemas/<stem>.zap (format:
schemas/examples/README.md). The contract tests (tests/examples.py) and the API reference's
examples (docs_examples.py) both read them through this module.

    load_examples(schema_file)  -> {wire name: Example} of the methods that file declares
    resolve(value, refs)        -> fills in {"$ref": name}, drops null (absent optional params)

The file is checked strictly on load: an unknown method, setup, step key or ref is an error
naming the file and the place, never a silently skipped example.
"""
from __future__ import annotations

import json
from collections.abc import Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..schema import Schema, load

TOP_KEYS = {"setups", "methods"}
METHOD_KEYS = {"setup", "params", "state"}
CALL_KEYS = {"call", "params", "save"}
USE_KEYS = {"use"}
REF = "$ref"


class ExamplesError(ValueError):
    """The examples file is missing or malformed, or does not match the schema."""


@dataclass(frozen=True)
class Step:
    """One setup call: `method` (a plain method name, without the service prefix) with `params`
    (which may hold refs saved by earlier steps); `save` maps a ref name to a result field (or
    a path into the result, as `saved` reads it)."""
    method: str
    params: dict[str, Any]
    save: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Example:
    params: dict[str, Any]
    """Every parameter of the method; values may be {"$ref": name} for ids made by `setup`."""
    setup: tuple[Step, ...] = ()
    """Run with an admin key of the tenant before the call (`use` already expanded)."""
    state: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """Reads whose answers must agree between tenants after a mutating call."""
    setup_name: str | None = None


def saved(result: Any, path: str) -> Any:
    """What a setup step's `save` takes from its result: a field, or a path into it whose parts
    are fields and list indexes (`events.0.id`: the first event's id). KeyError, IndexError or
    TypeError when the result holds no such value."""
    value = result
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def examples_path(schema_file: str | Path) -> Path:
    """examples/<stem>.json next to the .zap (through the package's schemas symlink)."""
    zap = Path(schema_file).resolve()
    return zap.parent / "examples" / f"{zap.stem}.json"


def load_examples(schema_file: str | Path, schema: Schema | None = None, *, path: Path | None = None) -> dict[str, Example]:
    """The examples of the methods `schema_file` declares, by wire name (`billing.getBalance`),
    read from `path` (default: examples_path(schema_file)). Setup calls and state reads may
    name any method of the schema, imports included."""
    schema = schema or load(schema_file)
    path = path or examples_path(schema_file)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicates)
    except FileNotFoundError:
        raise ExamplesError(f"{path}: no examples file for {schema_file}") from None
    except json.JSONDecodeError as e:
        raise ExamplesError(f"{path}: not valid JSON: {e}") from None
    except ExamplesError as e:
        raise ExamplesError(f"{path}: {e}") from None
    return _Loader(path, schema, _declared_in(schema, schema_file)).run(data)


def resolve(value: Any, refs: dict[str, str]) -> Any:
    """Fill in {"$ref": name}, also inside lists and objects; drop null (an absent optional parameter)."""
    if _is_ref(value):
        name = value[REF]
        assert name in refs, f"ref {name!r} was not saved by the setup (saved: {', '.join(sorted(refs)) or 'none'})"
        return refs[name]
    if isinstance(value, dict):
        return {k: resolve(v, refs) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [resolve(v, refs) for v in value]
    return value


# -- loading ------------------------------------------------------------------------------------

def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ExamplesError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _declared_in(schema: Schema, schema_file: str | Path) -> dict[str, str]:
    """Method name -> wire name, of the interfaces declared in `schema_file` itself."""
    real = Path(schema_file).resolve()
    return {m.name: f"{i.service}.{m.name}" for i in schema.interfaces.values() if Path(i.file).resolve() == real for m in i.methods}


def _is_ref(value: Any) -> bool:
    return isinstance(value, dict) and REF in value


class _Loader:
    def __init__(self, path: Path, schema: Schema, declared: dict[str, str]):
        self.path, self.declared = path, declared
        self.callable = {m.name for _, m in schema.methods()}
        self.raw_setups: dict[str, Any] = {}
        self.setups: dict[str, tuple[tuple[Step, ...], frozenset[str]]] = {}

    def fail(self, where: str, message: str) -> ExamplesError:
        return ExamplesError(f"{self.path}: {where}: {message}")

    def run(self, data: Any) -> dict[str, Example]:
        if not isinstance(data, dict):
            raise self.fail("top level", "expected an object with \"setups\" and \"methods\"")
        self.keys("top level", data, TOP_KEYS, required={"methods"})
        self.raw_setups = data.get("setups", {})
        if not isinstance(self.raw_setups, dict):
            raise self.fail("setups", "expected an object of named step lists")
        for name in self.raw_setups:
            self.setup(name, ())
        methods = data["methods"]
        if not isinstance(methods, dict):
            raise self.fail("methods", "expected an object keyed by method name")
        if unknown := sorted(set(methods) - set(self.declared)):
            raise self.fail("methods", f"examples for methods the schema does not declare: {', '.join(unknown)}"
                            f" (keys are method names without the service prefix)")
        return {self.declared[name]: self.example(name, entry) for name, entry in methods.items()}

    def keys(self, where: str, obj: dict[str, Any], allowed: Set[str], required: Set[str] = frozenset()) -> None:
        if unknown := sorted(set(obj) - allowed):
            raise self.fail(where, f"unknown key(s) {', '.join(map(repr, unknown))}; expected {', '.join(sorted(allowed))}")
        if missing := sorted(required - set(obj)):
            raise self.fail(where, f"missing key(s) {', '.join(map(repr, missing))}")

    def setup(self, name: str, chain: tuple[str, ...], where: str = "setups") -> tuple[tuple[Step, ...], frozenset[str]]:
        """A named setup's steps with `use` expanded, and the refs it saves."""
        if name in self.setups:
            return self.setups[name]
        if name in chain:
            raise self.fail(where, f"setup {name!r} uses itself: {' -> '.join(chain[chain.index(name):] + (name,))}")
        if name not in self.raw_setups:
            raise self.fail(where, f"unknown setup {name!r}; known: {', '.join(self.raw_setups)}")
        raw = self.raw_setups[name]
        if not isinstance(raw, list):
            raise self.fail(f"setups.{name}", "expected a list of steps")
        steps: list[Step] = []
        saved: set[str] = set()
        for n, step in enumerate(raw):
            where = f"setups.{name}[{n}]"
            if not isinstance(step, dict):
                raise self.fail(where, "expected a step object: {\"call\": ...} or {\"use\": ...}")
            if "use" in step:
                self.keys(where, step, USE_KEYS)
                if not isinstance(step["use"], str):
                    raise self.fail(where, "\"use\" takes a setup name")
                used, used_refs = self.setup(step["use"], chain + (name,), where)
                steps += used
                saved |= used_refs
                continue
            self.keys(where, step, CALL_KEYS, required={"call"})
            method = self.method_name(where, step["call"])
            params = step.get("params", {})
            self.params(f"{where}.params", params, saved)
            save = step.get("save", {})
            if not isinstance(save, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in save.items()):
                raise self.fail(where, "\"save\" maps a ref name to a result field name, both strings")
            steps.append(Step(method, params, dict(save)))
            saved |= set(save)
        self.setups[name] = (tuple(steps), frozenset(saved))
        return self.setups[name]

    def method_name(self, where: str, name: Any) -> str:
        if not isinstance(name, str) or name not in self.callable:
            raise self.fail(where, f"unknown method {name!r} (a method name of the schema, without the service prefix)")
        return name

    def params(self, where: str, params: Any, refs: Set[str]) -> None:
        if not isinstance(params, dict):
            raise self.fail(where, "params must be an object")
        self.refs(where, params, refs)

    def refs(self, where: str, value: Any, refs: Set[str]) -> None:
        """Every {"$ref": name} names a ref saved before it is used."""
        if _is_ref(value):
            if set(value) != {REF} or not isinstance(value[REF], str):
                raise self.fail(where, f"a ref is {{\"$ref\": \"<name>\"}} and nothing else, not {value!r}")
            if value[REF] not in refs:
                raise self.fail(where, f"ref {value[REF]!r} is not saved by the setup before it (saved: {', '.join(sorted(refs)) or 'none'})")
        elif isinstance(value, dict):
            for k, v in value.items():
                self.refs(f"{where}.{k}", v, refs)
        elif isinstance(value, list):
            for n, v in enumerate(value):
                self.refs(f"{where}[{n}]", v, refs)

    def example(self, name: str, entry: Any) -> Example:
        where = f"methods.{name}"
        if not isinstance(entry, dict):
            raise self.fail(where, "expected an object with \"params\" and optionally \"setup\" and \"state\"")
        self.keys(where, entry, METHOD_KEYS, required={"params"})
        setup_name = entry.get("setup")
        steps: tuple[Step, ...] = ()
        refs: frozenset[str] = frozenset()
        if setup_name is not None:
            if not isinstance(setup_name, str):
                raise self.fail(f"{where}.setup", "expected a setup name")
            steps, refs = self.setup(setup_name, (), f"{where}.setup")
        self.params(f"{where}.params", entry["params"], refs)
        state = entry.get("state", [])
        if not isinstance(state, list):
            raise self.fail(f"{where}.state", "expected a list of [method, params] reads")
        reads: list[tuple[str, dict[str, Any]]] = []
        for n, read in enumerate(state):
            w = f"{where}.state[{n}]"
            if not (isinstance(read, list) and len(read) == 2):
                raise self.fail(w, "expected [method, params]")
            self.params(f"{w}[1]", read[1], refs)
            reads.append((self.method_name(w, read[0]), read[1]))
        return Example(entry["params"], steps, reads, setup_name)
