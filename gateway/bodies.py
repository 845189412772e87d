"""Reading v1 JSON request bodies: size, encoding, syntax, field types."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from gateway.errors import ApiError

INT64_MAX = 2**63 - 1


async def read_json(request: Request, *, max_bytes: int) -> Any:
    """The parsed body; 413 past `max_bytes`, 400 for bytes that are not UTF-8 JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"the request body is larger than {max_bytes} bytes", code="PAYLOAD_TOO_LARGE")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"the request body is larger than {max_bytes} bytes", code="PAYLOAD_TOO_LARGE")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise ApiError(400, "the request needs a JSON body", code="MALFORMED_REQUEST")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ApiError(
            400, f"the request body is not valid UTF-8 (byte {error.start})", code="MALFORMED_REQUEST"
        ) from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as error:
        raise ApiError(
            400,
            f"the request body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}",
            code="MALFORMED_REQUEST",
        ) from None
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply", code="MALFORMED_REQUEST") from None
    try:
        # A \u escape of a lone surrogate parses, but is not Unicode and cannot be stored or echoed.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            400,
            "the request body escapes a lone UTF-16 surrogate, which is not valid Unicode",
            code="MALFORMED_REQUEST",
        ) from None
    return value


def _refuse_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not valid JSON", name, 0)


@dataclass(frozen=True)
class FieldType:
    """A writable field's JSON type."""

    kind: str  # "string", "integer", "boolean", "string list" or "json text or array"
    nullable: bool = False
    max_length: int | None = None
    choices: tuple[str, ...] = ()
    """For a string: the only values it may take."""

    def check(self, name: str, value: Any) -> None:
        if self.choices:
            self._check_choice(name, value)
            return
        if value is None:
            if not self.nullable:
                raise ApiError.field(name, f"must be a {self.kind}, not null")
            return
        ok = {
            "string": isinstance(value, str),
            "integer": isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT64_MAX,
            "boolean": isinstance(value, bool),
            "string list": isinstance(value, list) and all(isinstance(item, str) for item in value),
            "json text or array": isinstance(value, str | list),
        }[self.kind]
        if not ok:
            expected = {
                "integer": "a non-negative integer",
                "string list": "an array of strings",
                "json text or array": "an array, or a string holding one as JSON",
            }.get(self.kind, f"a {self.kind}")
            raise ApiError.field(
                name, f"must be {expected}{' or null' if self.nullable else ''}, got {_json_type(value)}"
            )
        if isinstance(value, str) and "\x00" in value:
            raise ApiError.field(name, "must not contain NUL characters")
        if isinstance(value, str) and self.max_length is not None and len(value) > self.max_length:
            raise ApiError.field(name, f"must be at most {self.max_length} characters, got {len(value)}")

    def _check_choice(self, name: str, value: Any) -> None:
        # A wrong type gets the same answer as a wrong word: what the field may be.
        if (value is None and self.nullable) or (isinstance(value, str) and value in self.choices):
            return
        allowed = ", ".join(repr(choice) for choice in self.choices)
        got = repr(value) if isinstance(value, str) else _json_type(value)
        raise ApiError.field(name, f"must be one of {allowed}{' or null' if self.nullable else ''}, got {got}")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


@dataclass(frozen=True)
class BodySpec:
    """What a create or update body may hold."""

    writable: Mapping[str, FieldType]
    read_only: frozenset[str] = field(default_factory=frozenset)

    def decode(self, body: Any, *, current: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The writable fields sent, type-checked.

        Read-only fields are ignored when they repeat the stored value (a
        read-modify-write client sends the whole object back) and refused
        when they try to change it; on create there is no stored value, so
        only values fixed by the path (given in `current`) may be repeated.
        """
        if not isinstance(body, dict):
            raise ApiError(
                400, f"the request body must be a JSON object, got {_json_type(body)}", code="MALFORMED_REQUEST"
            )
        values: dict[str, Any] = {}
        for name, value in body.items():
            if name in self.writable:
                self.writable[name].check(name, value)
                values[name] = value
            elif name in self.read_only:
                if current is None or name not in current:
                    raise ApiError(
                        400, f"{name}: is read-only", code="READ_ONLY_FIELD", errors=[(name, "is read-only")]
                    )
                if current[name] != value:
                    raise ApiError(
                        400,
                        f"{name}: is read-only and cannot be changed",
                        code="READ_ONLY_FIELD",
                        errors=[(name, "is read-only and cannot be changed")],
                    )
            else:
                allowed = ", ".join(sorted(self.writable))
                raise ApiError.field(name, f"is not a field of this resource; writable fields: {allowed}")
        return values
