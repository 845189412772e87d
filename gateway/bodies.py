"""Reading v1 JSON request bodies: size, encoding, syntax, field types."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from gateway.errors import ApiError

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


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
    markers_before = _OutOfRange.made
    try:
        if text.startswith("\ufeff"):
            # As json.loads says it.
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        value = _DECODER.decode(text)
    except json.JSONDecodeError as error:
        raise ApiError(
            400,
            f"the request body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}",
            code="MALFORMED_REQUEST",
        ) from None
    except _DuplicateKey as duplicate:
        shown = truncated(duplicate.key)
        raise ApiError(
            400,
            f"the request body repeats the key {shown!r}; each key may appear once in an object",
            code="DUPLICATE_KEY",
            errors=[(shown, "appears more than once in the same object")],
        ) from None
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply", code="MALFORMED_REQUEST") from None
    # The count only says where to look: another thread's parse may have made the marker.
    if _OutOfRange.made != markers_before and (out_of_range := _first_out_of_range(value)) is not None:
        field, problem = out_of_range
        raise ApiError.field(field, problem)
    try:
        # A \u escape of a lone surrogate parses, but is not Unicode and cannot be stored or echoed.
        # Bytes that decoded as UTF-8 hold no surrogate, so only a body with an escape can.
        if b"\\u" in raw:
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


ECHO_LIMIT = 200


def truncated(text: str, limit: int = ECHO_LIMIT) -> str:
    """Input echoed in a message, cut to `limit` characters so an answer never grows with what was sent."""
    return text if len(text) <= limit else text[:limit] + "…"


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Last-one-wins would let two readers of the same body see different values.
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return result


class _OutOfRange:
    """A number that no field takes, kept in place so that its path can be named."""

    made = 0
    """Markers made so far in this process: a parse that made none needs no search for one."""

    def __init__(self, problem: str) -> None:
        _OutOfRange.made += 1
        self.problem = problem


# Every integer of the v1 API is a signed 64-bit one; 20 characters hold any of them.
_MAX_INT_TEXT = 20


# Out-of-range numbers become markers instead of failing the parse (Python's
# int-digit limit) or turning into infinity, so the answer can name their field.
def _parse_int(text: str) -> Any:
    if len(text) <= _MAX_INT_TEXT:
        number = int(text)
        if INT64_MIN <= number <= INT64_MAX:
            return number
    return _OutOfRange("must be an integer that fits in a signed 64-bit integer")


def _parse_float(text: str) -> Any:
    number = float(text)
    if math.isfinite(number):
        return number
    return _OutOfRange("must be a finite number (a double)")


# One decoder for every body: building one per parse cost more than parsing a small body.
_DECODER = json.JSONDecoder(
    parse_constant=_refuse_constant, parse_int=_parse_int, parse_float=_parse_float, object_pairs_hook=_unique_keys
)


def _first_out_of_range(value: Any) -> tuple[str, str] | None:
    """The path of the first marker, as `a.b[2].c`; iterative, so depth costs no stack."""
    pending: list[tuple[str, Any]] = [("", value)]
    while pending:
        path, item = pending.pop()
        if isinstance(item, _OutOfRange):
            return path or "(body)", item.problem
        if isinstance(item, dict):
            named = [(f"{path}.{truncated(key)}" if path else truncated(key), child) for key, child in item.items()]
            pending.extend(reversed(named))
        elif isinstance(item, list):
            pending.extend(reversed([(f"{path}[{index}]", child) for index, child in enumerate(item)]))
    return None


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

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema of what `check` accepts."""
        if self.choices:
            schema: dict[str, Any] = {"type": "string", "enum": list(self.choices)}
        else:
            kinds: dict[str, dict[str, Any]] = {
                # NUL is refused in any string the gateway takes.
                "string": {"type": "string", "pattern": "^[^\\u0000]*$"},
                "integer": {"type": "integer", "format": "int64", "minimum": 0, "maximum": INT64_MAX},
                "boolean": {"type": "boolean"},
                "string list": {"type": "array", "items": {"type": "string"}},
                "json text or array": {
                    "type": ["array", "string"],
                    "pattern": "^[^\\u0000]*$",
                    "description": "An array, or a string holding one as JSON",
                },
            }
            schema = kinds[self.kind]
            if self.max_length is not None:
                schema["maxLength"] = self.max_length
        if self.nullable:
            schema["type"] = [*([schema["type"]] if isinstance(schema["type"], str) else schema["type"]), "null"]
            if "enum" in schema:
                schema["enum"] = [*schema["enum"], None]
        return schema

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

    def json_schema(
        self,
        *,
        required: Iterable[str] = (),
        echoed: Iterable[str] = (),
        refined: Mapping[str, Mapping[str, Any]] | None = None,
        description: str = "",
    ) -> dict[str, Any]:
        """The JSON schema of the bodies `decode` takes.

        `required`: writable fields the service refuses to go without; `echoed`: read-only fields a
        request may repeat with their current value (on create, those fixed by the path); `refined`:
        keywords added to a field's schema for limits the service checks (documented here, checked there).
        """
        properties: dict[str, Any] = {}
        for name, field_type in self.writable.items():
            properties[name] = {**field_type.json_schema(), **(refined or {}).get(name, {})}
        for name in sorted(set(echoed)):
            if name not in self.read_only:
                raise ValueError(f"{name} is not a read-only field of this body")
            properties[name] = {"readOnly": True, "description": "Read-only: accepted only with its current value"}
        missing = [name for name in required if name not in self.writable]
        if missing:
            raise ValueError(f"required fields {missing} are not writable fields of this body")
        schema: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": properties}
        if required:
            schema["required"] = list(required)
        if description:
            schema["description"] = description
        return schema

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
