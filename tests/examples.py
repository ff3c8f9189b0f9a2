"""Valid example params for every schema method, read from data next to the schema:
schemas/examples/<stem>.json for schemas/<stem>.zap (format: schemas/examples/README.md).
The loading is the package's (zapbilling/codegen/examples.py, which the API reference's
examples use too); this adds what only the tests need.

    load_examples(schema_file)  -> {wire name: Example} of the methods that file declares
    missing_examples(schema)    -> wire names of schema methods without an example
    prepare(api, example)       -> runs the example's setup, returns (params, refs)
    resolve(value, refs)        -> fills in {"$ref": name}, drops null (absent optional params)

The file is checked strictly on load: an unknown method, setup, step key or ref is an error
naming the file and the place, never a silently skipped example.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from zapbilling.codegen import examples as package
from zapbilling.codegen.examples import REF, Example, ExamplesError, Step, resolve
from zapbilling.schema import Schema, load

REPO = Path(__file__).resolve().parents[1]

__all__ = ["REF", "REPO", "Example", "ExamplesError", "Step", "examples_path", "load_examples",
           "missing_examples", "prepare", "resolve"]


def examples_path(schema_file: str | Path) -> Path:
    """examples/<stem>.json next to the .zap (through the package's schemas symlink). A copy of
    the repository's schema installed without its examples (a non-editable install packages only
    the .zap) uses the repository's examples, but only if the two .zap files are identical."""
    zap = Path(schema_file).resolve()
    beside = package.examples_path(zap)
    if not beside.is_file():
        repo_zap = REPO / "schemas" / zap.name
        in_repo = REPO / "schemas" / "examples" / beside.name
        if repo_zap.is_file() and in_repo.is_file() and repo_zap.read_bytes() == zap.read_bytes():
            return in_repo
    return beside


def load_examples(schema_file: str | Path, schema: Schema | None = None) -> dict[str, Example]:
    """The examples of the methods `schema_file` declares, by wire name (`billing.getBalance`).
    Setup calls and state reads may name any method of the schema, imports included."""
    return package.load_examples(schema_file, schema, path=examples_path(schema_file))


def missing_examples(schema: Schema | str | Path) -> list[str]:
    """Wire names of the schema's methods (every file of it) that have no example."""
    if not isinstance(schema, Schema):
        schema = load(schema)
    have: set[str] = set()
    for file in dict.fromkeys(i.file for i in schema.interfaces.values()):
        if examples_path(file).is_file():
            have |= set(load_examples(file, schema))
    return sorted(f"{i.service}.{m.name}" for i, m in schema.methods() if f"{i.service}.{m.name}" not in have)


async def prepare(api: Any, example: Example) -> tuple[dict[str, Any], dict[str, str]]:
    """Run the example's setup through `api` (every step must succeed); the method's params
    with refs filled in, and the refs."""
    refs: dict[str, str] = {}
    for step in example.setup:
        params = resolve(step.params, refs)
        r = await api.call(step.method, params)
        assert r.ok, (step.method, params, r)
        for name, result_field in step.save.items():
            try:
                refs[name] = package.saved(r.result, result_field)
            except (KeyError, IndexError, TypeError, ValueError):
                raise AssertionError(f"setup step {step.method}: no field {result_field!r} to save as {name!r} in {r.result!r}") from None
    return resolve(example.params, refs), refs
