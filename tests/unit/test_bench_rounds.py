"""The REST bench's rounds: its table shows each figure's median, and a failed round is never hidden."""

from __future__ import annotations

from bench.rest_bench import Measured, checks, medians


def _figure(name: str, rate: float, p99_ms: float, problems: str = "") -> Measured:
    return Measured(name, name, "wrk", rate, p99_ms / 2, p99_ms, problems)


def _round(*, read: float, read_p99: float, floor: float = 1000.0, problems: str = "") -> dict[str, Measured]:
    figures = {
        name: _figure(name, 2000.0, 10.0)
        for name in (
            "REST floor",
            "REST whoami",
            "REST read",
            "REST view",
            "REST evaluate",
            "REST write",
            "gRPC floor",
            "gRPC read",
            "gRPC write",
            "raw upsert",
        )
    }
    figures["REST floor"] = _figure("REST floor", floor, 10.0)
    figures["REST read"] = _figure("REST read", read, read_p99, problems)
    return figures


def test_each_number_is_the_median_of_the_rounds_not_the_best_of_them() -> None:
    rounds = [_round(read=2500, read_p99=8), _round(read=1500, read_p99=30), _round(read=1900, read_p99=12)]
    read = medians(rounds)["REST read"]
    assert (read.rate, read.p50_ms, read.p99_ms) == (1900, 6, 12)
    [throughput] = [c for c in checks(medians(rounds)) if c.what == "REST single-table read"]
    assert throughput.verdict == "MISSED"


def test_a_figure_that_failed_in_any_round_fails_however_good_its_median() -> None:
    rounds = [
        _round(read=2500, read_p99=8),
        _round(read=2600, read_p99=8, problems="3 non-2xx"),
        _round(read=2700, read_p99=8),
    ]
    read = medians(rounds)["REST read"]
    assert read.problems == "round 2: 3 non-2xx"
    [throughput] = [c for c in checks(medians(rounds)) if c.what == "REST single-table read"]
    assert throughput.verdict == "FAILED: round 2: 3 non-2xx"


def test_figures_keep_the_order_they_were_measured_in() -> None:
    rounds = [_round(read=2000, read_p99=10), _round(read=2000, read_p99=10)]
    assert list(medians(rounds)) == list(rounds[0])
