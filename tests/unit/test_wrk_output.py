"""Reading wrk's report: the figures the REST bench prints come from these lines."""

from __future__ import annotations

import pytest

from bench.wrk import WrkOutputError, lua_quote, lua_script, parse_wrk_output

# Real `wrk --latency` reports (wrk 4.1.0) with the bench's script, which prints the
# non-2xx line itself: a static file server answering 404 to a tenth of the requests.
SOME_NOT_FOUND = """\
Running 2s test @ http://127.0.0.1:18766/
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    30.49ms  105.82ms 834.34ms   94.52%
    Req/Sec   682.77    447.09     1.89k    66.67%
  Latency Distribution
     50%    4.01ms
     75%    7.92ms
     90%   33.39ms
     99%  661.73ms
  2096 requests in 2.05s, 453.86KB read
  Non-2xx or 3xx responses: 201
Requests/sec:   1021.24
Transfer/sec:    221.14KB
non-2xx responses: 201
"""

# A fast server: latencies in microseconds, no answer outside 2xx.
FAST = """\
Running 2s test @ http://127.0.0.1:18768/
  2 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.56ms    3.75ms  43.79ms   89.98%
    Req/Sec    14.29k    11.18k   33.13k    72.50%
  Latency Distribution
     50%   86.00us
     75%    1.17ms
     90%    5.33ms
     99%   16.20ms
  57012 requests in 2.02s, 2.17MB read
Requests/sec:  28281.18
Transfer/sec:      1.08MB
non-2xx responses: 0
"""

# A server that dropped every connection: no request completed, only socket errors.
NO_ANSWER = """\
Running 2s test @ http://127.0.0.1:18767/
  2 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.00us    0.00us   0.00us    -nan%
    Req/Sec     0.00      0.00     0.00      -nan%
  Latency Distribution
     50%    0.00us
     75%    0.00us
     90%    0.00us
     99%    0.00us
  0 requests in 2.09s, 0.00B read
  Socket errors: connect 0, read 4, write 59522, timeout 0
Requests/sec:      0.00
Transfer/sec:       0.00B
non-2xx responses: 0
"""


def test_rate_and_percentiles_are_read_in_milliseconds() -> None:
    report = parse_wrk_output(SOME_NOT_FOUND)

    assert report.requests == 2096
    assert report.seconds == pytest.approx(2.05)
    assert report.rate == pytest.approx(1021.24)
    assert report.p50_ms == pytest.approx(4.01)
    assert report.p99_ms == pytest.approx(661.73)


def test_answers_outside_2xx_fail_the_figure() -> None:
    report = parse_wrk_output(SOME_NOT_FOUND)

    assert report.non_2xx == 201
    assert report.socket_errors == 0
    assert report.failed


def test_microseconds_are_converted() -> None:
    report = parse_wrk_output(FAST)

    assert report.p50_ms == pytest.approx(0.086)
    assert report.p99_ms == pytest.approx(16.2)
    assert report.rate == pytest.approx(28281.18)
    assert not report.failed


def test_requests_without_an_answer_fail_the_figure() -> None:
    report = parse_wrk_output(NO_ANSWER)

    assert report.requests == 0
    assert report.rate == 0
    assert report.socket_errors == 4 + 59522
    assert report.failed


def test_a_report_without_the_script_count_is_refused() -> None:
    # wrk alone counts only 4xx and 5xx; without the script's count a 3xx would pass unseen.
    without_count = SOME_NOT_FOUND.replace("non-2xx responses: 201", "")

    with pytest.raises(WrkOutputError, match="non-2xx count"):
        parse_wrk_output(without_count)


def test_a_report_without_latency_distribution_is_refused() -> None:
    without_latency = "\n".join(line for line in FAST.splitlines() if "%  " not in line or "Latency" in line)

    with pytest.raises(WrkOutputError, match="99% latency"):
        parse_wrk_output(without_latency)


def test_the_script_sends_the_token_and_a_random_customer() -> None:
    script = lua_script(
        method="POST",
        path=lua_quote("/api/customer_profile/1/2/") + ' .. string.format("crm1-%08d", user)',
        users=250_000,
        token="ab12:3",
        body=lua_quote('{"data": {}}'),
    )

    assert "local users = 250000" in script
    assert '["Authorization"] = "Bearer ab12:3"' in script
    assert '["Content-Type"] = "application/json"' in script
    assert 'wrk.format("POST", "/api/customer_profile/1/2/" .. string.format("crm1-%08d", user), headers,' in script
    assert '"{\\"data\\": {}}"' in script
