"""Running a simulated multi-node cluster (ray.cluster_utils.Cluster) in a script
of its own, so it never meets the session's local Ray: the script prints one line
`RESULT {json}`, which `run_cluster_script` returns with the output."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cluster_script(script: str, args: list[str], timeout_s: float, what: str) -> tuple[dict, str]:
    """Run tests/<script> ARGS with RAY_TMPDIR in a short folder of its own; return its
    RESULT and its output. Fail the test (with the output) if it does not finish in
    time or prints no RESULT."""
    ray_tmp = tempfile.mkdtemp(prefix="rv-", dir="/tmp")  # short: Ray's socket paths
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, PYTHONUNBUFFERED="1")  # this cluster's address file stays in ray_tmp
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / script), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script's own process group: its Ray nodes go too
        out, _ = proc.communicate(timeout=30)
        pytest.fail(f"{what} did not finish within {timeout_s:g} s:\n" + out[-4000:])
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, out[-4000:]
    return json.loads(lines[-1][len("RESULT "):]), out
