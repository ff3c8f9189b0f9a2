"""A strict parser for the ZAP schema language (described in docs/zap-schema.md).

Strict on purpose: the schema of the Go billing package zapbilling's contract was first written
against drifted from its dispatcher, because its parser skipped what it did not understand.
Every line here is either understood or an error that names the file, the line and what was
expected.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from .model import GENERICS, MISSING, SCALARS, Enum, Field, Http, Interface, Method, Schema, Struct, TypeRef

TYPE_NAME = re.compile(r"[A-Z][A-Za-z0-9]*\Z")
MEMBER_NAME = re.compile(r"[a-z][A-Za-z0-9]*\Z")
ENUM_VALUE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
HTTP_VERBS = ("GET", "POST", "PUT", "PATCH", "DELETE")
INDENT = 2


class SchemaError(ValueError):
    def __init__(self, file: str, line: int, message: str):
        self.file, self.line, self.message = file, line, message
        super().__init__(f"{file}:{line}: {message}")


def load(path: str | Path) -> Schema:
    """Parse a schema file and every file it imports, then check that it hangs together."""
    schema = Schema()
    _load_file(Path(path), schema, seen=set())
    _check(schema)
    return schema


def parse_text(text: str, file: str = "<schema>") -> Schema:
    """Parse schema text (imports resolve relative to the current directory)."""
    schema = Schema()
    _parse(text, file, Path("."), schema, seen=set())
    _check(schema)
    return schema


def _load_file(path: Path, schema: Schema, seen: set[Path]) -> None:
    real = path.resolve()
    if real in seen:
        return
    seen.add(real)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SchemaError(str(path), 0, f"cannot read schema file: {e.strerror}") from None
    except UnicodeDecodeError:
        raise SchemaError(str(path), 0, "schema files must be UTF-8") from None
    _parse(text, str(path), path.parent, schema, seen)


def _outside_strings(text: str) -> Iterator[tuple[int, str]]:
    """(index, character) of each character of `text` outside its string literals ("...", with
    backslash escapes); the quotes themselves are not outside."""
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        else:
            yield i, ch


def _split_comment(raw: str) -> tuple[str, str | None]:
    """Code and comment of a line; a `#` inside a string literal is not a comment."""
    for i, ch in _outside_strings(raw):
        if ch == "#":
            return raw[:i].rstrip(), raw[i + 1 :].strip()
    return raw.rstrip(), None


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside parentheses and string literals."""
    parts, depth, start = [], 0, 0
    for i, ch in _outside_strings(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


class _Parser:
    def __init__(self, file: str, base: Path, schema: Schema, seen: set[Path]):
        self.file, self.base, self.schema, self.seen = file, base, schema, seen
        self.decl: Enum | Struct | Interface | None = None
        self.member: Field | Method | str | None = None
        self.docs: list[str] = []
        self.declared_any = False

    def error(self, line: int, message: str) -> SchemaError:
        return SchemaError(self.file, line, message)

    def run(self, text: str) -> None:
        for number, raw in enumerate(text.splitlines(), start=1):
            self.line(number, raw)

    def line(self, n: int, raw: str) -> None:
        stripped = raw.lstrip(" ")
        indent = len(raw) - len(stripped)
        if stripped.startswith("\t") or "\t" in raw[: indent + 1]:
            raise self.error(n, "tab in indentation: indent with 2 spaces per level")
        code, comment = _split_comment(stripped)
        if not code:
            if comment is None:
                self.docs = []  # a blank line ends a doc comment block
            else:
                self.docs.append(comment)
            return
        if indent % INDENT:
            raise self.error(n, f"indentation of {indent} spaces: expected a multiple of {INDENT}")
        doc = "\n".join(self.docs + ([comment] if comment else []))
        self.docs = []
        level = indent // INDENT
        if level == 0:
            self.top(n, code, doc)
        elif code.startswith("@"):
            self.annotation(n, level, code)
        elif level == 1:
            self.member_line(n, code, doc)
        else:
            raise self.error(n, f"unexpected indentation (level {level}): expected an annotation starting with @")

    # -- top level -------------------------------------------------------------------------
    def top(self, n: int, code: str, doc: str) -> None:
        m = re.fullmatch(r'using\s+import\s+"([^"]+)"', code)
        if m:
            if self.declared_any:
                raise self.error(n, "`using import` must come before any declaration")
            target = self.base / m.group(1)
            if not target.exists():
                raise self.error(n, f'imported file "{m.group(1)}" not found')
            _load_file(target, self.schema, self.seen)
            return
        m = re.fullmatch(r"(enum|struct|interface)\s+(\S+)", code)
        if not m:
            raise self.error(n, "expected `enum Name`, `struct Name`, `interface Name` or `using import \"file.zap\"`")
        kind, name = m.groups()
        if not TYPE_NAME.match(name):
            raise self.error(n, f"{kind} name `{name}`: expected PascalCase")
        if name in self.schema.enums or name in self.schema.structs or name in self.schema.interfaces or name in SCALARS or name in GENERICS:
            raise self.error(n, f"duplicate name `{name}`")
        self.declared_any = True
        self.member = None
        self.schema.order[name] = len(self.schema.order)
        if kind == "enum":
            self.decl = self.schema.enums[name] = Enum(name, [], doc, file=self.file, line=n)
        elif kind == "struct":
            self.decl = self.schema.structs[name] = Struct(name, [], doc, file=self.file, line=n)
        else:
            self.decl = self.schema.interfaces[name] = Interface(name, [], doc, file=self.file, line=n)

    # -- members ---------------------------------------------------------------------------
    def member_line(self, n: int, code: str, doc: str) -> None:
        decl = self.decl
        if decl is None:
            raise self.error(n, "indented line outside a declaration: expected `enum`, `struct` or `interface` first")
        if isinstance(decl, Enum):
            if not ENUM_VALUE.match(code):
                raise self.error(n, f"enum value `{code}`: expected a single word (letters, digits, -, _ or .)")
            if code in decl.values:
                raise self.error(n, f"duplicate enum value `{code}` in {decl.name}")
            decl.values.append(code)
            self.member = code
        elif isinstance(decl, Struct):
            f = self.field(n, code, doc)
            if any(x.name == f.name for x in decl.fields):
                raise self.error(n, f"duplicate field `{f.name}` in {decl.name}")
            decl.fields.append(f)
            self.member = f
        else:
            m = self.method(n, code, doc)
            if any(x.name == m.name for x in decl.methods):
                raise self.error(n, f"duplicate method `{m.name}` in {decl.name}")
            decl.methods.append(m)
            self.member = m

    def field(self, n: int, code: str, doc: str = "") -> Field:
        m = re.fullmatch(r"(\S+)\s+([^=?]+?)(\?)?\s*(?:=\s*(.+))?", code)
        if not m:
            raise self.error(n, f"`{code}`: expected `name Type`, `name Type?` or `name Type = default`")
        name, type_text, optional, default_text = m.groups()
        if not MEMBER_NAME.match(name):
            raise self.error(n, f"field name `{name}`: expected camelCase")
        type_ref = self.type_ref(n, type_text.strip())
        if optional and default_text is not None:
            raise self.error(n, f"field `{name}`: a field is optional (?) or has a default, not both")
        default = MISSING
        if default_text is not None:
            try:
                default = json.loads(default_text)
            except ValueError:
                raise self.error(n, f"default `{default_text}`: expected a literal such as \"usd\", 0, true or []") from None
        return Field(name, type_ref, bool(optional), default, doc, line=n)

    def type_ref(self, n: int, text: str) -> TypeRef:
        m = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*)\s*(?:\((.*)\))?", text)
        if not m:
            raise self.error(n, f"type `{text}`: expected a type name, List(T) or Map(Text, T)")
        name, inner = m.groups()
        args = tuple(self.type_ref(n, a) for a in _split_top(inner)) if inner is not None else ()
        want = GENERICS.get(name, 0)
        if len(args) != want:
            if want:
                raise self.error(n, f"`{name}` takes {want} type argument{'s' if want > 1 else ''}: `{text}`")
            raise self.error(n, f"type `{name}` takes no arguments: `{text}`")
        return TypeRef(name, args)

    def method(self, n: int, code: str, doc: str) -> Method:
        arrow = code.find("->")
        if arrow < 0:
            raise self.error(n, f"method `{code}`: expected `name (params) -> (result)`")
        left, right = code[:arrow].strip(), code[arrow + 2 :].strip()
        m = re.fullmatch(r"(\S+?)\s*\((.*)\)", left)
        r = re.fullmatch(r"\((.*)\)", right)
        if not m or not r:
            raise self.error(n, f"method `{code}`: expected `name (params) -> (result)`")
        name = m.group(1)
        if not MEMBER_NAME.match(name):
            raise self.error(n, f"method name `{name}`: expected camelCase")
        params = [self.field(n, p) for p in _split_top(m.group(2))] if m.group(2).strip() else []
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise self.error(n, f"method `{name}`: duplicate parameter name")
        results = [self.field(n, p) for p in _split_top(r.group(1))] if r.group(1).strip() else []
        if len(results) > 1:
            raise self.error(n, f"method `{name}`: expected at most one result value")
        return Method(name, params, results[0] if results else None, doc=doc, line=n)

    # -- annotations -----------------------------------------------------------------------
    def annotation(self, n: int, level: int, code: str) -> None:
        target: Any = self.decl if level == 1 else self.member
        if target is None or level > 2:
            raise self.error(n, "annotation without a declaration to belong to (indent it one level deeper than its declaration)")
        word, _, rest = code.partition(" ")
        rest = rest.strip()
        if word == "@deprecated":
            if isinstance(target, str):
                return  # enum values carry no metadata; the annotation is accepted and documented only
            target.deprecated = rest or "deprecated"
            return
        if not isinstance(target, Method):
            raise self.error(n, f"`{word}` applies only to interface methods")
        if word == "@readonly":
            if rest:
                raise self.error(n, "`@readonly` takes no arguments")
            target.readonly = True
        elif word == "@http":
            parts = rest.split()
            if len(parts) not in (2, 3) or parts[0] not in HTTP_VERBS or not parts[1].startswith("/"):
                raise self.error(n, "expected `@http METHOD /path [STATUS]` with METHOD one of " + ", ".join(HTTP_VERBS))
            status = 200
            if len(parts) == 3:
                if not parts[2].isdigit() or not 200 <= int(parts[2]) <= 299:
                    raise self.error(n, f"`@http` status `{parts[2]}`: expected a 2xx status code")
                status = int(parts[2])
            if target.http is not None:
                raise self.error(n, f"method `{target.name}` has two `@http` routes")
            target.http = Http(parts[0], parts[1], status)
            if parts[0] == "GET":
                target.readonly = True
        else:
            raise self.error(n, f"unknown annotation `{word}`: expected @http, @readonly or @deprecated")


def _parse(text: str, file: str, base: Path, schema: Schema, seen: set[Path]) -> None:
    schema.files.append(file)
    _Parser(file, base, schema, seen).run(text)


# -- whole-schema checks -------------------------------------------------------------------

_LITERAL_CHECKS: dict[str, Callable[[Any], bool]] = {
    "Bool": lambda v: isinstance(v, bool),
    "Int32": lambda v: isinstance(v, int) and not isinstance(v, bool) and -(2**31) <= v < 2**31,
    "Int64": lambda v: isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63,
    "Float64": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "Text": lambda v: isinstance(v, str),
    "Data": lambda v: True,
}


def _check_type(schema: Schema, t: TypeRef, file: str, line: int, user: str) -> None:
    """`user` is the declaration whose line names the type: the type must be declared before
    it (in this file or an imported one), so that every file reads top to bottom."""
    if t.name in GENERICS:
        if t.name == "Map" and t.args[0].name != "Text":
            raise SchemaError(file, line, f"`{t}`: Map keys must be Text")
        for a in t.args:
            _check_type(schema, a, file, line, user)
    elif t.name not in SCALARS and t.name not in schema.enums and t.name not in schema.structs:
        raise SchemaError(file, line, f"unknown type `{t.name}`: expected a built-in type or a declared enum or struct")
    elif t.name not in SCALARS and schema.order[t.name] >= schema.order[user]:
        raise SchemaError(file, line, f"`{t.name}` is used before it is declared: declare it above `{user}` or in an imported file")


def _check_default(schema: Schema, f: Field, file: str) -> None:
    if f.default is MISSING:
        return
    t, v = f.type, f.default
    if t.name in _LITERAL_CHECKS:
        ok = _LITERAL_CHECKS[t.name](v)
    elif t.name in schema.enums:
        ok = v in schema.enums[t.name].values
    elif t.name == "List":
        ok = v == []
    elif t.name == "Map":
        ok = v == {}
    else:
        ok = False
    if not ok:
        raise SchemaError(file, f.line, f"default {json.dumps(v)} of `{f.name}` is not a literal of type `{t}`")


def _check(schema: Schema) -> None:
    for s in schema.structs.values():
        for f in s.fields:
            _check_type(schema, f.type, s.file, f.line, s.name)
            _check_default(schema, f, s.file)
    routes: dict[tuple[str, str], str] = {}
    wire: set[str] = set()
    for iface in schema.interfaces.values():
        for m in iface.methods:
            for f in m.params + ([m.result] if m.result else []):
                _check_type(schema, f.type, iface.file, f.line, iface.name)
                _check_default(schema, f, iface.file)
            name = f"{iface.service}.{m.name}"
            if name in wire:
                raise SchemaError(iface.file, m.line, f"duplicate wire name `{name}`")
            wire.add(name)
            if m.http is None:
                continue
            key = (m.http.verb, re.sub(r"\{\w+\}", "{}", m.http.path))
            if key in routes:
                raise SchemaError(iface.file, m.line, f"route {m.http.verb} {m.http.path} is already used by `{routes[key]}`")
            routes[key] = m.name
            flat = {f.name: f for f in schema.flat_params(m)}
            for p in m.http.path_params:
                if p not in flat:
                    raise SchemaError(iface.file, m.line, f"path parameter `{{{p}}}` of `{m.name}` is not one of its parameters")
            if m.http.verb in ("GET", "DELETE"):
                for f in flat.values():
                    if not _query_type(schema, f.type):
                        raise SchemaError(iface.file, m.line, f"`{m.name}` is {m.http.verb}: parameter `{f.name}` of type `{f.type}` cannot travel in a query string")


def _query_type(schema: Schema, t: TypeRef) -> bool:
    if t.name == "List":
        return _query_type(schema, t.args[0]) and t.args[0].name != "List"
    return t.name in ("Bool", "Int32", "Int64", "Float64", "Text") or t.name in schema.enums
