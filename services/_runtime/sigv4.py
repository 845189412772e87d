"""Checking AWS Signature Version 4 on requests an S3 server receives.

Both forms S3 clients send are understood: the `Authorization` header and the
presigned query string. Only the signature is checked here; what the key may
do is the caller's business.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
# Payloads whose bytes the header's signature does not cover; S3 accepts them as they are.
UNHASHED_PAYLOADS = frozenset(
    {
        UNSIGNED_PAYLOAD,
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
    }
)
# S3 refuses a header-signed request dated further than this from its clock.
MAX_CLOCK_SKEW = timedelta(minutes=15)
MAX_PRESIGNED_SECONDS = 7 * 24 * 3600
_HEX_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+),\s*SignedHeaders=(?P<headers>[^,\s]+),"
    r"\s*Signature=(?P<signature>[0-9a-f]{64})\s*$"
)


class SignatureError(Exception):
    """A request S3 would refuse, with S3's error code and HTTP status."""

    def __init__(self, code: str, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Request:
    """What of an HTTP request the signature covers."""

    method: str
    raw_path: str
    """The path exactly as sent, still percent-encoded."""
    raw_query: str
    headers: Mapping[str, str]
    """Lower-cased names."""


@dataclass(frozen=True)
class Verified:
    access_key: str
    payload_sha256: str | None
    """The body's SHA-256 the signature vouches for; None when it covers no body bytes."""


def verify(request: Request, secret_of: Callable[[str], str | None], now: datetime | None = None) -> Verified:
    """The request's access key, once its signature is found right; else SignatureError."""
    now = now or datetime.now(UTC)
    query = _query_pairs(request.raw_query)
    authorization = request.headers.get("authorization")
    if authorization is not None:
        return _verify_header(request, authorization, query, secret_of, now)
    if any(name == "X-Amz-Signature" for name, _ in query):
        return _verify_presigned(request, query, secret_of, now)
    if any(name in ("Signature", "AWSAccessKeyId") for name, _ in query):
        raise SignatureError("AccessDenied", "only AWS Signature Version 4 is accepted")
    raise SignatureError("AccessDenied", "Access Denied: the request is not signed")


def _verify_header(
    request: Request,
    authorization: str,
    query: list[tuple[str, str]],
    secret_of: Callable[[str], str | None],
    now: datetime,
) -> Verified:
    if not authorization.startswith(ALGORITHM):
        raise SignatureError("AccessDenied", "only AWS Signature Version 4 is accepted")
    match = _AUTHORIZATION.match(authorization)
    if match is None:
        raise SignatureError("AuthorizationHeaderMalformed", "the authorization header is malformed", 400)
    access_key, scope = _credential(match["credential"])
    payload = request.headers.get("x-amz-content-sha256")
    if payload is None:
        raise SignatureError("InvalidRequest", "Missing required header for this request: x-amz-content-sha256", 400)
    if payload not in UNHASHED_PAYLOADS and not _HEX_SHA256.match(payload):
        raise SignatureError("InvalidArgument", "x-amz-content-sha256 must be UNSIGNED-PAYLOAD or a SHA-256", 400)
    stamp = request.headers.get("x-amz-date") or ""
    signed_at = _timestamp(stamp, scope)
    if abs(now - signed_at) > MAX_CLOCK_SKEW:
        raise SignatureError(
            "RequestTimeTooSkewed", "The difference between the request time and the current time is too large."
        )
    secret = _secret(access_key, secret_of)
    canonical = _canonical_request(request, query, match["headers"], payload)
    _compare(secret, stamp, scope, canonical, match["signature"])
    return Verified(access_key, payload if _HEX_SHA256.match(payload) else None)


def _verify_presigned(
    request: Request, query: list[tuple[str, str]], secret_of: Callable[[str], str | None], now: datetime
) -> Verified:
    params = dict(query)
    if params.get("X-Amz-Algorithm") != ALGORITHM:
        raise SignatureError("AccessDenied", "only AWS Signature Version 4 is accepted")
    missing = [
        name
        for name in ("X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders")
        if not params.get(name)
    ]
    if missing:
        raise SignatureError("AuthorizationQueryParametersError", f"the presigned URL lacks {', '.join(missing)}", 400)
    access_key, scope = _credential(params["X-Amz-Credential"])
    stamp = params["X-Amz-Date"]
    signed_at = _timestamp(stamp, scope)
    try:
        expires = int(params["X-Amz-Expires"])
    except ValueError:
        raise SignatureError("AuthorizationQueryParametersError", "X-Amz-Expires must be a number", 400) from None
    if not 0 < expires <= MAX_PRESIGNED_SECONDS:
        raise SignatureError(
            "AuthorizationQueryParametersError", f"X-Amz-Expires must be 1 to {MAX_PRESIGNED_SECONDS}", 400
        )
    if now > signed_at + timedelta(seconds=expires) or signed_at - now > MAX_CLOCK_SKEW:
        raise SignatureError("AccessDenied", "Request has expired")
    secret = _secret(access_key, secret_of)
    payload = params.get("X-Amz-Content-Sha256", UNSIGNED_PAYLOAD)
    unsigned = [(name, value) for name, value in query if name != "X-Amz-Signature"]
    canonical = _canonical_request(request, unsigned, params["X-Amz-SignedHeaders"], payload)
    _compare(secret, stamp, scope, canonical, params["X-Amz-Signature"])
    return Verified(access_key, payload if _HEX_SHA256.match(payload) else None)


def _credential(credential: str) -> tuple[str, list[str]]:
    """(access key, [date, region, service]) of `AKID/date/region/s3/aws4_request`."""
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not parts[0]:
        raise SignatureError("AuthorizationHeaderMalformed", "the credential is malformed", 400)
    if parts[3] != "s3":
        raise SignatureError("AuthorizationHeaderMalformed", f"this server speaks only s3, not {parts[3]!r}", 400)
    return parts[0], parts[1:4]


def _timestamp(stamp: str, scope: list[str]) -> datetime:
    try:
        signed_at = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise SignatureError("AccessDenied", "the request's X-Amz-Date is missing or malformed") from None
    if stamp[:8] != scope[0]:
        raise SignatureError("AuthorizationHeaderMalformed", "the credential's date is not the request's", 400)
    return signed_at


def _secret(access_key: str, secret_of: Callable[[str], str | None]) -> str:
    secret = secret_of(access_key)
    if secret is None:
        raise SignatureError("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records.")
    return secret


def _compare(secret: str, stamp: str, scope: list[str], canonical: str, signature: str) -> None:
    to_sign = "\n".join(
        (ALGORITHM, stamp, "/".join((*scope, "aws4_request")), hashlib.sha256(canonical.encode()).hexdigest())
    )
    key = ("AWS4" + secret).encode()
    for part in (*scope, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise SignatureError(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        )


def _canonical_request(request: Request, query: list[tuple[str, str]], signed: str, payload: str) -> str:
    names = signed.split(";")
    if "host" not in names or names != sorted(names):
        raise SignatureError("AccessDenied", "the signed headers must be sorted and include host")
    lines = []
    for name in names:
        value = request.headers.get(name)
        if value is None:
            raise SignatureError("AccessDenied", f"the signed header {name!r} is not in the request")
        lines.append(f"{name}:{' '.join(value.split())}\n")
    encoded = sorted((_encode(name), _encode(value)) for name, value in query)
    return "\n".join(
        (
            request.method,
            # S3 signs the path as sent, without normalising it.
            request.raw_path or "/",
            "&".join(f"{name}={value}" for name, value in encoded),
            "".join(lines),
            signed,
            payload,
        )
    )


def _query_pairs(raw_query: str) -> list[tuple[str, str]]:
    pairs = []
    for item in raw_query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        # A literal '+' is a plus to S3, not a space.
        pairs.append((unquote(name), unquote(value)))
    return pairs


def _encode(text: str) -> str:
    return quote(text, safe="-_.~")


def query_names(raw_query: str) -> dict[str, str]:
    """The query's parameters by name (the last one of a repeated name)."""
    return dict(_query_pairs(raw_query))
