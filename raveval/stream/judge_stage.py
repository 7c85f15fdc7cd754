"""The judge stage: judge requests stream through CPU-free async caller actors
to the judge endpoints (OpenAI-compatible HTTP), and come back as judgements.

Each caller actor holds one `ChatClient` per endpoint (one aiohttp session,
connections reused) and takes its slots from the endpoint's shared limiter
actor, so all callers together keep one budget. The endpoints' keys come
from the driver as constructor arguments (raveval.http.keys): a caller on
another node has no key in its environment. A row whose retries are
exhausted, or whose verdict does not parse, is an error row with the reason;
the raw judge text is kept whenever there was one.
"""
from __future__ import annotations

import json
import math
import time
from collections import Counter
from typing import AsyncIterator

import pyarrow as pa
from pydantic import SecretStr

from raveval.config.schema import EndpointConfig, StreamConfig
from raveval.http.as_finished import as_finished
from raveval.stream.progress import Progress
from raveval.stream.stage import Caller, Stage, append_results, pool_size
from raveval.stream.waves import Waves
from raveval.tasks.judging import interpret
from raveval.tasks.request import JudgeRequest, to_table

JUDGE_RESULT_SCHEMA = pa.schema([
    ("raw", pa.string()),               # the judge's whole reply
    ("score", pa.float64()),            # single grading: 1-10
    ("verdict", pa.string()),           # what was parsed: "7", "A" / "B" / "tie", "m" / "M"
    ("outcome", pa.float64()),          # pairwise, for the model: 1 win, 0.5 tie, 0 loss
    ("ratings", pa.string()),           # AlignBench: per-dimension scores (JSON)
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("retries", pa.int64()),
    ("latency_s", pa.float64()),
    ("error", pa.string()),
])




class JudgeCaller(Caller):
    """Ray Data caller: judges a batch of rows concurrently; takes no CPU (it only waits)."""

    inputs = ["dataset", "endpoint", "messages", "max_tokens", "temperature", "guided", "parser", "order"]
    outputs = JUDGE_RESULT_SCHEMA

    def __init__(self, endpoints: dict[str, dict], api_keys: dict[str, SecretStr], callers: int = 1,
                 metric_tags: dict | None = None, early: tuple | None = None):
        """`metric_tags`: run and model of the requests' metrics (each client adds its endpoint)."""
        super().__init__(early)
        self.cfgs = {n: EndpointConfig.model_validate(c) for n, c in endpoints.items()}
        self.api_keys = api_keys
        self.callers = max(1, callers)
        self.metric_tags = {**(metric_tags or {}), "stage": "judge"}
        self.clients: dict = {}

    def _client(self, name: str):
        if name not in self.clients:
            from raveval.http.client import ChatClient
            from raveval.http.limiter import make_limiter

            cfg = self.cfgs[name]
            # The endpoint's max_concurrent is shared out among the callers.
            self.clients[name] = ChatClient(cfg, make_limiter(cfg), math.ceil(cfg.max_concurrent / self.callers),
                                            self.api_keys.get(name), {**self.metric_tags, "endpoint": name})
        return self.clients[name]

    def __del__(self):
        for client in self.clients.values():
            client.close_now()

    def process(self, rows: list[dict]) -> AsyncIterator[list[tuple[int, dict]]]:
        return as_finished([judge_one(self._client, r) for r in rows])


async def judge_one(get_client, r: dict) -> dict:
    from raveval.http.client import RequestFailed

    try:
        client = get_client(r["endpoint"])
        extra = {"structured_outputs": {"choice": list(r["guided"])}} if r["guided"] else None
        res = await client.chat(json.loads(r["messages"]), max_tokens=r["max_tokens"],
                                temperature=r["temperature"], extra=extra, dataset=r.get("dataset"))
    except RequestFailed as e:
        return {"error": e.reason, "retries": e.retries}
    except Exception as e:  # one bad row must not sink the batch
        return {"error": f"{type(e).__name__}: {e}"}
    out = {"raw": res.text, "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
           "retries": res.retries, "latency_s": res.latency_s}
    out.update(interpret(r["parser"], r["order"], res.text))
    return out


def error_rows(requests: list[JudgeRequest], reasons: list[str]) -> pa.Table:
    """Judge requests that were never sent, as error rows (the judge stage's columns, no verdict)."""
    return append_results(to_table(requests), [{"error": why, "retries": 0} for why in reasons], JUDGE_RESULT_SCHEMA)


def judge_stage(endpoints: dict[str, dict], api_keys: dict[str, SecretStr], settings: StreamConfig,
                n_rows: int, metric_tags: dict | None = None) -> Stage:
    """The stage that judges `n_rows` rows: its callers share out each endpoint's in-flight cap.
    `metric_tags`: run and model of the requests' metrics."""
    callers = pool_size(n_rows, settings)
    return Stage("judge", JudgeCaller, {"endpoints": endpoints, "api_keys": api_keys, "callers": callers,
                                        "metric_tags": metric_tags}, settings)


def judge_stream(requests: list[JudgeRequest], endpoints: dict[str, dict], api_keys: dict[str, SecretStr], store,
                 settings: StreamConfig, log=print, metrics=None) -> dict:
    """Stream judge requests through the caller actors; write the rows to `store` as they finish.
    `api_keys`: the key of each endpoint that takes one, by endpoint name (read by the driver).
    `metrics`: a StreamMetrics that records each batch (the run's; none in tools and tests)."""
    t0 = time.perf_counter()
    tags = {k: metrics.tags[k] for k in ("run", "model")} if metrics is not None else {}
    waves = Waves()
    waves.start("judge", judge_stage(endpoints, api_keys, settings, len(requests), tags), to_table(requests))
    written = errors = 0
    progress = Progress("judge", Counter(r.dataset for r in requests), log)
    try:
        while waves.running:
            event = waves.next(timeout=1.0)
            if event is None or event.batch is None and event.error is None:
                continue
            if event.error is not None:
                raise event.error
            store.write_part(event.batch)
            progress.update(event.batch)
            if metrics is not None:
                metrics.update(event.batch, progress.rate())
            written += event.batch.num_rows
            errors += event.batch.num_rows - event.batch.column("error").null_count
    finally:
        progress.close()
        waves.stop()  # an early stop (error, signal) ends the stream's executor now
    return {"judged": written, "judge_errors": errors, "judge_wall_s": time.perf_counter() - t0}
