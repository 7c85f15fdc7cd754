"""Live progress: one line per dataset (rows done/total, rows/s, ETA, errors), drawn
as bars in a terminal (tested in a pseudo-terminal) and as plain periodic lines
elsewhere; Ray's own progress lines only with -v."""
from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pyarrow as pa

from raveval.stream.progress import Progress

ROOT = Path(__file__).resolve().parents[1]


def batch(dataset: str, n: int, errors: int = 0) -> pa.Table:
    return pa.table({"dataset": [dataset] * n, "error": pa.array(["boom"] * errors + [None] * (n - errors), pa.string())})


def test_plain_lines_per_dataset():
    said = []
    p = Progress("model", {"mmlu": 10, "gsm8k": 4}, log=said.append, every_s=0.0, tty=False)
    p.update(batch("mmlu", 6, errors=1))
    time.sleep(0.6)
    p.update(batch("gsm8k", 4))
    p.close()
    last = said[-2:]
    assert last[0].startswith("model mmlu: 6/10 rows (60%), ") and last[0].endswith("ETA " + last[0].split("ETA ")[1])
    assert last[0].endswith(", 1 errors") and "rows/s" in last[0]
    assert last[1].startswith("model gsm8k: 4/4 rows (100%), ") and "ETA 0s, 0 errors" in last[1]


def run_in_pty(args: list[str], timeout_s: float = 300) -> str:
    """The command with a terminal as stdout and stderr; everything it wrote."""
    main, sub = pty.openpty()
    fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 40 rows, 120 columns
    proc = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=sub, stderr=sub, close_fds=True,
                            env={**os.environ, "COLUMNS": "120", "TERM": "xterm"})
    os.close(sub)
    out, deadline = b"", time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        os.close(main)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    return out.decode(errors="replace")


def test_bars_in_a_terminal_and_no_ray_progress(tmp_path):
    out = run_in_pty([sys.executable, "-m", "raveval", "run", "demo", f"work_dir={tmp_path}", "--no-subjects"])
    assert "model demo_mmlu_ll" in out and "24/24" in out and "model demo_gsm8k_gen" in out and "12/12" in out
    assert "\r" in out  # redrawn in place
    assert "Running Dataset" not in out and "Total Progress" not in out  # Ray Data's own lines are off


def test_verbose_brings_rays_lines_back(tmp_path):
    out = subprocess.run([sys.executable, "-m", "raveval", "run", "demo", f"work_dir={tmp_path}", "-v",
                          "datasets=[demo_mmlu_ll]"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Running Dataset" in out.stdout + out.stderr
    assert "model demo_mmlu_ll: 24/24 rows (100%)" in out.stdout  # not a terminal: plain lines
