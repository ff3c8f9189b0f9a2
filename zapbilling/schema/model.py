"""The parsed schema as plain Python objects: what the registry, the generators and
zap.discover read. Nothing here knows about pydantic or HTTP."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

SCALARS = frozenset({"Bool", "Int32", "Int64", "Float64", "Text", "Data"})
GENERICS = {"List": 1, "Map": 2}


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(frozen=True)
class TypeRef:
    name: str
    args: tuple["TypeRef", ...] = ()

    def __str__(self) -> str:
        if not self.args:
            return self.name
        return f"{self.name}({', '.join(map(str, self.args))})"


@dataclass
class Field:
    name: str
    type: TypeRef
    optional: bool = False
    default: Any = MISSING
    doc: str = ""
    deprecated: str | None = None
    line: int = 0

    @property
    def required(self) -> bool:
        return not self.optional and self.default is MISSING


@dataclass
class Enum:
    name: str
    values: list[str]
    doc: str = ""
    deprecated: str | None = None
    file: str = ""
    line: int = 0


@dataclass
class Struct:
    name: str
    fields: list[Field]
    doc: str = ""
    deprecated: str | None = None
    file: str = ""
    line: int = 0


@dataclass(frozen=True)
class Http:
    verb: str
    path: str
    status: int = 200

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)


@dataclass
class Method:
    name: str
    params: list[Field]
    result: Field | None
    http: Http | None = None
    readonly: bool = False
    doc: str = ""
    deprecated: str | None = None
    line: int = 0

    @property
    def mutates(self) -> bool:
        return not self.readonly


@dataclass
class Interface:
    name: str
    methods: list[Method]
    doc: str = ""
    deprecated: str | None = None
    file: str = ""
    line: int = 0

    @property
    def service(self) -> str:
        """Wire prefix: `BillingService` -> `billing`."""
        base = self.name[: -len("Service")] if self.name.endswith("Service") and self.name != "Service" else self.name
        return base.lower()


@dataclass
class Schema:
    enums: dict[str, Enum] = field(default_factory=dict)
    structs: dict[str, Struct] = field(default_factory=dict)
    interfaces: dict[str, Interface] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    order: dict[str, int] = field(default_factory=dict)
    """Declaration order of every named type and interface, imported files first."""

    def methods(self) -> list[tuple[Interface, Method]]:
        return [(i, m) for i in self.interfaces.values() for m in i.methods]

    def flat_params(self, method: Method) -> list[Field]:
        """The fields a caller sends: a method whose only parameter is a struct takes that
        struct's fields directly (as the callers of the Go billing package zapbilling's contract was
        first written against send them)."""
        if len(method.params) == 1 and method.params[0].type.name in self.structs:
            return self.structs[method.params[0].type.name].fields
        return method.params
