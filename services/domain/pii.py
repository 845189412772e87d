"""Spotting values that look like personal data, which profiles must not hold."""

from __future__ import annotations

import re

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# SSNs are only recognised in their dashed form: nine bare digits are too
# common in legitimate ids to refuse.
_SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])", re.ASCII)
# A card number stands alone: not glued to letters, and not the fraction of a
# decimal (Optimizely user ids end in one: oeu1457385393173r0.6551181036047637).
_CARD = re.compile(r"(?<![\w.])\d(?:[ -]?\d){12,18}(?![\w.])", re.ASCII)


def _luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        digit = int(char)
        if index % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


# The shortest SSN (123-45-6789) is this long; card numbers are longer still.
_SHORTEST_NUMBER = 11


def detect(text: str) -> str | None:
    """What personal data `text` seems to hold: "an e-mail address", ... or None."""
    if "@" in text and _EMAIL.search(text):
        return "an e-mail address"
    if len(text) < _SHORTEST_NUMBER:
        return None
    # Every value of every import passes here: cheap membership tests spare the regexes most of them.
    if "-" in text and _SSN.search(text):
        return "a US social security number"
    if _CARD.search(text) is None:
        return None
    for match in _CARD.finditer(text):
        digits = re.sub(r"[ -]", "", match.group())
        if 13 <= len(digits) <= 19 and _luhn_valid(digits):
            return "a payment card number"
    return None


def refusal(found: str) -> str:
    return (
        f"looks like {found}; personally identifiable information must not be stored in customer profiles "
        "(use a pseudonymous id such as a hash)"
    )
