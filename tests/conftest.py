"""Shared fixtures: the real benchmark data folder and one local Ray per session."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

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

    from raveval.pipeline import init_ray

    # Short path: Ray's socket paths must stay under the OS limit.
    tmp = tempfile.mkdtemp(prefix="rv-", dir="/tmp")
    init_ray("local", temp_dir=tmp)
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
