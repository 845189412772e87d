"""Signature checks on requests signed by botocore, as S3 clients sign them."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from services._runtime.sigv4 import Request, SignatureError, verify

KEY, SECRET = "AKDCTESTTESTTEST0000", "s" * 40
URL = "http://127.0.0.1:9000/optimizely-import/dcp/1/7/a%20b%2Bc.csv?x-id=PutObject"


def _secret_of(access_key: str) -> str | None:
    return SECRET if access_key == KEY else None


def _as_received(signed: AWSRequest) -> Request:
    parts = urlsplit(signed.url)
    headers = {name.lower(): str(value) for name, value in signed.headers.items()}
    headers["host"] = parts.netloc
    return Request(signed.method, parts.path, parts.query, headers)


def _header_signed(body: bytes = b"customerId\nc1\n") -> AWSRequest:
    request = AWSRequest(method="PUT", url=URL, data=body)
    S3SigV4Auth(Credentials(KEY, SECRET), "s3", "us-east-1").add_auth(request)
    return request


def _presigned(expires: int = 60) -> AWSRequest:
    request = AWSRequest(method="PUT", url=URL)
    S3SigV4QueryAuth(Credentials(KEY, SECRET), "s3", "us-east-1", expires=expires).add_auth(request)
    return request


def test_a_header_signed_request_names_its_key_and_the_body_it_vouches_for() -> None:
    verified = verify(_as_received(_header_signed()), _secret_of)
    assert verified.access_key == KEY
    assert verified.payload_sha256 == hashlib.sha256(b"customerId\nc1\n").hexdigest()


def test_a_presigned_url_is_good_until_it_expires() -> None:
    received = _as_received(_presigned(expires=60))
    assert verify(received, _secret_of).access_key == KEY
    with pytest.raises(SignatureError) as late:
        verify(received, _secret_of, now=datetime.now(UTC) + timedelta(seconds=120))
    assert (late.value.code, late.value.message) == ("AccessDenied", "Request has expired")


def test_an_old_header_signed_request_is_refused_as_skewed() -> None:
    received = _as_received(_header_signed())
    with pytest.raises(SignatureError) as skewed:
        verify(received, _secret_of, now=datetime.now(UTC) + timedelta(minutes=16))
    assert skewed.value.code == "RequestTimeTooSkewed"


def test_a_changed_path_or_query_breaks_the_signature() -> None:
    received = _as_received(_header_signed())
    for changed in (
        Request(received.method, received.raw_path.replace("/1/", "/2/"), received.raw_query, received.headers),
        Request(received.method, received.raw_path, "x-id=PutObject&prefix=dcp/", received.headers),
        Request("DELETE", received.raw_path, received.raw_query, received.headers),
    ):
        with pytest.raises(SignatureError) as refused:
            verify(changed, _secret_of)
        assert refused.value.code == "SignatureDoesNotMatch"


def test_an_unknown_key_and_an_unsigned_request_are_refused() -> None:
    received = _as_received(_header_signed())
    with pytest.raises(SignatureError) as unknown:
        verify(received, lambda _: None)
    assert unknown.value.code == "InvalidAccessKeyId"
    with pytest.raises(SignatureError) as unsigned:
        verify(Request("GET", "/optimizely-import/dcp/1/a.csv", "", {"host": "127.0.0.1:9000"}), _secret_of)
    assert unsigned.value.code == "AccessDenied"
