"""How soon the web console is usable after it starts loading, in a real headless Chromium.

Starts `dcp up` on embedded defaults in a fresh data dir, makes one DCP service with a
table of five attributes, then opens the console in fresh browser contexts (empty cache,
as on a first visit) and measures, from the start of navigation:

- sign-in: until the token field is on screen and focused (a signed-out tab);
- dashboard: until the Attributes dashboard of the service shows its tables (a tab
  already signed in), the first screen people work in;
- baseline: until `GET /openapi.json` has loaded as a page from the same gateway, so the
  figures read as multiples of one round trip to this server on this machine.

It prints the median and the slowest of `--runs` loads of each, and the bytes of
JavaScript the console ships. Run: python -m bench.console_load [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, async_playwright

from console import STATIC_DIR

DCP = str(Path(sys.executable).parent / "dcp")


def _call(base: str, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        base + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Token": token, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read() or b"null")


def _start(data_dir: Path) -> tuple[subprocess.Popen[str], str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCP_")}
    env.update({"DCP_LOG_LEVEL": "WARNING", "DCP_S3_EMBEDDED_PORT": "0"})
    process = subprocess.Popen(
        [DCP, "up", "--data-dir", str(data_dir), "--http-port", "0", "--grpc-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    base = token = ""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (base and token):
        line = process.stdout.readline()
        if not line:
            break
        if found := re.search(r"REST: (http://[\d.]+:\d+)/", line):
            base = found.group(1)
        if found := re.match(r"^\s+([0-9a-f]{64}:\d+)\s*$", line):
            token = found.group(1)
    if not (base and token):
        process.kill()
        raise SystemExit("dcp up did not start")
    return process, base, token


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return os.environ.get("DCP_TEST_CHROMIUM", found)
    raise SystemExit("needs Chromium (apt-get install chromium) or DCP_TEST_CHROMIUM")


async def _timed(browser: Browser, url: str, ready: str, token: str | None) -> float:
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    if token is not None:
        await context.add_init_script(f"sessionStorage.setItem('open-dcp.token', {json.dumps(token)})")
    page: Page = await context.new_page()
    started = time.perf_counter()
    await page.goto(url, wait_until="commit")
    await page.wait_for_selector(ready, state="visible")
    elapsed = time.perf_counter() - started
    await context.close()
    return elapsed * 1000


def _line(name: str, samples: list[float], baseline: float) -> str:
    median = statistics.median(samples)
    return (
        f"{name:<10} median {median:7.1f} ms   slowest {max(samples):7.1f} ms"
        f"   {median / baseline:5.1f}x the baseline's median"
    )


async def _measure(base: str, token: str, service_id: int, runs: int) -> None:
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=_chromium(), args=args)
        targets = {
            "baseline": (f"{base}/openapi.json", "body", None),
            "sign-in": (f"{base}/console/", "input[name=token]:focus", None),
            "dashboard": (f"{base}/console/#/services/{service_id}/tables", "main section h2 >> text=crm", token),
        }
        # One warm-up of each, so the server's first-request costs are not counted.
        for url, ready, with_token in targets.values():
            await _timed(browser, url, ready, with_token)
        samples: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(runs):
            for name, (url, ready, with_token) in targets.items():
                samples[name].append(await _timed(browser, url, ready, with_token))
        await browser.close()
    baseline = statistics.median(samples["baseline"])
    for name, values in samples.items():
        print(_line(name, values, baseline))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    options = parser.parse_args()
    scripts = sorted(STATIC_DIR.rglob("*.js"))
    print(f"JavaScript shipped: {sum(p.stat().st_size for p in scripts) / 1024:.1f} KB in {len(scripts)} files")
    with tempfile.TemporaryDirectory(prefix="dcp-console-bench-") as data_dir:
        process, base, token = _start(Path(data_dir))
        try:
            service = _call(base, token, "POST", "/experiment/v1/dcp_services", {"name": "bench"})
            table = _call(
                base,
                token,
                "POST",
                f"/experiment/v1/dcp_services/{service['id']}/dcp_datasources",
                {"name": "crm", "keyfield_locator_type": "cookie", "keyfield_locator_name": "crm_id"},
            )
            for index in range(5):
                _call(
                    base,
                    token,
                    "POST",
                    f"/experiment/v1/dcp_datasources/{table['id']}/dcp_datasource_attributes",
                    {"name": f"a{index}", "datatype": "long"},
                )
            asyncio.run(_measure(base, token, service["id"], options.runs))
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
