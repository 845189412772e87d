"""What a customer id may be, for one id and for a whole column of them."""

from __future__ import annotations

import re
from collections.abc import Sequence

from services.domain import pii

MAX_CUSTOMER_ID_LENGTH = 255

_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def customer_id_problem(customer_id: str, *, pii_guard: bool) -> str | None:
    """Why this is no customer id, or None; `pii_guard` refuses ids that look like personal data."""
    if not customer_id or not customer_id.strip():
        return "is required and must not be blank"
    if len(customer_id) > MAX_CUSTOMER_ID_LENGTH:
        return f"must be at most {MAX_CUSTOMER_ID_LENGTH} characters"
    if _CONTROL_CHARACTER.search(customer_id):
        return "must not contain control characters"
    if pii_guard:
        found = pii.detect(customer_id)
        if found:
            return pii.refusal(found)
    return None


def customer_id_problems(customer_ids: Sequence[str], *, pii_guard: bool) -> list[tuple[int, str]]:
    """(index, reason) of each bad id; the same rules as `customer_id_problem`, a clean column checked at once."""
    if (
        customer_ids
        and max(map(len, customer_ids)) <= MAX_CUSTOMER_ID_LENGTH
        and "" not in set(map(str.strip, customer_ids))
        # A line break is a control character, so joining cannot hide or invent one.
        and not _CONTROL_CHARACTER.search("".join(customer_ids))
        and not (pii_guard and pii.detect("\n".join(customer_ids)))
    ):
        return []
    problems = []
    for index, customer_id in enumerate(customer_ids):
        problem = customer_id_problem(customer_id, pii_guard=pii_guard)
        if problem:
            problems.append((index, problem))
    return problems
