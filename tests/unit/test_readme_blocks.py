"""How the README is read as a script: blocks, commands, shown results, and matching them against output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.e2e.readme_blocks import (
    ANY,
    Block,
    Glob,
    ReadmeError,
    Shape,
    fenced_blocks,
    mismatches,
    parse_expected,
    parse_shape,
    split_commands,
    substitute,
    text_matches,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def _commands(text: str) -> list[tuple[str, str | None]]:
    return [(c.text, c.expected) for c in split_commands(Block("sh", "s", 10, text))]


def test_fenced_blocks_keep_their_info_string_section_and_line() -> None:
    markdown = "# Title\n\n## Start\n\ntext\n\n```sh\necho hi\n```\n\n## Data\n\n```json\n{}\n```\n"
    blocks = fenced_blocks(markdown)
    assert [(b.info, b.section, b.line, b.text) for b in blocks] == [
        ("sh", "Start", 8, "echo hi\n"),
        ("json", "Data", 14, "{}\n"),
    ]


def test_an_unclosed_block_is_an_error() -> None:
    with pytest.raises(ReadmeError, match="never closed"):
        fenced_blocks("```sh\necho hi\n")


def test_commands_are_split_at_line_ends_but_not_inside_continuations_quotes_or_heredocs() -> None:
    text = (
        "A=1\n"
        "curl -s -X POST $API \\\n"
        "  -d '{\"a\": 1}'\n"
        "curl -s $API -d '{\n"
        '  "name": "x"}\'\n'
        "cat > f.csv <<'EOF'\n"
        'a,"b ""c"""\n'
        "EOF\n"
        'echo "$(curl -s $API -H "Token: $T" | python3 -c \'import sys; print(sys.stdin.read()[0])\')"\n'
    )
    commands = [c for c, _ in _commands(text)]
    assert commands == [
        "A=1\n",
        "curl -s -X POST $API \\\n  -d '{\"a\": 1}'\n",
        'curl -s $API -d \'{\n  "name": "x"}\'\n',
        'cat > f.csv <<\'EOF\'\na,"b ""c"""\nEOF\n',
        'echo "$(curl -s $API -H "Token: $T" | python3 -c \'import sys; print(sys.stdin.read()[0])\')"\n',
    ]


def test_a_heredoc_body_is_not_read_as_shell() -> None:
    text = "python3 - <<EOF\nprint('# → not a result')\n(\nEOF\necho done\n"
    assert _commands(text) == [("python3 - <<EOF\nprint('# → not a result')\n(\nEOF\n", None), ("echo done\n", None)]


def test_results_follow_their_command_inline_or_on_the_next_lines() -> None:
    text = (
        "# a comment before\n"
        'curl -s $A   # → 200 {"a": 1}\n'
        "curl -s $B   # only a note\n"
        '# → [{"b": 1,\n'
        '#     "c": 2}]\n'
        "# a note after, not part of the result\n"
        "echo '#not a comment'\n"
        "\n"
        "echo x\n"
    )
    assert _commands(text) == [
        ('curl -s $A   # → 200 {"a": 1}\n', '200 {"a": 1}'),
        ("curl -s $B   # only a note\n", '[{"b": 1, "c": 2}]'),
        ("echo '#not a comment'\n", None),
        ("echo x\n", None),
    ]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("# → 200\necho\n", "follows no command"),
        ("echo\n# note\n# → 200\n", "follows no command"),
        ("echo  # → a\n# → b\n", "second result"),
        ("echo 'open\n", "never ends"),
        ("cat <<EOF\nbody\n", "never ends"),
    ],
)
def test_misplaced_results_and_unfinished_commands_are_errors(text: str, reason: str) -> None:
    with pytest.raises(ReadmeError, match=reason):
        split_commands(Block("sh", "s", 1, text))


def test_a_command_ending_with_an_ampersand_runs_in_the_background() -> None:
    commands = split_commands(Block("sh", "s", 1, "dcp serve schema &\ntrue && echo x\na \\\n  b &  # note\n"))
    assert [c.background for c in commands] == [True, False, True]


def test_substitution_replaces_ports_only_as_whole_numbers() -> None:
    text = "curl http://127.0.0.1:8080/x; DCP_GRPC_PORT=50051; echo 180801 8080.5 ~/.local/share/open-dcp/token"
    table = {"8080": "41001", "50051": "41002", "~/.local/share/open-dcp": "/tmp/d"}
    assert substitute(text, table) == (
        "curl http://127.0.0.1:41001/x; DCP_GRPC_PORT=41002; echo 180801 41001.5 /tmp/d/token"
    )


def test_a_result_is_a_status_then_a_shape_or_text() -> None:
    assert parse_expected('201 {"id": 1, ...}') == parse_expected('201 {"id": 1, ...}')
    only_status = parse_expected("204")
    assert (only_status.status, only_status.shape, only_status.text) == (204, None, None)
    shaped = parse_expected('{"a": "..."}')
    assert shaped.status is None
    assert shaped.shape == Shape({"a": ANY}, open=False)
    text = parse_expected("account 2 created: Acme")
    assert (text.status, text.text) == (None, "account 2 created: Acme")
    assert parse_expected("204", as_text=True).text == "204"


def test_shapes_read_wildcards_open_members_and_globs() -> None:
    shape = parse_shape('[{"id": 1, "key": "oeu...", "data": {...}, "x": ..., ...}, ...]')
    assert shape == Shape(
        [Shape({"id": 1, "key": Glob("oeu..."), "data": Shape({}, open=True), "x": ANY}, open=True)], open=True
    )


@pytest.mark.parametrize(
    "text", ['{"a": 1} trailing words', "[..., 1]", '{"a" 1}', "{1: 2}", '{"a": 1', "[1,, 2]", "nope"]
)
def test_a_shape_that_cannot_be_read_is_an_error(text: str) -> None:
    with pytest.raises(ReadmeError):
        parse_shape(text)


@pytest.mark.parametrize(
    ("shape", "value", "problem"),
    [
        ('{"id": 1, ...}', {"id": 1, "more": 2}, None),
        ('{"a": 1, ..., "b": 2}', {"a": 1, "b": 2, "c": 3}, None),
        ('{"a": 1, ..., "b": 2}', {"a": 1, "c": 3}, "$: no key 'b'"),
        ('{"id": 1}', {"id": 1, "more": 2}, "$: keys not shown: more"),
        ('{"id": 1, ...}', {"more": 2}, "$: no key 'id'"),
        ('{"a": {"b": [1, 2]}}', {"a": {"b": [1, 3]}}, "$.a.b[1]: expected 2, got 3"),
        ("[1, ...]", [1, 2, 3], None),
        ("[1, ...]", [], "$: expected 1 or more items, got 0"),
        ("[1]", [1, 2], "$: expected 1 items, got 2"),
        ('{"ok": true}', {"ok": 1}, "$.ok: expected true, got 1"),
        ('{"n": 1}', {"n": True}, "$.n: expected 1, got true"),
        ('{"v": null}', {"v": 0}, "$.v: expected null, got 0"),
        ('{"v": "..."}', {"v": None}, None),
        ('"http://127.0.0.1:9000/b?X-Amz-..."', "http://127.0.0.1:9000/b?X-Amz-Date=1", None),
        ('"http://127.0.0.1:9000/b?X-Amz-..."', "https://elsewhere/b", "$: expected a string like"),
        ('"[\\"and\\",{...}]"', '["and",{"type":"dcp"}]', None),
        ("{...}", [], "$: expected an object"),
    ],
)
def test_matching_names_the_first_difference(shape: str, value: Any, problem: str | None) -> None:
    found = mismatches(parse_shape(shape), value)
    if problem is None:
        assert found == []
    else:
        assert found
        assert found[0].startswith(problem), found


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_any_json_printed_as_its_own_shape_matches_itself(value: Any) -> None:
    assert mismatches(parse_shape(json.dumps(value)), value) == []


@given(st.dictionaries(st.text(max_size=5), json_values, max_size=4), st.text(min_size=1, max_size=5))
def test_a_closed_object_refuses_a_key_it_does_not_show(value: dict[str, Any], extra: str) -> None:
    assume(extra not in value)
    assert mismatches(parse_shape(json.dumps(value)), {**value, extra: 1})


def test_text_results_compare_stripped_with_wildcards() -> None:
    assert text_matches("account 2 created: Acme", "account 2 created: Acme\n")
    assert text_matches("token ... revoked", "token 3 revoked")
    assert not text_matches("204", "404\n")


def test_the_readme_reads_as_commands_with_results_that_parse() -> None:
    blocks = [b for b in fenced_blocks(README.read_text()) if b.info == "sh"]
    commands = [c for b in blocks for c in split_commands(b)]
    shown = [c for c in commands if c.expected is not None]
    assert len(commands) > 50
    assert len(shown) > 30
    for command in shown:
        assert command.expected is not None
        parse_expected(command.expected, as_text="-w " in command.text)
