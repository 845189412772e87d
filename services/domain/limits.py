"""Bounds that callers are told of and more than one room keeps.

The gateway states them in its OpenAPI document and refuses a request that
breaks one before any call; the room that owns the data checks them again,
so gRPC callers meet the same bounds.
"""

from __future__ import annotations

MAX_NAME_LENGTH = 255
"""Names of projects, DCP services, tables, attributes and audiences."""
MAX_DESCRIPTION_LENGTH = 4096
MAX_BLOCKED_CUSTOMER_IDS = 100
"""Placeholder customer ids one DCP service may refuse to link."""
MAX_USERS_PER_CUSTOMER_ID = 1_000_000
"""The highest limit a DCP service may set on Optimizely users linked to one customer id."""
MAX_FILE_NAME_CHARS = 255
"""The name of an uploaded file, as it is stored under its table's import path."""
MAX_VALIDATE_BYTES = 256 * 1024 * 1024
"""A file posted for checking streams through and is spooled to disk; this caps how long a caller holds the line."""
EXPORT_FORMATS = ("csv", "jsonl")
