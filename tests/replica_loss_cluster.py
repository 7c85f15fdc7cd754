"""Helpers for tests/test_replica_loss.py, and the node-loss run it starts in a
subprocess (a simulated multi-node Ray must not meet the session's local Ray).

As a script: `python tests/replica_loss_cluster.py TMP_DIR ROWS`: a head (1 CPU,
for Ray Data) and three worker nodes (2 CPUs each) of `ray.cluster_utils.Cluster`;
the tiny model with 2 replicas of 2 CPUs each, so replicas land only on workers;
once predictions are on disk, the worker node of one replica is removed. Prints
one line `RESULT {json}` for the test to check. Run it with RAY_TMPDIR set to a
short folder of its own, so no other Ray on the machine finds this cluster.
"""
from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq


def write_synth_run(tmp: Path, n_rows: int) -> Path:
    """A run config (tiny model, one generic multiple-choice dataset of `n_rows`
    rows scored by log-likelihood) in `tmp`; returns its path."""
    rows = [{"question": f"Item {i}: which word is closest in meaning to 'example number {i}'?",
             "choices": [f"alpha {i}", f"beta {i}", f"gamma {i}", f"delta {i}"], "gold": f"alpha {i}"}
            for i in range(n_rows)]
    return write_generic_run(tmp, [json.dumps(r) for r in rows], "synth")


def write_generic_run(tmp: Path, lines: list[str], name: str) -> Path:
    """`tmp/<name>.jsonl` holding `lines`, and a run config (tiny model, that file as a
    generic multiple-choice dataset `name` in ll mode, work_dir tmp/work); returns its path."""
    (tmp / f"{name}.jsonl").write_text("".join(ln + "\n" for ln in lines))
    path = tmp / f"{name}_run.yaml"
    path.write_text(f"""defaults:
  - base
  - model: tiny_hf
  - _self_
datasets:
  {name}:
    loader: generic
    path: {tmp}/{name}.jsonl
    mode: ll
    fields: {{choices: choices}}
work_dir: {tmp}/work
""")
    return path


def prediction_keys(work_dir: str | Path) -> tuple[Counter, int]:
    """(how often each key was written, error rows), over every part file
    as it is on disk (Store.read keeps only the newest row of a key)."""
    keys: Counter = Counter()
    errors = 0
    for part in sorted((Path(work_dir) / "predictions").glob("part-*.parquet")):
        t = pq.read_table(part, columns=["key", "error"]).to_pylist()
        keys.update(r["key"] for r in t)
        errors += sum(r["error"] is not None for r in t)
    return keys, errors


def wait_for_predictions(work_dir: str | Path, timeout_s: float) -> bool:
    """Wait (bounded) until at least one prediction part is on disk."""
    deadline = time.monotonic() + timeout_s
    pred = Path(work_dir) / "predictions"
    while time.monotonic() < deadline:
        if pred.is_dir() and any(pred.glob("part-*.parquet")):
            return True
        time.sleep(0.05)
    return False


def replica_actors(app_prefix: str = "raveval-tiny-llama") -> list[dict]:
    """The live Serve replica actors of the apps named `app_prefix...` (a run's
    app is `raveval-<run id>`, the run id starting with the model's name), from
    the GCS (no dashboard needed): dicts with name, namespace, node_id."""
    import ray

    out = []
    for a in ray._private.state.actors().values():
        name = a.get("Name") or ""
        if a.get("State") == "ALIVE" and name.startswith(f"SERVE_REPLICA::{app_prefix}"):
            out.append({"name": name, "namespace": "serve", "node_id": a["Address"]["NodeID"]})
    return out


def main(tmp: Path, n_rows: int) -> None:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from raveval.run.config import load_config
    from raveval.run.evaluate import run, shutdown

    # Node death noticed within a few seconds (the default takes ~30 s).
    fast = {"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000,
            "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                           "_system_config": fast})
    workers = [cluster.add_node(num_cpus=2) for _ in range(3)]
    cluster.wait_for_nodes(timeout=120)
    report: dict = {"removed": None, "replica_nodes": None, "head": cluster.head_node.node_id}
    try:
        ray.init(address=cluster.address)
        serve.start(proxy_location="Disabled", logging_config={"enable_access_log": False})
        cfg = load_config(str(write_synth_run(tmp, n_rows)),
                          [f"ray_address={cluster.address}", "model.replicas=2", "model.num_cpus=2",
                           "model_stream.batch_rows=16"])

        def remove_a_replica_node():
            if not wait_for_predictions(cfg.work_dir, 300):
                report["removed"] = "no predictions within 300 s"
                return
            reps = replica_actors()
            report["replica_nodes"] = sorted({r["node_id"] for r in reps})
            node = next((w for w in workers if w.node_id in report["replica_nodes"]), None)
            if node is None:
                report["removed"] = f"no worker node hosts a replica: {reps}"
                return
            report["rows_before"] = sum(prediction_keys(cfg.work_dir)[0].values())
            report["sink_nodes"] = [a["Address"]["NodeID"] for a in ray._private.state.actors().values()
                                    if a.get("State") == "ALIVE" and a.get("ActorClassName") == "Sink"]
            cluster.remove_node(node)
            report["removed"] = node.node_id

        killer = threading.Thread(target=remove_a_replica_node, daemon=True)
        killer.start()
        t0 = time.monotonic()
        result = run(cfg, log=lambda *a: print(*a, flush=True))
        killer.join(timeout=60)
        keys, errors = prediction_keys(cfg.work_dir)
        report.update(wall_s=round(time.monotonic() - t0, 1), planned=sorted(r.key for r in result.plan.requests),
                      written=dict(keys), errors=errors, failed=result.failed)
        shutdown(cfg)
    finally:
        print("RESULT " + json.dumps(report), flush=True)
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
