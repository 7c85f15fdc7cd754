"""The run of tests/test_secrets.py on a simulated cluster, in a subprocess of
its own (a multi-node `ray.cluster_utils.Cluster` must not meet the session's
local Ray).

`python tests/secrets_cluster.py TMP BASE_URL` reads the API key from stdin
(never from argv: Ray shows a driver's command line as its job's entrypoint).
The head (1 CPU, dashboard on) and one worker node (2 CPUs) are started before
the key is in this process's environment, so no Ray process has it; then the
key variable is set for the driver only, and a small judged run goes against
BASE_URL: an API model (engine openai, 2 CPUs a replica, so it lands on the
worker) and a judge, both on that endpoint with that key; the judge callers
are placed on the worker too. Prints one line
`RESULT {json}`: the judgements, where the actors ran, whether any node's
environment had the key, and the text that the state API, the dashboard's
Serve and job views and Serve's status show (when judging starts, with the
model's app up, and after the run), for the test to search. Run it
with RAY_TMPDIR set to TMP, so the cluster's files are all under TMP and no
other Ray on the machine finds it.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq

KEY_ENV = "RAVEVAL_TEST_SECRET_KEY"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_run(tmp: Path, base_url: str) -> Path:
    """A run config: an API model and an AlpacaEval-style pairwise judged
    dataset of 4 rows (8 judgements, both orders), model and judge on `base_url`."""
    rows = [{"instruction": f"Write {i + 1} words about rivers.", "output": "water " * (i + 1), "generator": "ref",
             "dataset": "rivers"} for i in range(4)]
    (tmp / "alpaca.json").write_text(json.dumps(rows))
    path = tmp / "secrets_run.yaml"
    path.write_text(f"""defaults:
  - base
  - model: gpt4o_mini_api
  - _self_
model:
  num_cpus: 2
  api: {{base_url: "{base_url}", model: api-model, api_key_env: {KEY_ENV}, max_concurrent: 8}}
judges:
  t: {{base_url: "{base_url}", model: judge, api_key_env: {KEY_ENV}, max_concurrent: 8,
       retry: {{max_retries: 2, backoff_s: 0.05}}}}
datasets:
  alpaca:
    loader: alpacaeval
    path: {tmp}/alpaca.json
    mode: gen
    prompt: {{format: chat}}
    generation: {{max_new_tokens: 8}}
    judge: {{endpoint: t, mode: pairwise, max_tokens: 4}}
judge_stream: {{batch_rows: 2, callers: 2, calls_per_caller: 1}}
work_dir: {tmp}/work
""")
    return path


def env_has_key_on_each_node() -> dict[str, bool]:
    """Whether KEY_ENV is set in a worker process of each node (it must not be)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def has_key() -> bool:
        return KEY_ENV in os.environ

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    refs = [has_key.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote() for n in nodes]
    return dict(zip(nodes, ray.get(refs, timeout=120)))


def shown_text(dashboard_url: str) -> dict[str, str]:
    """What the dashboard and the state API show about the run: actors, tasks and
    jobs in detail, Serve's applications (the dashboard's Serve view) and status."""
    from ray import serve
    from ray.util.state import list_actors, list_jobs, list_tasks

    def get(path: str) -> str:
        with urllib.request.urlopen(dashboard_url + path, timeout=30) as r:
            return r.read().decode("utf-8", "replace")

    # The address always: other Rays on the machine would make "auto" ambiguous.
    return {
        "actors": repr(list_actors(address=dashboard_url, detail=True, limit=10000, raise_on_missing_output=False)),
        "tasks": repr(list_tasks(address=dashboard_url, detail=True, limit=10000, raise_on_missing_output=False)),
        "jobs": repr(list_jobs(address=dashboard_url, detail=True, raise_on_missing_output=False)),
        "dashboard /api/jobs/": get("/api/jobs/"),
        "dashboard /api/serve/applications/": get("/api/serve/applications/"),
        "serve status": repr(serve.status()),
    }


def main(tmp: Path, base_url: str) -> None:
    key = sys.stdin.readline().strip()
    assert key and KEY_ENV not in os.environ
    import ray
    from ray.cluster_utils import Cluster
    from ray.data import DataContext
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    from ray.util.state import list_actors

    from raveval.run.config import load_config
    from raveval.run.evaluate import run, shutdown

    # The dashboard's port unset: Ray then tries the next one while one is taken (other Rays may run here).
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_agent_listen_port": free_port()})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes(timeout=120)
    # Every Ray process of the cluster is up: from now on only this driver has the key.
    os.environ[KEY_ENV] = key
    # Ray Data's actors (judge and model callers) on the worker node: they take no
    # resources, so nothing else would keep them off the driver's node.
    DataContext.get_current().scheduling_strategy = NodeAffinitySchedulingStrategy(worker.node_id, soft=False)
    report: dict = {"worker_node": worker.node_id, "head_node": cluster.head_node.node_id}
    try:
        cfg = load_config(str(write_run(tmp, base_url)), [f"ray_address={cluster.address}"])
        shown: dict[str, str] = {}

        def log(*a):
            print(*a, flush=True)
            if str(a[0]).startswith("judging:"):  # the model's Serve app runs until the run ends
                shown.update({f"{k} (judging starts)": v for k, v in shown_text(dashboard).items()})

        assert cluster.head_node.webui_url, "the dashboard did not start"
        dashboard = f"http://{cluster.head_node.webui_url}"
        t0 = time.monotonic()
        result = run(cfg, log=log)
        report["run_s"] = round(time.monotonic() - t0, 1)
        report["failed"] = result.failed
        preds = pq.read_table(Path(cfg.work_dir) / "predictions").to_pylist()
        report["predictions"] = [{"key": r["key"], "error": r["error"], "prediction": r["prediction"]} for r in preds]
        judged = pq.read_table(Path(cfg.work_dir) / "judgements").to_pylist()
        report["judgements"] = [{"key": r["key"], "error": r["error"], "verdict": r["verdict"]} for r in judged]
        report["env_has_key"] = env_has_key_on_each_node()
        actors = list_actors(address=dashboard, detail=True, limit=10000, raise_on_missing_output=False)
        report["actor_nodes"] = {}
        for a in actors:
            kind = ("judge" if "JudgeCaller" in (a.repr_name or "") else
                    "model" if a.class_name.startswith("ServeReplica:raveval-") else None)
            if kind:
                report["actor_nodes"].setdefault(kind, []).append(a.node_id)
        shown.update({f"{k} (run ended)": v for k, v in shown_text(dashboard).items()})
        report["shown"] = shown
        shutdown(cfg)
    finally:
        print("RESULT " + json.dumps(report), flush=True)
        try:
            ray.shutdown()
        finally:
            cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
