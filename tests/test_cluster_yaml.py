"""cluster.yaml: a valid Ray cluster-launcher config (Ray's own validation, offline),
whose GPU worker type fits what `raveval run --dry-run` plans for the A100 examples."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from raveval.run.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_validation():
    pytest.importorskip("jsonschema", reason="Ray's cluster-config validation needs jsonschema (ray[default])")
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = cluster()
    validate_config(prepare_config(cfg))  # raises on a bad field, type or node-type reference
    workers = {n: t for n, t in cfg["available_node_types"].items() if n != cfg["head_node_type"]}
    assert all(t["min_workers"] == 0 for t in workers.values())  # GPU nodes only while a run needs them
    assert cfg["available_node_types"][cfg["head_node_type"]]["resources"]["GPU"] == 0  # no replica on the head
    assert any("raveval[vllm]" in c for c in cfg["setup_commands"])


@pytest.mark.parametrize("model", ["qwen2_5_7b_vllm_a100", "internlm2_chat_1_8b_turbomind"])
def test_a100_examples_fit_the_gpu_workers(model):
    if model.endswith("turbomind"):
        pytest.importorskip("lmdeploy", reason="lmdeploy's config classes check model.lmdeploy (scripts/setup_env.sh)")
    cfg = cluster()
    node = cfg["available_node_types"]["gpu_a100"]
    m = load_config("demo", [f"model={model}", "work_dir=/tmp/unused"]).model
    res = m.resources()  # what --dry-run prints as "replicas: N x (...)"
    per_replica = {"CPU": res.num_cpus + sum(b.get("CPU", 0) for b in res.bundles[1:]), "GPU": res.total_gpus}
    # A replica's GPUs are on one node (STRICT_PACK or the replica's own process) ...
    assert per_replica["GPU"] <= node["resources"]["GPU"] and per_replica["CPU"] <= node["resources"]["CPU"]
    # ... and all replicas fit the workers the autoscaler may start.
    per_node = min(math.floor(node["resources"][k] / v) for k, v in per_replica.items() if v)
    assert m.replicas <= per_node * node["max_workers"]
