"""One budget per endpoint for the whole cluster and across jobs: two drivers (two
jobs) on one real Ray head share the endpoint's limiter actor, which outlives the
first of them; against a fault-injecting server they never exceed its limit
together and reach it. A 429 pauses every caller of the endpoint."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raveval.config.schema import EndpointConfig
from raveval.http.client import ChatClient
from raveval.http.limiter import make_limiter

from fake_judge import FakeChatServer
from ray_head import ray_head as start_head

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def head():
    if not Path("/proc/self/stat").is_file():
        pytest.skip("needs /proc to end the head's processes by PID")
    with start_head() as h:
        yield h


def test_two_drivers_share_one_budget_and_reach_it(head, tmp_path):
    rpm, window, n = 480, 10.0, 80
    with FakeChatServer(requests_per_minute=rpm, window_s=window, latency_s=0.02, fault_rate=0.2,
                        fault_kinds=("500", "drop", "malformed"), seed=5) as srv:
        env = {**head.env, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}", "PYTHONUNBUFFERED": "1"}
        drivers = {tag: subprocess.Popen([sys.executable, str(ROOT / "tests" / "budget_driver.py"), head.address,
                                          srv.base_url, tag, str(n), str(rpm)], cwd=tmp_path, env=env,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                   for tag in ("one", "two")}
        outs = {}
        for tag, p in drivers.items():
            try:
                outs[tag] = p.communicate(timeout=240)[0]
            finally:
                if p.poll() is None:
                    p.kill()
        log = list(srv.log)
    results = {}
    for tag, out in outs.items():
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        assert drivers[tag].returncode == 0 and lines, out[-3000:]
        results[tag] = json.loads(lines[-1][7:])
    assert all(r == {**r, "ok": n, "failed": 0} for r in results.values()), results
    outcomes = {e["outcome"] for e in log}
    assert "limited" not in outcomes, "the server saw more than its limit"
    assert {"500", "drop", "malformed"} & outcomes  # faults were injected, and retried
    times = [e["t"] for e in log]
    assert FakeChatServer.max_in_window(times, window) <= rpm * window / 60
    by = {tag: [e["t"] for e in log if e["body"] and e["body"]["messages"][0]["content"].startswith(tag + " ")]
          for tag in results}
    lo, hi = max(min(ts) for ts in by.values()), min(max(ts) for ts in by.values())
    assert hi - lo >= 5.0, f"the two drivers overlapped for {hi - lo:.1f}s only"
    rate = FakeChatServer.rate_per_min([t for t in times if lo <= t <= hi])
    assert rate >= 0.95 * rpm, f"{rate:.0f}/min together while both sent (limit {rpm})"


def test_a_429_pauses_every_caller_of_the_endpoint():
    """One caller's 429 with Retry-After holds the others too (in-process gate)."""
    with FakeChatServer(fault_rate=1.0, fault_kinds=("429",), retry_after_s=1.0) as srv:
        cfg = EndpointConfig(base_url=srv.base_url, model="judge", max_concurrent=4, timeout_s=5.0,
                             retry={"max_retries": 0})
        limiter = make_limiter(cfg, shared=False)

        async def go():
            client = ChatClient(cfg, limiter)
            try:
                await client.chat([{"role": "user", "content": "first"}], max_tokens=4)
            except Exception:
                pass
            t0 = time.monotonic()
            srv.fault_rate = 0.0
            await client.chat([{"role": "user", "content": "second"}], max_tokens=4)  # a fresh request
            await client.close()
            return time.monotonic() - t0

        held = asyncio.run(go())
    assert held >= 0.9, f"the next request went after {held:.2f}s, inside the advised 1 s pause"
    assert limiter.in_flight.cap == 2.5  # halved from 4 by the 429, then one success: + 1/2
