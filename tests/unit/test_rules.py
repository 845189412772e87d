"""The registry's validation rules: what a name, a locator, a datatype and a format may be."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services._runtime.errors import InvalidArgument
from services.domain.datatypes import Datatype, DatetimeFormat
from services.schema import rules
from services.schema.model import LocatorType

_LOCATOR_FIRST = string.ascii_letters + "_"
_LOCATOR_REST = string.ascii_letters + string.digits + "_$"


def _violated_fields(error: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [field for field, _ in error.value.violations]


# Names


@pytest.mark.parametrize("value", ["a", "My DCP Service", "x" * 255, "Kundenstamm Zürich ✓", "  padded  ", "a$b-c.d"])
def test_names_up_to_255_characters_are_accepted(value: str) -> None:
    assert rules.name(value) == value


def test_a_256_character_name_is_refused_with_its_length() -> None:
    with pytest.raises(InvalidArgument) as error:
        rules.name("x" * 256)
    assert _violated_fields(error) == ["name"]
    assert "255" in error.value.violations[0][1]
    assert "256" in error.value.violations[0][1]


@pytest.mark.parametrize("value", ["", " ", "\t \t"])
def test_blank_names_are_refused(value: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        rules.name(value)
    assert _violated_fields(error) == ["name"]


@pytest.mark.parametrize("value", ["tab\tinside", "new\nline", "nul\x00", "\x1bescape", "del\x7f", "bell\x07"])
def test_names_with_control_characters_are_refused(value: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        rules.name(value)
    assert _violated_fields(error) == ["name"]
    assert "control" in error.value.violations[0][1]


def test_a_bad_name_is_reported_under_the_callers_field() -> None:
    with pytest.raises(InvalidArgument) as error:
        rules.name("", field="label")
    assert _violated_fields(error) == ["label"]


@given(st.text(alphabet=st.characters(min_codepoint=32, exclude_characters="\x7f"), min_size=1, max_size=255))
def test_any_printable_name_within_the_limit_is_accepted(value: str) -> None:
    if value.strip():
        assert rules.name(value) == value


# Descriptions


def test_descriptions_may_be_absent_or_up_to_4096_characters() -> None:
    assert rules.description(None) is None
    assert rules.description("") == ""
    assert rules.description("line one\nline two\ttab") == "line one\nline two\ttab"
    assert rules.description("d" * 4096) == "d" * 4096


@pytest.mark.parametrize("value", ["d" * 4097, "has a \x00 NUL"])
def test_overlong_or_nul_descriptions_are_refused(value: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        rules.description(value)
    assert _violated_fields(error) == ["description"]


# Locators


@pytest.mark.parametrize(
    ("spelling", "kind"),
    [
        ("cookie", LocatorType.COOKIE),
        ("query parameter", LocatorType.QUERY_PARAMETER),
        ("js_variable", LocatorType.JS_VARIABLE),
        ("uid", LocatorType.UID),
    ],
)
def test_the_four_v1_locator_types_are_known(spelling: str, kind: LocatorType) -> None:
    assert rules.locator_type(spelling) is kind


@pytest.mark.parametrize("spelling", [None, "", "Cookie", "query_parameter", "header"])
def test_other_locator_types_are_refused_with_the_choices(spelling: str | None) -> None:
    with pytest.raises(InvalidArgument) as error:
        rules.locator_type(spelling)
    assert _violated_fields(error) == ["keyfield_locator_type"]
    assert "'query parameter'" in error.value.violations[0][1]


@pytest.mark.parametrize("value", ["crm_id", "_private", "window$user", "a", "A1", "x$", "$" * 0 + "z9_$$", "a" * 255])
@pytest.mark.parametrize("kind", [LocatorType.COOKIE, LocatorType.QUERY_PARAMETER, LocatorType.JS_VARIABLE])
def test_identifier_locator_names_are_accepted(kind: LocatorType, value: str) -> None:
    assert rules.locator(kind, value) == value


@pytest.mark.parametrize(
    "value",
    [
        "1st_id",  # leading digit
        "$user",  # leading dollar
        "crm-id",
        "crm id",
        "crm.id",
        "crm_id\n",  # a trailing newline must not slip past the end anchor
        "\ncrm_id",
        "crm_ïd",
        "a" * 256,
    ],
)
def test_other_locator_names_are_refused(value: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        rules.locator(LocatorType.COOKIE, value)
    assert _violated_fields(error) == ["keyfield_locator_name"]


@pytest.mark.parametrize("kind", [LocatorType.COOKIE, LocatorType.QUERY_PARAMETER, LocatorType.JS_VARIABLE])
@pytest.mark.parametrize("value", [None, ""])
def test_non_uid_locators_need_a_name(kind: LocatorType, value: str | None) -> None:
    with pytest.raises(InvalidArgument) as error:
        rules.locator(kind, value)
    assert _violated_fields(error) == ["keyfield_locator_name"]
    assert kind.value in error.value.violations[0][1]


def test_uid_locators_store_no_name_and_refuse_one() -> None:
    assert rules.locator(LocatorType.UID, None) is None
    assert rules.locator(LocatorType.UID, "") is None
    with pytest.raises(InvalidArgument) as error:
        rules.locator(LocatorType.UID, "crm_id")
    assert _violated_fields(error) == ["keyfield_locator_name"]


@given(
    st.builds(
        lambda first, rest: first + rest,
        st.sampled_from(_LOCATOR_FIRST),
        st.text(alphabet=_LOCATOR_REST, max_size=254),
    )
)
def test_any_identifier_matching_the_locator_pattern_is_accepted(value: str) -> None:
    assert re.fullmatch(r"[a-zA-Z_][a-zA-Z_0-9$]*", value)
    assert rules.locator(LocatorType.JS_VARIABLE, value) == value


@given(
    st.text(alphabet=_LOCATOR_REST, max_size=20),
    st.characters().filter(lambda ch: ch not in _LOCATOR_REST),
    st.text(alphabet=_LOCATOR_REST, max_size=20),
)
def test_any_locator_name_with_a_character_outside_the_pattern_is_refused(before: str, odd: str, after: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        rules.locator(LocatorType.COOKIE, "a" + before + odd + after)
    assert _violated_fields(error) == ["keyfield_locator_name"]


@given(st.sampled_from(string.digits + "$"), st.text(alphabet=_LOCATOR_REST, max_size=20))
def test_any_locator_name_starting_with_a_digit_or_dollar_is_refused(first: str, rest: str) -> None:
    with pytest.raises(InvalidArgument):
        rules.locator(LocatorType.QUERY_PARAMETER, first + rest)


# Datatypes and formats


@pytest.mark.parametrize("spelling", ["string", "bool", "long", "double", "datetime"])
def test_the_five_datatypes_are_known(spelling: str) -> None:
    assert rules.datatype(spelling).value == spelling


@pytest.mark.parametrize("spelling", [None, "", "String", "int", "boolean", "date"])
def test_other_datatypes_are_refused(spelling: str | None) -> None:
    with pytest.raises(InvalidArgument) as error:
        rules.datatype(spelling)
    assert _violated_fields(error) == ["datatype"]


@pytest.mark.parametrize("fmt", list(DatetimeFormat))
def test_datetime_accepts_each_of_its_formats(fmt: DatetimeFormat) -> None:
    assert rules.datetime_format(Datatype.DATETIME, fmt.value) is fmt


def test_datetime_needs_a_format() -> None:
    with pytest.raises(InvalidArgument) as error:
        rules.datetime_format(Datatype.DATETIME, None)
    assert _violated_fields(error) == ["format"]
    assert "'epoch'" in error.value.violations[0][1]


@pytest.mark.parametrize("fmt", ["", "YYYY-MM-DD", "iso8601", "yyyy-mm-ddThh:mm:ss"])
def test_datetime_refuses_unknown_formats(fmt: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        rules.datetime_format(Datatype.DATETIME, fmt)
    assert _violated_fields(error) == ["format"]


@pytest.mark.parametrize("kind", [Datatype.STRING, Datatype.BOOL, Datatype.LONG, Datatype.DOUBLE])
def test_other_datatypes_have_no_format(kind: Datatype) -> None:
    assert rules.datetime_format(kind, None) is None
    with pytest.raises(InvalidArgument) as error:
        rules.datetime_format(kind, "epoch")
    assert _violated_fields(error) == ["format"]
    assert kind.value in error.value.violations[0][1]
