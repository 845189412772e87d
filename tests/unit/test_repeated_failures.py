"""A failure that every request meets is logged once per interval with one traceback, then counted."""

from __future__ import annotations

import logging

import asyncpg
import pytest

from services._runtime.errors import InvalidArgument, Unavailable, from_database_error
from services._runtime.logs import RepeatedFailures, RepeatedRecords, failure_key
from services._runtime.settings import Settings


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _refused() -> ConnectionRefusedError:
    try:
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
    except ConnectionRefusedError as error:
        return error


def _lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, bool]]:
    return [(r.getMessage(), r.exc_info is not None) for r in caplog.records]


def test_the_first_failure_has_its_traceback_and_the_rest_of_the_interval_one_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    failures = RepeatedFailures(logging.getLogger("outage"), interval_seconds=60, clock=clock)
    with caplog.at_level(logging.WARNING, logger="outage"):
        for _ in range(500):
            error = _refused()
            failures.log(logging.WARNING, failure_key(error), "the database cannot be reached", exc_info=error)
            clock.now += 0.1
        clock.now += 20
        error = _refused()
        failures.log(logging.WARNING, failure_key(error), "the database cannot be reached", exc_info=error)
    assert _lines(caplog) == [
        ("the database cannot be reached", True),
        ("the database cannot be reached ... 499 more times in the last 70 s", False),
        ("the database cannot be reached", True),
    ]


def test_distinct_failures_each_get_their_traceback(caplog: pytest.LogCaptureFixture) -> None:
    failures = RepeatedFailures(logging.getLogger("outage"), clock=_Clock())
    timeout = TimeoutError()
    with caplog.at_level(logging.WARNING, logger="outage"):
        for error in (_refused(), timeout, _refused(), timeout):
            failures.log(logging.WARNING, failure_key(error), "%s", type(error).__name__, exc_info=error)
    assert _lines(caplog) == [("ConnectionRefusedError", True), ("TimeoutError", True)]


def test_other_libraries_records_pass_once_per_interval_and_say_how_many_were_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    logger = logging.getLogger("library.pool")
    quiet = RepeatedRecords(interval_seconds=60, clock=clock)
    logger.addFilter(quiet)
    try:
        with caplog.at_level(logging.WARNING, logger="library.pool"):
            for _ in range(61):
                logger.warning("retrying", exc_info=_refused())
                clock.now += 1
    finally:
        logger.removeFilter(quiet)
    assert _lines(caplog) == [("retrying", True), ("retrying (and 59 more times in the 60 s before)", True)]


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "refused"),
        TimeoutError(),
        asyncpg.InterfaceError("connection is closed"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.TooManyConnectionsError("too many clients"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_database_that_cannot_answer_is_unavailable(error: BaseException) -> None:
    mapped = from_database_error(error)
    assert isinstance(mapped, Unavailable)
    assert mapped.to_status().code == 14  # UNAVAILABLE


def test_bad_arguments_are_not_taken_for_an_outage() -> None:
    assert from_database_error(asyncpg.DataError("invalid input for query argument $1")) is None


def test_database_timeouts_are_settings_with_defaults() -> None:
    defaults = Settings.from_env({})
    assert (
        defaults.db_connect_timeout_seconds,
        defaults.db_acquire_timeout_seconds,
        defaults.db_statement_timeout_seconds,
        defaults.db_command_timeout_seconds,
    ) == (5.0, 10.0, 60.0, 65.0)
    chosen = Settings.from_env({"DCP_DB_STATEMENT_TIMEOUT_SECONDS": "5", "DCP_DB_CONNECT_TIMEOUT_SECONDS": "2"})
    assert (chosen.db_statement_timeout_seconds, chosen.db_connect_timeout_seconds) == (5.0, 2.0)
    with pytest.raises(InvalidArgument, match="invalid configuration") as refused:
        Settings.from_env({"DCP_DB_CONNECT_TIMEOUT_SECONDS": "0"})
    assert [field for field, _ in refused.value.violations] == ["DCP_DB_CONNECT_TIMEOUT_SECONDS"]
