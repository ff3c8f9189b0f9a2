"""The documentation in docs/: the committed API reference (docs/api.md) is what
`zapbilling gen docs` generates today and covers every method and type of the schema; the
hand-kept errors table (zapbilling/billing/errors_by_method.py) matches the schema and the code;
links inside docs/ resolve; and nothing in the repository points at files outside it."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from procs import child_env, zapbilling_cmd
from zapbilling.billing import ERRORS_BY_METHOD, ERRORS_BY_RULE, FIELD_RULES, HANDLERS, METHOD_RULES
from zapbilling.codegen.docs import DERIVED_MESSAGES, KIND_MEANINGS, generate, slug
from zapbilling.errors import KINDS
from zapbilling.registry import RegistryError, build_registry, default_schema_path, load_registry

pytestmark = pytest.mark.sqlite_only("the API reference; its examples run on a scratch SQLite database")

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
API_MD = DOCS / "api.md"
REGISTRY = load_registry()
OUTSIDE = "../" + "shared"  # split, so that this file does not match itself


@pytest.fixture(scope="module")
def generated() -> str:
    return generate(REGISTRY, default_schema_path(), "schemas/billing.zap")


def test_committed_api_md_is_what_the_schema_generates(generated):
    assert API_MD.read_text() == generated, "docs/api.md is stale: run `zapbilling gen docs`"


def test_generation_is_byte_identical_from_run_to_run(generated):
    assert generate(REGISTRY, default_schema_path(), "schemas/billing.zap") == generated


def test_every_method_and_type_has_its_section(generated):
    headings = set(re.findall(r"^### (.+)$", generated, re.M))
    for command in REGISTRY.commands.values():
        assert command.name in headings, command.wire
        assert f"`{command.wire}`" in generated, command.wire
    for name in REGISTRY.schema.structs:
        assert f"struct {name}" in headings, name
    for name in REGISTRY.schema.enums:
        assert f"enum {name}" in headings, name


def test_every_example_answer_is_shown(generated):
    """Each operation's example shows its REST call, its ZAP envelope and a real answer."""
    for command in REGISTRY.commands.values():
        section = _section(generated, command.name)
        assert "**Example**" in section and f'"method": "{command.wire}"' in section, command.wire
        assert re.search(r"Answer `2\d\d`:\n\n```json\n", section), command.wire


def test_links_inside_docs_resolve(generated):
    pages = {"api.md": generated} | {p.name: p.read_text() for p in DOCS.glob("*.md") if p.name != "api.md"}
    anchors = {name: {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)} for name, text in pages.items()}
    for name, text in pages.items():
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            page, _, anchor = target.partition("#")
            page = page or name
            assert page in pages, f"{name} links to {target}, which is not in docs/"
            assert not anchor or anchor in anchors[page], f"{name} links to {target}: no such heading"


def test_api_md_links_to_the_conventions(generated):
    assert "](conventions.md)" in generated


def test_nothing_in_the_repository_points_outside_it():
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True)
    offenders = []
    for rel in files.stdout.splitlines():
        path = REPO / rel
        if not path.is_file() or rel.startswith("tests/node/"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        offenders += [f"{rel}:{n}" for n, line in enumerate(text.splitlines(), 1) if OUTSIDE in line]
    assert not offenders, f"files that point outside the repository: {offenders}"


# -- the errors table --------------------------------------------------------------------------

def test_the_errors_table_names_exactly_the_schema_methods():
    assert set(ERRORS_BY_METHOD) == {c.name for c in REGISTRY.commands.values()}


def test_the_registry_refuses_to_start_when_the_errors_table_and_the_schema_disagree():
    schema = REGISTRY.schema
    missing = dict(ERRORS_BY_METHOD)
    del missing["getBalance"]
    with pytest.raises(RegistryError, match="without an entry in the errors table: getBalance"):
        build_registry(schema, HANDLERS, FIELD_RULES, METHOD_RULES, missing)
    with pytest.raises(RegistryError, match="methods the schema does not declare: nope"):
        build_registry(schema, HANDLERS, FIELD_RULES, METHOD_RULES, {**ERRORS_BY_METHOD, "nope": ()})
    with pytest.raises(RegistryError, match="unknown error kinds: teapot"):
        build_registry(schema, HANDLERS, FIELD_RULES, METHOD_RULES, {**ERRORS_BY_METHOD, "getBalance": (("teapot", "x"),)})


def test_every_rule_the_server_applies_has_its_messages():
    rules = set(FIELD_RULES.values()) | {r for m in METHOD_RULES.values() for r in m.values()}
    assert not [getattr(r, "__qualname__", r) for r in rules if r not in ERRORS_BY_RULE]


def test_every_error_kind_has_a_meaning():
    assert set(KIND_MEANINGS) == set(KINDS)


def test_every_message_listed_appears_in_the_source():
    """The table, and the messages the API reference derives, cannot drift from the code: every run
    of text of a message between its `<...>` placeholders and its numbers (which the code fills
    in) appears verbatim in the code of zapbilling/ (not in the table, nor in the generators,
    which hold the messages to check)."""
    source = _code_source()
    messages = {m for entries in ERRORS_BY_METHOD.values() for _, m in entries}
    messages |= {m for ms in ERRORS_BY_RULE.values() for m in ms} | set(DERIVED_MESSAGES)
    missing = sorted(m for m in messages if not _in_source(m, source))
    assert not missing, f"messages whose text is not in zapbilling/: {missing}"


def test_the_source_check_notices_a_message_the_code_does_not_have():
    source = _code_source()
    assert _in_source("<name> must be between 1 and 1000", source)
    assert not _in_source("hold is not pending anymore", source)
    assert not _in_source("limit must be between 1 and 1000", source)  # a name is filled in, not written
    assert not _in_source("unknown parameter: <name>", source.replace("unknown parameter", "?"))


def _code_source() -> str:
    """The code that answers errors: zapbilling/ without the errors table and the generators."""
    skip = {REPO / "zapbilling" / "billing" / "errors_by_method.py"}
    files = [p for p in sorted((REPO / "zapbilling").rglob("*.py")) if p not in skip and "codegen" not in p.parts]
    return "\n".join(p.read_text(encoding="utf-8") for p in files)


def _in_source(message: str, source: str) -> bool:
    chunks = re.split(r"<[^<>]*>|\d+", message)
    return all(chunk in source for chunk in chunks if len(re.findall(r"[A-Za-z]", chunk)) >= 3)


# -- the command ---------------------------------------------------------------------------------

def test_gen_docs_check_passes_on_a_fresh_file_fails_on_a_stale_one_and_writes_nothing(tmp_path):
    out = tmp_path / "api.md"
    assert _cli("gen", "docs", "--out", str(out)).returncode == 0
    fresh = _cli("gen", "docs", "--out", str(out), "--check")
    assert fresh.returncode == 0, fresh.stderr
    out.write_text(out.read_text() + "edited\n")
    stale = _cli("gen", "docs", "--out", str(out), "--check")
    assert stale.returncode == 1 and "stale" in stale.stderr
    assert out.read_text().endswith("edited\n")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*zapbilling_cmd(), *args], capture_output=True, text=True, timeout=120, env=child_env(), cwd=REPO)


def _section(text: str, name: str) -> str:
    start = text.index(f"\n### {name}\n")
    end = text.find("\n### ", start + 1)
    return text[start:end]
