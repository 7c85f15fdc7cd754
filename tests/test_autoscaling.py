"""model.autoscaling maps to Serve's autoscaling: on a local Ray, replicas rise
under load and fall back after it (a slow instant engine; no weights)."""
from __future__ import annotations

import asyncio
import time

import pytest

from raveval.engines.registry import parse_model
from raveval.run.config import load_config
from raveval.serving.deploy import delete, deploy, deployment_options, wait_ready

SCALING = {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 1, "upscale_delay_s": 0,
           "downscale_delay_s": 2}


def test_autoscaling_config_and_plan():
    m = parse_model({"name": "s", "engine": "instant", "autoscaling": SCALING})
    opts = deployment_options(m, max_ongoing=8)
    assert "num_replicas" not in opts and opts["autoscaling_config"]["max_replicas"] == 3
    assert (m.min_replicas, m.max_replicas) == (1, 3)
    cfg = load_config("demo", ["model=instant", "++model.autoscaling={min_replicas: 1, max_replicas: 4}",
                               "work_dir=/tmp/unused"])
    assert cfg.model.describe_replicas() == "autoscaling 1..4 (target 2 calls in flight per replica)"
    with pytest.raises(ValueError, match="replicas and autoscaling both set"):
        parse_model({"name": "s", "engine": "instant", "replicas": 2, "autoscaling": SCALING})
    with pytest.raises(ValueError, match="max_replicas .1. is below min_replicas .2."):
        parse_model({"name": "s", "engine": "instant", "autoscaling": {"min_replicas": 2, "max_replicas": 1}})


def running(app: str) -> int:
    from ray import serve

    st = serve.status().applications.get(app)
    if st is None or "model" not in st.deployments:
        return 0
    return st.deployments["model"].replica_states.get("RUNNING", 0)


def test_replicas_rise_under_load_and_fall_after(ray_local):
    from ray import serve

    m = parse_model({"name": "slow", "engine": "instant", "delay_s": 0.5, "autoscaling": SCALING})
    app = deploy(m, max_ongoing=8, run_id="autoscaling-test")
    try:
        asyncio.run(wait_ready(app, timeout_s=120))
        handle = serve.get_app_handle(app).options(stream=True)
        row = {"mode": "ll", "chat": False, "prompt": "p", "continuations": [" A", " B"], "params": ""}
        seen, stop = [running(app)], time.monotonic() + 60

        async def load():
            async def one():
                while time.monotonic() < stop and max(seen) < 3:
                    async for _ in handle.stream_batch.remote([row]):
                        pass
            await asyncio.gather(*(one() for _ in range(12)))

        async def watch():
            while time.monotonic() < stop and max(seen) < 3:
                seen.append(running(app))
                await asyncio.sleep(0.5)

        async def both():
            await asyncio.gather(load(), watch())

        asyncio.run(both())
        assert seen[0] == 1 and max(seen) >= 2, seen
        deadline = time.monotonic() + 90  # idle now: back to min_replicas after downscale_delay_s
        while running(app) > 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert running(app) == 1
    finally:
        delete(app, wait=True)
