"""What `/metrics` of a `dcp up` on several processes shows: the sums over its serving processes."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families

from services._runtime import metrics

ROUTE = "/experiment/v1/tests/platform-counts"


def _value(counts: metrics.PlatformCounts, sample: str, labels: dict[str, str]) -> float | None:
    for family in text_string_to_metric_families(counts.exposition().decode()):
        for found in family.samples:
            if found.name == sample and found.labels == labels:
                return float(found.value)
    return None


def _replica_counts(requests: float, pool_size: float) -> metrics.Families:
    """What a replica sends, as it arrives: through JSON."""
    labels = {"method": "GET", "route": ROUTE, "status": "200"}
    sent = {
        "http_server_requests": ("counter", [("http_server_requests_total", labels, requests)]),
        "dcp_db_pool_size": ("gauge", [("dcp_db_pool_size", {}, pool_size)]),
        "process_start_time_seconds": ("gauge", [("process_start_time_seconds", {}, 1.0)]),
    }
    return metrics.families_from(json.loads(json.dumps(sent)))


def test_the_platform_counts_are_this_process_and_every_other_summed() -> None:
    counts = metrics.PlatformCounts()
    labels = {"method": "GET", "route": ROUTE, "status": "200"}
    own = metrics.HTTP_REQUESTS.labels("GET", ROUTE, "200")
    own.inc(2)
    own_pool = _value(counts, "dcp_db_pool_size", {}) or 0.0
    own_start = _value(counts, "process_start_time_seconds", {})

    counts.update("serving process 2", 100, _replica_counts(3, pool_size=4))
    counts.update("serving process 3", 200, _replica_counts(5, pool_size=1))
    assert _value(counts, "http_server_requests_total", labels) == 2 + 3 + 5
    assert _value(counts, "dcp_db_pool_size", {}) == own_pool + 4 + 1
    # What describes one process is this one's alone.
    assert _value(counts, "process_start_time_seconds", {}) == own_start

    # A newer report replaces the older one of the same process.
    counts.update("serving process 2", 100, _replica_counts(7, pool_size=4))
    assert _value(counts, "http_server_requests_total", labels) == 2 + 7 + 5

    # A process started again counts from zero; what the one before it counted is kept,
    # so the platform's counters never go back. Its gauges are gone with it.
    counts.update("serving process 2", 101, _replica_counts(1, pool_size=2))
    assert _value(counts, "http_server_requests_total", labels) == 2 + 7 + 5 + 1
    assert _value(counts, "dcp_db_pool_size", {}) == own_pool + 2 + 1


def test_a_replica_sends_what_it_counted_and_nothing_about_its_process() -> None:
    metrics.HTTP_REQUESTS.labels("GET", ROUTE, "201").inc()
    sent = json.loads(json.dumps(metrics.samples()))
    families = metrics.families_from(sent)
    kind, rows = families["http_server_requests"]
    assert kind == "counter"
    assert ("http_server_requests_total", {"method": "GET", "route": ROUTE, "status": "201"}, 1.0) in rows
    assert not [name for name in families if name.startswith(("process_", "python_"))]
