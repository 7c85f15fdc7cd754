"""The run's metrics on Ray's Prometheus endpoint move while it streams; --dashboard
starts a local Ray's dashboard and prints its URL."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rows_metric(text: str, dataset: str) -> float:
    """raveval_rows of the model stage for `dataset` in a Prometheus scrape (0 if absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("ray_raveval_rows_total{") and f'dataset="{dataset}"' in line and 'stage="model"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_counters_move_during_a_run_and_the_dashboard_url_is_printed(tmp_path):
    # A slow engine (2 s a call, one row a call, 2 calls in flight): 24 rows take ~24 s.
    args = [sys.executable, "-m", "raveval", "run", "demo", "--dashboard", "model=instant", "++model.delay_s=2",
            "datasets=[demo_mmlu_ll]", "model_stream.batch_rows=1", "model_stream.callers=1",
            "model_stream.calls_per_caller=2", f"work_dir={tmp_path}"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    seen: list[float] = []
    try:
        deadline = time.monotonic() + 240
        url = None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            url = next((m.group(1) for ln in list(lines) if (m := re.match(r"metrics \(Prometheus\): (\S+)", ln))), None)
            time.sleep(0.2)
        assert url, "".join(lines)[-3000:]
        while proc.poll() is None and time.monotonic() < deadline and len(set(seen)) < 2:
            try:
                text = urllib.request.urlopen(url, timeout=5).read().decode()
            except OSError:
                text = ""
            value = rows_metric(text, "demo_mmlu_ll")
            if value and (not seen or value != seen[-1]):
                seen.append(value)
            time.sleep(1)
        proc.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 0, out[-3000:]
    assert re.search(r"^dashboard: http://127\.0\.0\.1:\d+$", out, re.M), out[:3000]
    assert len(seen) >= 2 and seen == sorted(seen) and 0 < seen[0] < 24, seen  # counted while rows came back


def test_grafana_dashboard_shows_every_metric():
    import json

    from raveval.stream.metrics import StreamMetrics  # noqa: F401  (the names below are its metrics)

    dash = json.loads((ROOT / "scripts" / "grafana" / "raveval.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    src = (ROOT / "raveval" / "stream" / "metrics.py").read_text()
    names = re.findall(r'"(raveval_[a-z_]+)"', src)
    assert names and all(n in exprs for n in names), (names, exprs)
