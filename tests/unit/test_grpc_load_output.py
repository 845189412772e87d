"""Reading grpc_load's report: the gRPC figures the REST bench prints come from these lines."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from bench.grpc_load import GrpcLoadOutputError, parse_grpc_load_output, write_requests
from dcp.profiles.v1 import profiles_service_pb2 as profiles_pb
from dcp.schema.v1 import schema_service_pb2 as schema_pb

# Real reports of bench/grpc_load.c against a grpc.aio server echoing its requests.
ALL_OK = """\
requests: 7725
seconds: 2.000
rate: 3862.50
p50_ms: 3.835
p99_ms: 7.175
non_ok: 0
"""

# The same server answering INVALID_ARGUMENT to every call.
ALL_REFUSED = """\
requests: 0
seconds: 1.000
rate: 0.00
p50_ms: 0.000
p99_ms: 0.000
non_ok: 9234
first_failure: INVALID_ARGUMENT (3): customer_id: must not be empty
"""

# Some calls OK, a few refused (an identity that expired during the run).
SOME_REFUSED = """\
requests: 5120
seconds: 2.000
rate: 2560.00
p50_ms: 5.912
p99_ms: 11.040
non_ok: 37
first_failure: UNAUTHENTICATED (16): the identity assertion has expired
"""


def test_rate_and_percentiles_are_read_in_milliseconds() -> None:
    report = parse_grpc_load_output(ALL_OK)

    assert report.requests == 7725
    assert report.seconds == pytest.approx(2.0)
    assert report.rate == pytest.approx(3862.5)
    assert report.p50_ms == pytest.approx(3.835)
    assert report.p99_ms == pytest.approx(7.175)
    assert report.non_ok == 0
    assert report.failure == ""
    assert not report.failed


def test_calls_that_are_not_ok_fail_the_figure_with_the_first_status() -> None:
    report = parse_grpc_load_output(ALL_REFUSED)

    assert report.requests == 0
    assert report.rate == 0
    assert report.non_ok == 9234
    assert report.failure == "INVALID_ARGUMENT (3): customer_id: must not be empty"
    assert report.failed


def test_a_few_failures_among_counted_calls_still_fail_the_figure() -> None:
    report = parse_grpc_load_output(SOME_REFUSED)

    assert report.requests == 5120
    assert report.non_ok == 37
    assert report.failure.startswith("UNAUTHENTICATED (16)")
    assert report.failed


def test_a_truncated_report_is_refused() -> None:
    truncated = ALL_OK[: ALL_OK.index("p99_ms")]

    with pytest.raises(GrpcLoadOutputError, match="no p99_ms, non_ok"):
        parse_grpc_load_output(truncated)


def test_failures_without_their_status_are_refused() -> None:
    # A count of failures without the first one's status would hide a wrong method or an expired identity.
    without_status = SOME_REFUSED.replace("first_failure: UNAUTHENTICATED (16): the identity assertion has expired", "")

    with pytest.raises(GrpcLoadOutputError, match="first_failure"):
        parse_grpc_load_output(without_status)


def test_an_empty_output_is_refused() -> None:
    with pytest.raises(GrpcLoadOutputError, match="no requests, seconds, rate, p50_ms, p99_ms, non_ok"):
        parse_grpc_load_output("")


def test_requests_are_written_after_their_length_in_order(tmp_path: Path) -> None:
    messages = [
        schema_pb.WhoAmIRequest(),
        profiles_pb.GetProfileRequest(dcp_service_id=1, dcp_datasource_id=2, customer_id="crm1-00000007"),
    ]
    path = tmp_path / "requests.bin"

    assert write_requests(path, messages) == 2

    content = path.read_bytes()
    # An empty message (WhoAmI's) is a zero length and no body.
    assert content[:4] == struct.pack(">I", 0)
    body = messages[1].SerializeToString()
    assert content[4:8] == struct.pack(">I", len(body))
    assert content[8:] == body
