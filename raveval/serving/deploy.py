"""Deploying the model: one Serve app per model, each replica asking Ray for
exactly the resources its engine uses; waiting (bounded by Serve's own status)
for the app to run."""
from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time

from ray import serve

from raveval.engines import ModelConfig
from raveval.serving.replica import ModelReplica


def deployment_options(cfg: ModelConfig, max_ongoing: int) -> dict:
    """Replica count and resources from the model config: each replica asks for
    exactly the GPUs its engine uses (a placement group when that is several)."""
    res = cfg.resources()
    opts = {
        "name": "model",
        "num_replicas": cfg.replicas,
        "ray_actor_options": {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus},
        "max_ongoing_requests": max_ongoing,
        "logging_config": {"enable_access_log": False},
    }
    if res.bundles:
        opts["placement_group_bundles"] = res.bundles
        opts["placement_group_strategy"] = res.strategy
    return opts


def app_name(cfg: ModelConfig) -> str:
    return f"raveval-{cfg.name}"


def deploy(cfg: ModelConfig, max_ongoing: int) -> None:
    """Start (or update) the model's Serve app without waiting for its replicas:
    the Data callers start meanwhile and wait for the app in `wait_ready`."""
    opts = deployment_options(cfg, max_ongoing)
    # Deploying the same model again from this driver (a second stream of the
    # same run, e.g. MT-Bench's turn 2) keeps the running replicas: Serve
    # would otherwise start new ones and load the model again.
    app = app_name(cfg)
    fingerprint = hashlib.sha256(json.dumps([cfg.model_dump(), opts], sort_keys=True, default=str).encode()).hexdigest()
    if _deployed.get(app) == fingerprint:
        st = serve.status().applications.get(app)
        if st is not None and st.status in ("RUNNING", "DEPLOYING"):
            return
    dep = serve.deployment(ModelReplica).options(**opts)
    # An HTTP route only when asked for (the OpenAI-compatible route, e.g. for a local judge).
    # Only the keys the user set: the replica validates them again, and checks of
    # the form "set explicitly" (num_gpus, dtype) must see the same config.
    target = serve.RunTarget(dep.bind(cfg.model_dump(exclude_unset=True)), name=app, route_prefix=cfg.http_route)
    serve.run_many([target], wait_for_applications_running=False)
    _deployed[app] = fingerprint


_deployed: dict[str, str] = {}  # app -> config fingerprint of what this driver deployed


class ModelStartError(RuntimeError):
    pass


async def wait_ready(app: str, poll_s: float = 0.2) -> None:
    """Return once the app runs; raise with Serve's reason if it failed to deploy
    (requests sent to a failed app would wait forever)."""
    while True:
        st = (await asyncio.to_thread(serve.status)).applications.get(app)
        if st is not None and st.status == "RUNNING":
            return
        if st is not None and st.status == "DEPLOY_FAILED":
            raise ModelStartError(f"Serve app {app} failed to start: {st.message}")
        await asyncio.sleep(poll_s)


def watch_ready(app: str) -> threading.Thread:
    """A thread that notes when the app starts serving (`.at`), for the start-up
    figure; nothing waits on it (the callers wait for the app themselves)."""

    def watch():
        try:
            asyncio.run(wait_ready(app))
            t.at = time.perf_counter()
        except ModelStartError:
            pass  # the callers report it

    t = threading.Thread(target=watch, daemon=True)
    t.at = None
    t.start()
    return t
