"""Every replica busy on a multi-node cluster: three replicas of the tiny model on
three worker nodes of a simulated cluster (ray.cluster_utils, in a subprocess:
tests/spread_cluster.py) each compute rows, as run.json and the predictions say."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from cluster_script import run_cluster_script

ROOT = Path(__file__).resolve().parents[1]
ROWS = 240


def test_replicas_on_three_nodes_all_serve_rows(tmp_path):
    rep, _ = run_cluster_script("spread_cluster.py", [str(tmp_path), str(ROWS)], 300, "multi-node run")
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
