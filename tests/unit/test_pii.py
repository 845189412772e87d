"""Values that look like personal data are recognised; pseudonymous ids are not."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.domain import pii


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("jane.doe@example.com", "an e-mail address"),
        ("contact: JANE+news@mail.example.co.uk today", "an e-mail address"),
        ("123-45-6789", "a US social security number"),
        ("ssn 123-45-6789", "a US social security number"),
        ("4111111111111111", "a payment card number"),
        ("4111 1111 1111 1111", "a payment card number"),
        ("4111-1111-1111-1111", "a payment card number"),
        ("378282246310005", "a payment card number"),
    ],
)
def test_personal_data_is_recognised(text: str, found: str) -> None:
    assert pii.detect(text) == found


@pytest.mark.parametrize(
    "text",
    [
        "oeu1457385393173r0.6551181036047637",
        "sfdc1223a3_ji$ddd",
        "mkto1245433:213ad",
        "4111111111111112",  # fails the Luhn check
        "000-12-3456",  # never issued as an SSN
        "5d41402abc4b2a76b9719d911017c592",  # a hashed e-mail
        "user@localhost",
        "12.5",
    ],
)
def test_pseudonymous_ids_and_ordinary_values_pass(text: str) -> None:
    assert pii.detect(text) is None


def _luhn_complete(prefix: str) -> str:
    for check in "0123456789":
        candidate = prefix + check
        total = 0
        for index, char in enumerate(reversed(candidate)):
            digit = int(char) * (2 if index % 2 else 1)
            total += digit - 9 if digit > 9 else digit
        if total % 10 == 0:
            return candidate
    raise AssertionError("unreachable")


@given(st.text(alphabet="0123456789", min_size=12, max_size=18))
def test_every_luhn_valid_number_of_13_to_19_digits_is_a_card(prefix: str) -> None:
    assert pii.detect(_luhn_complete(prefix)) == "a payment card number"


def test_the_refusal_points_to_the_rule() -> None:
    assert "personally identifiable information" in pii.refusal("an e-mail address")
