"""The multi-node run of tests/test_multi_node.py, in a subprocess of its own (a
simulated multi-node Ray must not meet the session's local Ray).

`python tests/spread_cluster.py TMP_DIR ROWS`: a head (1 CPU, for Ray Data) and
three worker nodes (2 CPUs each) of `ray.cluster_utils.Cluster`; the tiny model
with 3 replicas of 2 CPUs each, so each replica has a worker node to itself.
Runs ROWS synthetic rows, then prints one line `RESULT {json}`: the worker node
ids, the run's run.json, and where Ray's own actor table put each replica.
Run it with RAY_TMPDIR set to a short folder of its own.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from replica_loss_cluster import write_synth_run


def replica_nodes(app: str) -> dict[str, str]:
    """replica tag -> node id, for every replica actor the app ever had (alive or not),
    from the GCS: a record of placement that does not come from raveval."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#model#"
    return {a["Name"][len(prefix):]: a["Address"]["NodeID"] for a in ray._private.state.actors().values()
            if (a.get("Name") or "").startswith(prefix)}


def main(tmp: Path, n_rows: int) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from raveval.run.config import load_config
    from raveval.run.evaluate import run, shutdown

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=2) for _ in range(3)]
    cluster.wait_for_nodes(timeout=120)
    report: dict = {"workers": [w.node_id for w in workers], "head": cluster.head_node.node_id}
    try:
        # Small batches: many calls in flight (one caller per replica, 4 calls each), so the
        # router has every replica to choose from; few callers: each is a process to start.
        cfg = load_config(str(write_synth_run(tmp, n_rows)),
                          [f"ray_address={cluster.address}", "model.replicas=3", "model.num_cpus=2",
                           "model_stream.batch_rows=8", "model_stream.callers=1"])
        result = run(cfg, log=lambda *a: print(*a, flush=True))
        record = json.loads((Path(cfg.work_dir) / "run.json").read_text())
        report.update(run=record, planned=len(result.plan.requests), failed=result.failed,
                      actors=replica_nodes(record["serve_app"]))
        shutdown(cfg)
    finally:
        print("RESULT " + json.dumps(report), flush=True)
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
