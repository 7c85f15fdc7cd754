"""The run's metrics on Ray's Prometheus endpoint move while it streams (rows, a
replica's rows in flight; a judge endpoint's requests, 429s and limiter waits);
--dashboard starts a local Ray's dashboard and prints its URL."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from fake_judge import FakeChatServer

ROOT = Path(__file__).resolve().parents[1]
# Ray exports metrics every 10 s by default: every second, so a short run shows them move.
FAST_EXPORT = {"RAY_metrics_report_interval_ms": "1000"}


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of metric `name` over the series of a Prometheus scrape with these labels (0 if none)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def rows_metric(text: str, dataset: str) -> float:
    """raveval_rows of the model stage for `dataset` in a Prometheus scrape (0 if absent)."""
    return metric_sum(text, "ray_raveval_rows_total", dataset=dataset, stage="model")


def scrape_during(args: list[str], watch, cwd=ROOT, timeout_s: float = 240) -> tuple[int, str]:
    """Run `raveval run ARGS`; once it prints its metrics endpoint, pass every scrape of
    it to `watch(text) -> bool` until that returns True or the run ends. Returns (exit status, output)."""
    proc = subprocess.Popen([sys.executable, "-m", "raveval", "run", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **FAST_EXPORT})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + timeout_s
        url = None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            url = next((m.group(1) for ln in list(lines) if (m := re.match(r"metrics \(Prometheus\): (\S+)", ln))), None)
            time.sleep(0.2)
        assert url, "".join(lines)[-3000:]
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                text = urllib.request.urlopen(url, timeout=5).read().decode()
            except OSError:
                text = ""
            if watch(text):
                break
            time.sleep(0.5)
        proc.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        reader.join(timeout=10)
    return proc.returncode, "".join(lines)


def test_counters_move_during_a_run_and_the_dashboard_url_is_printed(tmp_path):
    # A slow engine (1 s a call, one row a call, 2 calls in flight): 24 rows take ~12 s.
    args = ["demo", "--dashboard", "model=instant", "++model.delay_s=1", "datasets=[demo_mmlu_ll]",
            "model_stream.batch_rows=1", "model_stream.callers=1", "model_stream.calls_per_caller=2",
            f"work_dir={tmp_path}"]
    seen: list[float] = []
    in_flight: list[float] = []

    def watch(text: str) -> bool:
        value = rows_metric(text, "demo_mmlu_ll")
        if value and (not seen or value != seen[-1]):
            seen.append(value)
        in_flight.append(metric_sum(text, "ray_raveval_replica_rows_in_flight", model="instant"))
        return len(set(seen)) >= 2 and max(in_flight) > 0

    code, out = scrape_during(args, watch)
    assert code == 0, out[-3000:]
    assert re.search(r"^dashboard: http://127\.0\.0\.1:\d+$", out, re.M), out[:3000]
    assert len(seen) >= 2 and seen == sorted(seen) and 0 < seen[0] < 24, seen  # counted while rows came back
    # The replica had rows in flight (at most the 2 calls of one row each the caller sends).
    assert 0 < max(in_flight) <= 2, in_flight


def write_judged_run(tmp: Path, base_url: str) -> Path:
    """A run config: the instant model and an AlpacaEval-style pairwise dataset of 8 rows
    (16 judgements, both orders), judged by endpoint `t` at `base_url`, 120 requests a minute."""
    rows = [{"instruction": f"Write {i + 1} words about rivers.", "output": "water " * (i + 1), "generator": "ref",
             "dataset": "rivers"} for i in range(8)]
    (tmp / "alpaca.json").write_text(json.dumps(rows))
    path = tmp / "judged_run.yaml"
    path.write_text(f"""defaults:
  - base
  - model: instant
  - _self_
judges:
  t: {{base_url: "{base_url}", model: judge, requests_per_minute: 120, max_concurrent: 4,
       retry: {{max_retries: 8, backoff_s: 0.05}}}}
datasets:
  alpaca:
    loader: alpacaeval
    path: {tmp}/alpaca.json
    mode: gen
    prompt: {{format: chat}}
    generation: {{max_new_tokens: 8}}
    judge: {{endpoint: t, mode: pairwise, max_tokens: 4}}
judge_stream: {{batch_rows: 4, callers: 1, calls_per_caller: 2}}
work_dir: {tmp}/work
""")
    return path


def test_judge_429s_and_limiter_waits_are_counted_during_a_run(tmp_path):
    """A judge that answers a quarter of its requests with 429: while the run judges,
    the endpoint's request, 429 and limiter-wait counters rise on the metrics endpoint."""
    seen: list[tuple[float, float, float]] = []

    def watch(text: str) -> bool:
        tags = {"endpoint": "t", "stage": "judge", "dataset": "alpaca"}
        now = (metric_sum(text, "ray_raveval_endpoint_requests_total", **tags),
               metric_sum(text, "ray_raveval_endpoint_429s_total", **tags),
               metric_sum(text, "ray_raveval_limiter_wait_seconds_total", **tags))
        if any(now) and (not seen or now != seen[-1]):
            seen.append(now)
        return False  # watch the whole run

    with FakeChatServer(fault_rate=0.25, fault_kinds=("429",), retry_after_s=0.2, seed=3, models=["judge"]) as srv:
        code, out = scrape_during([str(write_judged_run(tmp_path, srv.base_url))], watch)
        outcomes = srv.outcomes()
    assert code == 0, out[-3000:]
    assert outcomes["429"] > 0 and outcomes["ok"] == 16, outcomes
    assert len(seen) >= 2, seen
    requests, throttled, waited = zip(*seen)
    # Each rose while the run judged (the run ends before a last export, so the totals may be short).
    assert list(requests) == sorted(requests) and requests[-1] > requests[0], seen
    assert list(throttled) == sorted(throttled) and 0 < throttled[-1] <= outcomes["429"], seen
    # 120 requests a minute: every request after the first waits ~0.5 s for the rate (and 429 pauses add up).
    assert list(waited) == sorted(waited) and waited[-1] > 1.0, seen


def test_grafana_dashboard_shows_every_metric():
    dash = json.loads((ROOT / "scripts" / "grafana" / "raveval.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    src = "".join((ROOT / "raveval" / f).read_text() for f in ("stream/metrics.py", "http/metrics.py",
                                                                "serving/replica.py"))
    names = re.findall(r'"(raveval_[a-z0-9_]+)"', src)
    assert {"raveval_endpoint_429s", "raveval_limiter_wait_seconds", "raveval_replica_rows_in_flight"} <= set(names)
    assert names and all(n in exprs for n in names), (names, exprs)
