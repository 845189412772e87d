"""README.md read as a script: its shell blocks split into commands, each with the result the README shows.

A fenced block whose info string is `sh` is shell a user copies into one terminal, block after block. Each
command may be followed by its shown result, a comment starting with `→` (on the command's line or on the
lines right after it; lines that go on with it are comments indented by at least two spaces):

    curl -s $API/dcp_services/1 -H "Token: $TOKEN"
    # → 200 {"id": 1, "name": "My DCP Service", ...}

A result is an optional HTTP status, then either a JSON shape or plain text. In a shape `...` is a wildcard: a
bare `...` or `"..."` matches any value, `...` as a member of an object allows more keys and as the last item of
an array more items, and `...` inside any other string matches any text there (`"oeu..."` is a prefix). Text
results compare with the command's output, stripped, where `...` again matches any text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

ARROW = "→"
ELLIPSIS = "..."


class ReadmeError(ValueError):
    """The README's text cannot be read as this module expects: where, and why."""


@dataclass(frozen=True)
class Block:
    info: str
    """The fence's info string (`sh`, `json`, ...)."""
    section: str
    """The heading the block sits under."""
    line: int
    """README line of the block's first line of code (1-based)."""
    text: str


@dataclass(frozen=True)
class Command:
    text: str
    """The command as bash gets it: its lines, with their comments."""
    line: int
    """README line of its first line (1-based)."""
    expected: str | None = None
    """The shown result, after the arrow; None when the README shows none."""

    @property
    def background(self) -> bool:
        """Whether the command starts a process that keeps running (it ends with `&`)."""
        code = _code_of_last_line(self.text)
        return code.endswith("&") and not code.endswith("&&")


def fenced_blocks(markdown: str) -> list[Block]:
    """Every fenced code block, in order, with the heading it sits under."""
    blocks: list[Block] = []
    section = ""
    fence: str | None = None
    info = ""
    start = 0
    body: list[str] = []
    for number, line in enumerate(markdown.splitlines(), start=1):
        if fence is None:
            if line.startswith("#"):
                section = line.lstrip("#").strip()
            opening = re.match(r"^(`{3,}|~{3,})\s*([^`\s]*)", line)
            if opening:
                fence, info, start, body = opening.group(1), opening.group(2), number + 1, []
        elif line.strip() == fence:
            blocks.append(Block(info=info, section=section, line=start, text="\n".join(body) + "\n"))
            fence = None
        else:
            body.append(line)
    if fence is not None:
        raise ReadmeError(f"line {start - 1}: a code block is never closed")
    return blocks


@dataclass
class _Scan:
    """Where bash's reading of one command stands at the end of a line."""

    stack: list[str] = field(default_factory=list)
    """Open quotes and parentheses, innermost last: `'`, `"`, `$(` or `(`."""
    continued: bool = False
    """The line ended with a backslash."""
    heredocs: list[tuple[str, bool]] = field(default_factory=list)
    """Delimiters of here-documents whose bodies follow, and whether their tabs are stripped (`<<-`)."""

    @property
    def complete(self) -> bool:
        return not self.stack and not self.continued and not self.heredocs


def _scan_line(line: str, scan: _Scan) -> str | None:
    """Advances `scan` over one line of code; returns the line's comment (without `#`), if it has one."""
    scan.continued = False
    i = 0
    while i < len(line):
        char = line[i]
        top = scan.stack[-1] if scan.stack else None
        if top == "'":
            if char == "'":
                scan.stack.pop()
            i += 1
            continue
        if char == "\\":
            if i == len(line) - 1:
                scan.continued = True
            i += 2
            continue
        if top == '"':
            if char == '"':
                scan.stack.pop()
            elif line.startswith("$(", i):
                scan.stack.append("$(")
                i += 1
            i += 1
            continue
        if char in "'\"":
            scan.stack.append(char)
        elif line.startswith("$(", i):
            scan.stack.append("$(")
            i += 1
        elif char == "(":
            scan.stack.append("(")
        elif char == ")" and top in ("$(", "("):
            scan.stack.pop()
        elif char == "#" and (i == 0 or line[i - 1] in " \t;&|()"):
            return line[i + 1 :]
        elif line.startswith("<<", i) and not line.startswith("<<<", i):
            heredoc = re.match(r"<<(-?)\s*(?:'([^']+)'|\"([^\"]+)\"|([A-Za-z_][A-Za-z0-9_]*))", line[i:])
            if heredoc is None:
                raise ReadmeError(f"a here-document without a delimiter: {line!r}")
            delimiter = heredoc.group(2) or heredoc.group(3) or heredoc.group(4)
            scan.heredocs.append((delimiter, heredoc.group(1) == "-"))
            i += heredoc.end()
            continue
        i += 1
    return None


def _code_of_last_line(text: str) -> str:
    last = text.rstrip("\n").splitlines()[-1]
    comment = _scan_line(last, _Scan())
    code = last if comment is None else last[: len(last) - len(comment) - 1]
    return code.strip()


def _expectation(comment: str) -> str | None:
    stripped = comment.strip()
    return stripped[len(ARROW) :].strip() if stripped.startswith(ARROW) else None


def split_commands(block: Block) -> list[Command]:
    """The block's commands, as bash would read them one at a time, each with its shown result."""
    commands: list[Command] = []
    lines: list[str] = []
    first = 0
    inline: str | None = None
    scan = _Scan()
    heredoc_body = False
    # What the previous line was: part of a command, or of a command's shown result (so a result may follow).
    after_command = False
    result_open = False

    def finish() -> None:
        nonlocal lines, inline, after_command, result_open
        commands.append(Command("\n".join(lines) + "\n", first, inline))
        after_command, result_open = True, inline is not None
        lines, inline = [], None

    def attach(text: str) -> None:
        previous = commands[-1]
        joined = text if previous.expected is None else f"{previous.expected} {text}"
        commands[-1] = Command(previous.text, previous.line, joined)

    for offset, line in enumerate(block.text.splitlines()):
        number = block.line + offset
        if heredoc_body:
            lines.append(line)
            delimiter, strip_tabs = scan.heredocs[0]
            if (line.lstrip("\t") if strip_tabs else line) == delimiter:
                scan.heredocs.pop(0)
            if not scan.heredocs:
                heredoc_body = False
                if scan.complete:
                    finish()
            continue
        stripped = line.strip()
        if not lines and (not stripped or stripped.startswith("#")):
            note = stripped[1:]
            shown = _expectation(note) if stripped else None
            if shown is not None:
                if not after_command:
                    raise ReadmeError(f"line {number}: a result ({ARROW}) that follows no command")
                if commands[-1].expected is not None:
                    raise ReadmeError(f"line {number}: a second result for one command")
                attach(shown)
                result_open = True
            elif result_open and note.startswith("  "):
                attach(note.strip())
            else:
                after_command = result_open = False
            continue
        if not lines:
            first = number
        lines.append(line)
        shown = _expectation(_scan_line(line, scan) or "")
        if shown is not None:
            if inline is not None:
                raise ReadmeError(f"line {number}: a second result for one command")
            inline = shown
        if scan.heredocs:
            heredoc_body = True
        elif scan.complete:
            finish()
    if lines:
        raise ReadmeError(f"line {first}: the command never ends (an open quote, parenthesis or here-document)")
    return commands


def substitute(text: str, table: Mapping[str, str]) -> str:
    """`text` with every key of `table` replaced; keys that are port numbers are replaced only as whole numbers."""
    for old, new in table.items():
        text = re.sub(rf"(?<![\d.]){old}(?!\d)", new, text) if old.isdigit() else text.replace(old, new)
    return text


# ---- shown results ----------------------------------------------------------------------------------------------


class _Any:
    def __repr__(self) -> str:
        return ELLIPSIS


ANY = _Any()


@dataclass(frozen=True)
class Glob:
    """A string of which only the parts around `...` are known."""

    pattern: str

    def matches(self, value: str) -> bool:
        parts = [re.escape(part) for part in self.pattern.split(ELLIPSIS)]
        return re.fullmatch(".*".join(parts), value, flags=re.DOTALL) is not None


@dataclass(frozen=True)
class Shape:
    """An object or array of which every shown member must match; `open` when more may follow."""

    members: dict[str, Any] | list[Any]
    open: bool


@dataclass(frozen=True)
class Expected:
    status: int | None
    """The HTTP status shown, if any."""
    shape: Any
    """A JSON value, ANY, Glob or Shape; None when no output is shown (see `text`)."""
    text: str | None
    """Plain text shown instead of a shape."""


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<ellipsis>\.\.\.)
      | (?P<punct>[{}\[\]:,])
      | (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<number>-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?)
      | (?P<word>true|false|null)
    )""",
    re.VERBOSE,
)


def _tokens(text: str) -> Iterator[tuple[str, str, int]]:
    position = 0
    while position < len(text):
        if not text[position:].strip():
            return
        found = _TOKEN.match(text, position)
        if found is None:
            raise ReadmeError(f"cannot read the shape at {text[position : position + 30]!r}")
        kind = found.lastgroup
        assert kind is not None
        yield kind, found.group(kind), found.start(kind)
        position = found.end()


class _ShapeReader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = list(_tokens(text))
        self.at = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, *expected: str) -> tuple[str, str, int]:
        token = self.peek()
        if token is None:
            raise ReadmeError(f"the shape {self.text!r} ends too soon")
        if expected and token[1] not in expected:
            raise ReadmeError(f"expected {' or '.join(expected)} at {self.text[token[2] : token[2] + 30]!r}")
        self.at += 1
        return token

    def value(self) -> Any:
        kind, text, _ = self.take()
        if kind == "ellipsis":
            return ANY
        if kind == "string":
            decoded: str = json.loads(text)
            if decoded == ELLIPSIS:
                return ANY
            return Glob(decoded) if ELLIPSIS in decoded else decoded
        if kind in ("number", "word"):
            return json.loads(text)
        if text == "{":
            return self.members("}", keyed=True)
        if text == "[":
            return self.members("]", keyed=False)
        raise ReadmeError(f"unexpected {text!r} in the shape {self.text!r}")

    def members(self, closing: str, *, keyed: bool) -> Shape:
        items: dict[str, Any] | list[Any] = {} if keyed else []
        is_open = False
        token = self.peek()
        if token is not None and token[1] == closing:
            self.take()
            return Shape(items, False)
        while True:
            token = self.peek()
            if token is not None and token[0] == "ellipsis":
                self.take()
                is_open = True
                # Keys have no order, so an object may say "more keys" anywhere; an array only at its end.
                if self.take(",", closing)[1] == closing:
                    return Shape(items, is_open)
                if isinstance(items, list):
                    raise ReadmeError(f"`...` may only end an array, in {self.text!r}")
                continue
            if isinstance(items, dict):
                kind, text, _ = self.take()
                if kind != "string":
                    raise ReadmeError(f"an object key must be a string, not {text!r}, in {self.text!r}")
                self.take(":")
                items[json.loads(text)] = self.value()
            else:
                items.append(self.value())
            if self.take(",", closing)[1] == closing:
                return Shape(items, is_open)


def parse_shape(text: str) -> Any:
    """A shown JSON shape read into values, ANY, Glob and Shape; anything after it is an error."""
    reader = _ShapeReader(text)
    value = reader.value()
    if reader.peek() is not None:
        raise ReadmeError(f"text after the shape {text!r}")
    return value


def parse_expected(text: str, *, as_text: bool = False) -> Expected:
    """A shown result: `[status] [shape or text]`; `as_text` reads all of it as text (for `-w` output)."""
    if as_text:
        return Expected(None, None, text)
    status: int | None = None
    found = re.match(r"^([1-5]\d\d)(?:\s+|$)", text)
    if found:
        status, text = int(found.group(1)), text[found.end() :]
    if not text:
        return Expected(status, None, None)
    if text[0] in '{["':
        return Expected(status, parse_shape(text), None)
    return Expected(status, None, text)


def mismatches(shape: Any, value: Any, path: str = "$") -> list[str]:
    """Where `value` differs from `shape`, each as `path: reason`; empty when it matches."""
    if shape is ANY:
        return []
    if isinstance(shape, Glob):
        if isinstance(value, str) and shape.matches(value):
            return []
        return [f"{path}: expected a string like {shape.pattern!r}, got {value!r}"]
    if isinstance(shape, Shape):
        if isinstance(shape.members, dict):
            return _object_mismatches(shape, value, path)
        return _array_mismatches(shape, value, path)
    # bool is an int in Python; JSON keeps them apart.
    same_type = isinstance(value, bool) == isinstance(shape, bool)
    if same_type and value == shape and (shape is not None or value is None):
        return []
    return [f"{path}: expected {json.dumps(shape)}, got {json.dumps(value)}"]


def _object_mismatches(shape: Shape, value: Any, path: str) -> list[str]:
    assert isinstance(shape.members, dict)
    if not isinstance(value, dict):
        return [f"{path}: expected an object, got {json.dumps(value)}"]
    found: list[str] = []
    for key, member in shape.members.items():
        if key not in value:
            found.append(f"{path}: no key {key!r}")
        else:
            found.extend(mismatches(member, value[key], f"{path}.{key}"))
    extra = sorted(set(value) - set(shape.members))
    if extra and not shape.open:
        found.append(f"{path}: keys not shown: {', '.join(extra)} (end the object with `, ...` to allow more)")
    return found


def _array_mismatches(shape: Shape, value: Any, path: str) -> list[str]:
    assert isinstance(shape.members, list)
    if not isinstance(value, list):
        return [f"{path}: expected an array, got {json.dumps(value)}"]
    if len(value) < len(shape.members) or (len(value) > len(shape.members) and not shape.open):
        more = " or more" if shape.open else ""
        return [f"{path}: expected {len(shape.members)}{more} items, got {len(value)}"]
    found: list[str] = []
    for index, member in enumerate(shape.members):
        found.extend(mismatches(member, value[index], f"{path}[{index}]"))
    return found


def text_matches(expected: str, output: str) -> bool:
    """Whether a command's output, stripped, is the shown text (where `...` stands for any text)."""
    return Glob(expected.strip()).matches(output.strip())
