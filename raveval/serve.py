"""The Serve deployment that hosts one engine per replica.

One Serve call carries a whole Data batch of requests; the replica fans
them out as separate engine requests, so a call costs one round trip while
the engine still batches continuously. A failing row becomes an error
result; it never fails the call.
"""
from __future__ import annotations

import asyncio
import json
import time

from ray import serve

from raveval.schema import ModelConfig


class ModelReplica:
    def __init__(self, model_cfg: dict):
        from raveval.engines import build_engine

        self.cfg = ModelConfig.model_validate(model_cfg)
        self.engine = build_engine(self.cfg)

    async def run_batch(self, requests: list[dict]) -> list[dict]:
        return await asyncio.gather(*(self._run_one(r) for r in requests))

    async def _run_one(self, req: dict) -> dict:
        from raveval.engines.base import GenParams
        from raveval.prompts import decode_prompt

        start = time.perf_counter()
        out = {"text": None, "logprobs": None, "prompt_tokens": None, "output_tokens": None, "error": None}
        try:
            prompt = decode_prompt(req["prompt"], req["chat"])
            if req["mode"] == "ll":
                res = await self.engine.loglikelihood(prompt, list(req["continuations"]))
                out["logprobs"] = [float(x) for x in res.logprobs]
            else:
                params = json.loads(req["params"])
                params["stop"] = tuple(params.get("stop", ()))
                res = await self.engine.generate(prompt, GenParams(**params))
                out.update(text=res.text, prompt_tokens=res.prompt_tokens, output_tokens=res.output_tokens)
        except Exception as e:  # one bad row must not sink the batch
            out["error"] = f"{type(e).__name__}: {e}"
        out["latency_s"] = time.perf_counter() - start
        return out

    async def ping(self) -> bool:
        return True


def deployment_options(cfg: ModelConfig, max_ongoing: int) -> dict:
    """Replica count and resources, straight from the model config."""
    return {
        "name": "model",
        "num_replicas": cfg.replicas,
        "ray_actor_options": {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus},
        "max_ongoing_requests": max_ongoing,
        "logging_config": {"enable_access_log": False},
    }


def app_name(cfg: ModelConfig) -> str:
    return f"raveval-{cfg.name}"


def deploy(cfg: ModelConfig, max_ongoing: int) -> None:
    """Start (or update) the model's Serve app without waiting for its replicas:
    the Data callers start meanwhile and wait for the app in `wait_ready`."""
    dep = serve.deployment(ModelReplica).options(**deployment_options(cfg, max_ongoing))
    target = serve.RunTarget(dep.bind(cfg.model_dump()), name=app_name(cfg), route_prefix=None)
    serve.run_many([target], wait_for_applications_running=False)


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
