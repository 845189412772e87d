"""A serving process's collector after start: requests in flight no longer set it off; garbage cycles still do."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# Run in a process of its own: the collector's settings are the whole interpreter's.
_SCRIPT = textwrap.dedent(
    """
    import gc, json
    from services._runtime.server import started_for_good

    stops = []
    gc.callbacks.append(lambda phase, info: phase == "stop" and stops.append(info["collected"]))

    def serve(rounds):
        # 40 requests in flight, each holding 100 containers, answered and dropped together.
        for _ in range(rounds):
            in_flight = [[{"value": i} for i in range(100)] for _ in range(40)]
            del in_flight

    def make_cycles(count):
        for _ in range(count):
            cycle = []
            cycle.append(cycle)

    serve(200)
    before = len(stops)
    started_for_good()
    del stops[:]
    serve(200)
    while_serving = len(stops)
    make_cycles(50_000)
    print(json.dumps({"before": before, "while_serving": while_serving, "cycles_collected": sum(stops)}))
    """
)


def test_requests_in_flight_no_longer_set_off_collections_but_garbage_cycles_are_still_collected() -> None:
    result = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True, timeout=60)
    counts = json.loads(result.stdout)
    # Python's defaults collect for every few hundred objects that requests hold at once.
    assert counts["before"] > 100
    assert counts["while_serving"] == 0
    assert counts["cycles_collected"] >= 40_000
