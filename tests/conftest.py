"""Shared fixtures: the real benchmark data folder and one local Ray per session."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Tests never download: the Hugging Face hub client (alpaca_eval's GLM data, the
# tiny model's tokenizer) answers from local files at once instead of retrying a
# network it cannot reach. Set before anything imports huggingface_hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RAVEVAL_SHARED_DATA", ROOT.parent / "shared" / "data"))

needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "mmlu" / "test.jsonl").is_file(),
    reason=f"real benchmark data not found at {SHARED_DATA} (set RAVEVAL_SHARED_DATA to its folder)",
)


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray (never an existing cluster) with Serve, for the whole session."""
    import ray

    from raveval.stream.cluster import init_ray

    # Short path: Ray's socket paths must stay under the OS limit.
    tmp = tempfile.mkdtemp(prefix="rv-", dir="/tmp")
    init_ray("local", temp_dir=tmp)
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def vllm_env(tmp_path_factory):
    """vLLM's caches in a temporary folder and its logs at WARNING, set before
    any Ray starts so Serve replicas inherit them; values already set win."""
    root = tmp_path_factory.mktemp("vllm")
    want = {"VLLM_CACHE_ROOT": str(root / "cache"), "VLLM_LOGGING_LEVEL": "WARNING",
            "VLLM_NO_USAGE_STATS": "1", "VLLM_DO_NOT_TRACK": "1"}
    added = [k for k in want if k not in os.environ]
    for k in added:
        os.environ[k] = want[k]
    yield root
    for k in added:
        os.environ.pop(k, None)
