"""The Serve deployment that hosts one engine per replica.

One Serve call carries a whole Data batch of requests; the replica fans
them out as separate engine requests, so a call costs one round trip while
the engine still batches continuously. A failing row becomes an error
result; it never fails the call.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import time

from ray import serve

from raveval.config.schema import ModelConfig


class ModelReplica:
    def __init__(self, model_cfg: dict):
        from raveval.engines import build_engine

        self.cfg = ModelConfig.model_validate(model_cfg)
        self.engine = build_engine(self.cfg)

    async def run_batch(self, requests: list[dict]) -> list[dict]:
        return await asyncio.gather(*(self._run_one(r) for r in requests))

    async def _run_one(self, req: dict) -> dict:
        from raveval.engines.base import GenParams
        from raveval.tasks.prompts import decode_prompt

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

    async def __call__(self, request):
        """The OpenAI-compatible HTTP route (served when the model config sets
        `http_route`): POST {route}/v1/chat/completions and GET {route}/v1/models,
        so this model can be a judge. `structured_outputs: {choice: [...]}`
        (or `guided_choice`) constrains the reply to one of the strings, on
        engines that support it."""
        from starlette.responses import JSONResponse

        def error(status: int, message: str, kind: str = "invalid_request_error"):
            return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)

        path = request.url.path.rstrip("/")
        if path.endswith("/v1/models"):
            return JSONResponse({"object": "list", "data": [{"id": self.cfg.name, "object": "model", "owned_by": "raveval"}]})
        if request.method != "POST" or not path.endswith("/v1/chat/completions"):
            return error(404, f"no route {request.method} {path}", "not_found")
        try:
            body = await request.json()
            messages, params = openai_request(body)
        except (ValueError, KeyError, TypeError) as e:
            return error(400, f"bad request: {e}")
        if params.choices and not self.engine.supports_choices:
            return error(400, f"engine {self.cfg.engine} does not support structured_outputs.choice")
        try:
            res = await self.engine.generate(messages, params)
        except Exception as e:
            return error(500, f"{type(e).__name__}: {e}", "server_error")
        return JSONResponse({
            "id": f"chatcmpl-{time.time_ns():x}", "object": "chat.completion", "created": int(time.time()),
            "model": self.cfg.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": res.text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.output_tokens,
                      "total_tokens": res.prompt_tokens + res.output_tokens},
        })


def openai_request(body: dict):
    """(messages, GenParams) of an OpenAI chat completions request body."""
    from raveval.engines.base import GenParams

    if body.get("stream"):
        raise ValueError("stream is not supported")
    if body.get("n", 1) != 1:
        raise ValueError("n must be 1")
    messages = []
    for m in body["messages"]:
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(m.get("role"), str) or not isinstance(content, str):
            raise ValueError("each message needs a role and text content")
        messages.append({"role": m["role"], "content": content})
    stop = body.get("stop") or ()
    choices = (body.get("structured_outputs") or {}).get("choice") or body.get("guided_choice") or ()
    params = GenParams(
        max_new_tokens=int(body.get("max_completion_tokens") or body.get("max_tokens") or 512),
        temperature=float(body.get("temperature", 1.0)),
        top_p=float(body.get("top_p", 1.0)),
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        seed=body.get("seed"),
        choices=tuple(str(c) for c in choices),
    )
    return messages, params


def deployment_options(cfg: ModelConfig, max_ongoing: int) -> dict:
    """Replica count and resources from the model config: each replica asks for
    exactly the GPUs its engine uses (a placement group when that is several)."""
    from raveval.engines import replica_resources

    res = replica_resources(cfg)
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
