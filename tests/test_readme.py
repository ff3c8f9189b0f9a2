"""The README's examples run as written, in order, on a fresh database, and print what it shows.

Which blocks run (one rule, stated in the README too): every fenced block tagged `sh` or
`python` is an example and runs, in the order of the file, unless the line before its opening
fence (blank lines aside) is `<!-- not run -->` (installs, benchmarks). A block tagged with
another name for a shell or Python (`bash`, `console`, `py`, ...) fails the test, so that no
example escapes it by its tag.

What an example must print:
- `sh`: a command is a line that is neither blank nor a comment, with its `\\`-continued lines.
  The `# ` lines right under it (no blank line between; `#` alone for an empty line) are what it
  prints, one per line of output; a command without them must print nothing. Other comment
  lines (at the top of a block, after a blank line) are prose.
- `python`: the untagged block that opens on the line after its closing fence is its standard
  output; without one it must print nothing.

How it runs: `zapbilling serve` from the CLI, on a free port and a fresh `--db` file, with a key
made by `zapbilling keys create` with the org and mode of the README's first command (which must
also install the client). Each `sh` block runs in its own `bash` (`set -euo pipefail`) with `KEY`
set, each `python` block with this venv's python and `ZAPBILLING_API_KEY` set, both with the
venv's bin first on PATH (as after `. .venv/bin/activate`), in a scratch folder. The one rewrite
of a block: the server's address, `localhost:8080` or `127.0.0.1:8080`, becomes the test
server's. Nothing else is changed.

Compared line by line after normalising both sides: ids (`tx_<24 hex>`, `hold_...`, `mtr_...`,
any `<prefix>_<24 hex>`) become `<prefix>#n`, webhook signing secrets (`whsec_` and 32 base64
characters, random as ids are) `<whsec#n>`, RFC 3339 times `<time#n>`, and 32-hex tokens (the
client's random request ids) `<hex#n>`, numbered in order of first appearance over the whole
run: an id or time shown twice in the README must come back twice, the same, from the server.

The one block shown but not run that is still checked: the webhook receiver under "Receiving
webhooks" (it serves until stopped) is, but for its last line (`web.run_app(...)`),
`tests/test_webhook_delivery.py`'s RECEIVER_EXAMPLE, which that file runs against real deliveries.
"""
from __future__ import annotations

import pytest

import ast
import asyncio
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from procs import ServerProcess, create_key

pytestmark = pytest.mark.sqlite_only("the README's examples on a fresh SQLite server")

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CI_RUN = ROOT / ".ci" / "run"

RUN_TAGS = ("sh", "python")
# Tags that would make a shell or Python block look like an example while escaping the test.
OTHER_SHELL_OR_PYTHON_TAGS = {"bash", "shell", "zsh", "console", "shell-session", "sh-session", "py", "python3", "pycon", "ipython"}
NOT_RUN = "<!-- not run -->"
README_ADDRESS = re.compile(r"\b(?:localhost|127\.0\.0\.1):8080\b")
BLOCK_TIMEOUT = 60  # seconds for one block: generous, each is a handful of requests


@dataclass
class Block:
    tag: str
    line: int  # 1-based line of the opening fence
    end: int  # 1-based line of the closing fence
    text: list[str]
    not_run: bool
    output: list[str] | None = None  # a python block's output block


@dataclass
class Command:
    text: str  # the command as written (continuation lines included)
    line: int
    expected: list[str] = field(default_factory=list)


def parse_blocks(lines: list[str]) -> list[Block]:
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("```"):
            i += 1
            continue
        tag = line[3:].strip()
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != "```":
            j += 1
        assert j < len(lines), f"README.md:{i + 1}: fence never closed"
        before = [x.strip() for x in lines[:i] if x.strip()]
        blocks.append(Block(tag, i + 1, j + 1, lines[i + 1:j], bool(before) and before[-1] == NOT_RUN))
        i = j + 1
    # A python block's output: the untagged block opening right after its closing fence.
    merged: list[Block] = []
    for b in blocks:
        prev = merged[-1] if merged else None
        if b.tag == "" and prev is not None and b.line == prev.end + 1 and prev.tag in RUN_TAGS:
            assert prev.tag == "python", (
                f"README.md:{b.line}: an output block after a `{prev.tag}` block; a shell command's output goes in `# ` lines under it")
            prev.output = b.text
            continue
        merged.append(b)
    return merged


def shell_commands(block: Block) -> list[Command]:
    """The block's commands, each with the `# ` lines right under it (see the module docstring)."""
    commands: list[Command] = []
    state = "prose"  # what the previous line was: prose (block start, blank, prose comment) or command
    continuing = False
    for n, line in enumerate(block.text, start=block.line + 1):
        if continuing:
            commands[-1].text += "\n" + line
            continuing = line.endswith("\\")
            continue
        if not line.strip():
            state = "prose"
        elif line.startswith("#"):
            if state == "command":
                assert line == "#" or line.startswith("# "), f"README.md:{n}: an output line is `# ` then the text"
                commands[-1].expected.append(line[2:])
        else:
            commands.append(Command(line, n))
            continuing = line.endswith("\\")
            state = "command"
    assert not continuing, f"README.md:{block.end}: the block ends inside a continued command"
    return commands


class Normaliser:
    """Ids, webhook secrets, times and 32-hex tokens to placeholders numbered in order of first appearance."""

    PATTERNS = (
        re.compile(r"\b([a-z]+)_[0-9a-f]{24}\b"),
        re.compile(r"\bwhsec_[A-Za-z0-9+/]{32}(?![A-Za-z0-9+/=])"),
        re.compile(r"\b\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})"),
        re.compile(r"\b[0-9a-f]{32}\b"),
    )

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}
        self.counts: dict[str, int] = {}

    def _name(self, kind: str, value: str) -> str:
        if value not in self.seen:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.seen[value] = f"<{kind}#{self.counts[kind]}>"
        return self.seen[value]

    def __call__(self, text: str) -> str:
        ids, secrets, times, hexes = self.PATTERNS
        text = ids.sub(lambda m: self._name(m.group(1), m.group(0)), text)
        text = secrets.sub(lambda m: self._name("whsec", m.group(0)), text)
        text = times.sub(lambda m: self._name("time", m.group(0)), text)
        return hexes.sub(lambda m: self._name("hex", m.group(0)), text)


def readme_blocks() -> tuple[list[str], list[Block]]:
    lines = README.read_text().splitlines()
    return lines, parse_blocks(lines)


def first_command(blocks: list[Block]) -> list[list[str]]:
    """The README's first block (install and serve), as its `&&`-separated commands."""
    first = blocks[0]
    assert first.tag == "sh" and first.not_run, f"README.md:{first.line}: the first block is the install-and-serve command"
    return [shlex.split(part) for part in " ".join(first.text).split("&&")]


def test_readme_blocks_follow_the_rule_and_the_first_commands_install_what_the_examples_need():
    lines, blocks = readme_blocks()
    for b in blocks:
        assert b.tag not in OTHER_SHELL_OR_PYTHON_TAGS, f"README.md:{b.line}: tag `{b.tag}`: use `sh` or `python` (see tests/test_readme.py)"
    assert any(b.tag in RUN_TAGS and not b.not_run for b in blocks), "no example found"
    outside = [n for n, line in enumerate(lines, 1) if re.search(r"(?<![.\w])\.\./", line)]  # `../x`, not `.../x`
    assert not outside, f"README.md:{outside[0]}: points outside the repository (a clone has only what is in it)"

    parts = first_command(blocks)
    installs = [p for p in parts if p[:2] == ["pip", "install"]]
    assert installs and "./clients/python" in installs[0], "the first command must install the client (./clients/python)"
    assert ["zapbilling", "keys", "create"] in [p[:3] for p in parts]
    assert parts[-1] == ["zapbilling", "serve"], "the first command ends by serving on 127.0.0.1:8080"

    # The second block is the test command, "exactly what .ci/run does".
    second = blocks[1]
    assert second.tag == "sh" and second.not_run and len(second.text) == 1
    assert second.text[0] in CI_RUN.read_text().splitlines(), "README's test command differs from .ci/run's"


RECEIVER_HEADING = "### Receiving webhooks"
RECEIVER_SOURCE = ROOT / "tests" / "test_webhook_delivery.py"


def receiver_example() -> str:
    """test_webhook_delivery.RECEIVER_EXAMPLE, read from its source (importing the test module
    would load its fixtures and dependencies for one string)."""
    for node in ast.parse(RECEIVER_SOURCE.read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["RECEIVER_EXAMPLE"]:
            value = ast.literal_eval(node.value)
            assert isinstance(value, str)
            return value
    raise AssertionError(f"{RECEIVER_SOURCE}: no RECEIVER_EXAMPLE")


def test_readme_webhook_receiver_is_the_one_test_webhook_delivery_runs():
    lines, blocks = readme_blocks()
    heading = lines.index(RECEIVER_HEADING) + 1
    receiver = next(b for b in blocks if b.line > heading and b.tag == "python")
    assert receiver.not_run, f"README.md:{receiver.line}: the receiver serves until stopped: it is marked `{NOT_RUN}`"
    assert receiver.text[-1] == "web.run_app(app, port=8000)", f"README.md:{receiver.end - 1}: the receiver ends by serving"
    shown = "\n".join(receiver.text[:-1]).strip()
    assert shown == receiver_example().strip(), (
        f"README.md:{receiver.line}: the receiver differs from tests/test_webhook_delivery.py's RECEIVER_EXAMPLE")


def test_readme_examples_print_what_the_readme_shows(tmp_path):
    _, blocks = readme_blocks()
    assert shutil.which("curl") and shutil.which("bash"), "the README's examples need curl and bash"
    keys_create = next(p for p in first_command(blocks) if p[:3] == ["zapbilling", "keys", "create"])
    opts = dict(zip(keys_create[3::2], keys_create[4::2]))
    db = str(tmp_path / "zapbilling.db")
    key = create_key(db, org=opts["--org"], mode=opts["--mode"], scope=opts.get("--scope", "admin"))

    server = ServerProcess(db, tmp_path)
    address = f"127.0.0.1:{server.port}"
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZAPBILLING_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["KEY"] = env["ZAPBILLING_API_KEY"] = key

    expected_norm, actual_norm = Normaliser(), Normaliser()
    failures: list[str] = []
    ran = 0
    try:
        asyncio.run(server.start_ready())
        for b in blocks:
            if b.tag not in RUN_TAGS or b.not_run:
                continue
            ran += 1
            if b.tag == "sh":
                failures += run_shell(b, address, env, work, expected_norm, actual_norm)
            else:
                failures += run_python(b, address, env, work, expected_norm, actual_norm)
    finally:
        server.stop()
    assert ran, "no example ran"
    assert not failures, "README examples differ from what they print (expected = README, normalised):\n\n" + "\n\n".join(failures)


def run_shell(b: Block, address: str, env: dict[str, str], cwd: Path, exp: Normaliser, act: Normaliser) -> list[str]:
    commands = shell_commands(b)
    marker = "\x1e"
    script = ["set -euo pipefail"]
    for c in commands:
        script += [README_ADDRESS.sub(address, c.text), f"printf '{marker}\\n'"]
    r = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True, text=True, env=env, cwd=cwd, timeout=BLOCK_TIMEOUT)
    outputs = r.stdout.split(marker + "\n")
    failures = []
    for i, c in enumerate(commands):
        where = f"README.md:{c.line}: {c.text.splitlines()[0]}"
        if i >= len(outputs) - 1:  # the script stopped before this command's marker
            failures.append(f"{where}\n  did not complete: bash exited {r.returncode}\n  stdout: {outputs[-1]!r}\n  stderr: {r.stderr.strip()!r}")
            break
        failures += compare(where, c.expected, outputs[i], exp, act)
    return failures


def run_python(b: Block, address: str, env: dict[str, str], cwd: Path, exp: Normaliser, act: Normaliser) -> list[str]:
    path = cwd / f"readme_{b.line}.py"
    path.write_text(README_ADDRESS.sub(address, "\n".join(b.text)) + "\n")
    r = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env, cwd=cwd, timeout=BLOCK_TIMEOUT)
    where = f"README.md:{b.line}: python block"
    if r.returncode != 0:
        return [f"{where}\n  exited {r.returncode}\n  stdout: {r.stdout!r}\n  stderr: {r.stderr.strip()}"]
    return compare(where, b.output or [], r.stdout, exp, act)


def compare(where: str, expected: list[str], output: str, exp: Normaliser, act: Normaliser) -> list[str]:
    if output and not output.endswith("\n"):
        return [f"{where}\n  its output does not end with a newline (the README shows lines): {output!r}"]
    want = [exp(line) for line in expected]
    got = [act(line) for line in output.splitlines()]
    if want == got:
        return []
    return [f"{where}\n  README:\n" + "".join(f"    {line}\n" for line in want) + "  printed:\n" + "".join(f"    {line}\n" for line in got)
            + "  printed (raw):\n" + "".join(f"    {line}\n" for line in output.splitlines())]
