"""The Serve replica: one engine per replica, for the whole run.

One Serve call carries a whole Data batch of requests; the replica fans
them out as separate engine requests, so a call costs one round trip while
the engine still batches continuously, and streams the results back as the
rows finish (a streaming Serve call), not when the last one does. A failing
row becomes an error result; it never fails the call. Every result names the replica and the node
that computed it (the run counts rows per replica in run.json). The rows in
flight in each replica are a Ray metric (raveval_replica_rows_in_flight).
"""
from __future__ import annotations

import asyncio
import json
import time
from contextlib import aclosing
from typing import AsyncIterator, Optional

from pydantic import SecretStr

from raveval.engines import GenParams, parse_model
from raveval.http.as_finished import as_finished
from raveval.http.metrics import metric
from raveval.serving.openai_route import chat_completions
from raveval.tasks.request import decode_prompt

# Seconds between updates of the rows-in-flight gauge: setting a Ray metric costs
# tens of microseconds, too much twice per row.
GAUGE_EVERY_S = 0.5
# Seconds between a call's messages of finished rows: each message costs both ends
# a few hundred microseconds of Ray's time, and rows finish in many small groups.
STREAM_EVERY_S = 0.25


class ModelReplica:
    where = {"replica": None, "node_id": None}  # outside Serve (tests driving stream_batch directly)
    in_flight = 0
    gauge = None
    gauge_due = False  # an update of the gauge is scheduled

    def __init__(self, model_cfg: dict, api_key: Optional[SecretStr] = None):
        """`api_key`: the key of the model's API endpoint (engine openai), read by the driver."""
        import ray
        from ray import serve

        self.cfg = parse_model(model_cfg)
        self.engine = self.cfg.build_engine(api_key)
        ctx = serve.get_replica_context()
        self.where = {"replica": ctx.replica_tag, "node_id": ray.get_runtime_context().get_node_id()}
        self.gauge = metric("Gauge", "raveval_replica_rows_in_flight", "Rows the replica's engine is working on",
                            ("model", "app", "replica"))
        self.gauge_tags = {"model": self.cfg.name, "app": ctx.app_name, "replica": ctx.replica_tag}
        self._publish()

    def _count(self, change: int) -> None:
        """Count rows in and out; the gauge shows the count at most GAUGE_EVERY_S late."""
        self.in_flight += change
        if self.gauge is not None and not self.gauge_due:
            self.gauge_due = True
            asyncio.get_running_loop().call_later(GAUGE_EVERY_S, self._publish)

    def _publish(self) -> None:
        self.gauge_due = False
        if self.gauge is not None:
            self.gauge.set(self.in_flight, tags=self.gauge_tags)

    async def stream_batch(self, requests: list[dict]) -> AsyncIterator[list[tuple[int, dict]]]:
        """The results of `requests` as they finish: lists of (index in `requests`, result).
        A caller that goes away (a stopped run) cancels the rows still running."""
        async with aclosing(as_finished([self._run_one(r) for r in requests], STREAM_EVERY_S)) as finished:
            async for done in finished:
                yield done

    async def _run_one(self, req: dict) -> dict:
        start = time.perf_counter()
        out = {"text": None, "logprobs": None, "prompt_tokens": None, "output_tokens": None, "error": None,
               **self.where}
        self._count(1)
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
        finally:
            self._count(-1)
        out["latency_s"] = time.perf_counter() - start
        return out

    async def ping(self) -> bool:
        return True

    async def __call__(self, request):
        """The OpenAI-compatible HTTP route (served when the model config sets `http_route`)."""
        self._count(1)
        try:
            return await chat_completions(self.engine, self.cfg.name, request)
        finally:
            self._count(-1)
