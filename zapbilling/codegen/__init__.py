"""Generators that turn the schema into artefacts other programs consume: the Python client
package (a pure function of the schema text) and the OpenAPI document (the schema plus the
parameter rules the server enforces)."""
from __future__ import annotations

import json
from pathlib import Path

from ..schema import load


def generated_files(target: str, schema_path: Path | None = None) -> dict[str, str]:
    """Relative path -> content for `target` ("client" or "openapi")."""
    from ..registry import default_schema_path, load_registry

    path = schema_path or default_schema_path()
    schema = load(path)
    text = "".join(Path(f).read_text() for f in schema.files)  # imports included, for the digest
    name = f"schemas/{path.name}"
    if target == "client":
        from .python_client import generate

        return generate(schema, name, text)
    from .openapi import openapi

    return {"openapi.json": json.dumps(openapi(load_registry(path)), indent=2) + "\n"}


def stale_files(files: dict[str, str], out: Path) -> list[str]:
    """Those of `files` that are missing under `out` or differ from a fresh generation."""
    return [rel for rel, text in files.items() if not (out / rel).is_file() or (out / rel).read_text() != text]


def write_files(files: dict[str, str], out: Path) -> None:
    """Write what changed (untouched files keep their times, so tools see no change)."""
    for rel in stale_files(files, out):
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(files[rel])


__all__ = ["generated_files", "stale_files", "write_files"]
