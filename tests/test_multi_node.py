"""Every replica busy on a multi-node cluster: three replicas of the tiny model on
three worker nodes of a simulated cluster (ray.cluster_utils, in a subprocess:
tests/spread_cluster.py) each compute rows, as run.json and the predictions say."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
ROWS = 240


def test_replicas_on_three_nodes_all_serve_rows(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="rv-", dir="/tmp")  # short: Ray's socket paths
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, PYTHONUNBUFFERED="1")  # this cluster's address file stays in ray_tmp
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "spread_cluster.py"), str(tmp_path), str(ROWS)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script's own process group: its Ray nodes go too
        out, _ = proc.communicate(timeout=30)
        pytest.fail("multi-node run did not finish within 300 s:\n" + out[-4000:])
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, out[-4000:]
    rep = json.loads(lines[-1][len("RESULT "):])
    rec = rep["run"]
    assert rec["status"] == "finished" and not rep["failed"], rep

    # One replica per worker node, as run.json says and as Ray's actor table says.
    replicas = rec["replicas"]
    nodes = [r["node_id"] for r in replicas]
    assert len(replicas) == 3 and sorted(nodes) == sorted(rep["workers"]), (replicas, rep["workers"])
    assert {r["replica"]: r["node_id"] for r in replicas} == rep["actors"], rep["actors"]
    # Every replica computed rows, and the counts add up to the run's rows.
    assert all(r["rows"] > 0 for r in replicas), replicas
    assert sum(r["rows"] for r in replicas) == rep["planned"] == ROWS

    # The predictions name the replica of each row, and agree with run.json.
    rows = pq.read_table(tmp_path / "work" / "predictions", columns=["replica", "node_id", "error"]).to_pylist()
    assert len(rows) == ROWS and all(r["error"] is None for r in rows)
    assert Counter((r["node_id"], r["replica"]) for r in rows) == {(r["node_id"], r["replica"]): r["rows"]
                                                                   for r in replicas}
    print("rows per replica:", [r["rows"] for r in replicas])
