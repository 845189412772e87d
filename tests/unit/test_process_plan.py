"""How many serving processes `dcp up` runs, and why it runs fewer than asked for."""

from __future__ import annotations

import pytest

from services import replicas
from services._runtime.errors import InvalidArgument
from services._runtime.settings import DEFAULT_MAX_PROCESSES, Settings


def test_without_a_choice_every_usable_core_but_one_serves_up_to_the_default_most() -> None:
    assert replicas.plan(Settings()).count == max(1, min(replicas.usable_cores() - 1, DEFAULT_MAX_PROCESSES))
    assert replicas.plan(Settings(processes=3)) == replicas.ProcessPlan(3)


def test_rate_limits_counted_in_process_keep_one_process_and_say_how_to_get_more() -> None:
    limited = replicas.plan(Settings(processes=4, rate_limit_per_second=10))
    assert limited.count == 1
    assert limited.note is not None
    assert "DCP_RATE_LIMIT_PER_SECOND" in limited.note
    assert "set DCP_REDIS_URL to serve with 4" in limited.note
    shared = replicas.plan(Settings(processes=4, rate_limit_per_second=10, redis_url="redis://localhost:6379/0"))
    assert shared == replicas.ProcessPlan(4)
    assert replicas.plan(Settings(processes=1, rate_limit_per_second=10)) == replicas.ProcessPlan(1)


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_a_bad_DCP_PROCESSES_is_named_with_the_reason(value: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        Settings.from_env({"DCP_PROCESSES": value})
    assert [field for field, _ in refused.value.violations] == ["DCP_PROCESSES"]
