"""The model stage: request rows go to the model's Serve deployment, one Serve
call per batch, and come back scored.

The replica fans a call's rows out as concurrent engine requests, so a call
costs one round trip while the engine still batches continuously. Each row
is scored here, as it returns: choice accuracy, or the answer extracted from
the generated text (rows an LLM judge scores later are left unscored).
"""
from __future__ import annotations

import asyncio

import pyarrow as pa

from raveval.config.schema import StreamConfig
from raveval.stream.stage import Caller, Stage
from raveval.tasks.scoring import score_row

RESULT_SCHEMA = pa.schema([
    ("prediction", pa.string()),       # generated text, or the picked letter in ll mode
    ("logprobs", pa.list_(pa.float64())),  # ll mode: one score per choice
    ("answer_pred", pa.string()),      # extracted answer
    ("correct", pa.bool_()),
    ("error", pa.string()),
    ("latency_s", pa.float64()),
    ("prompt_tokens", pa.int64()),
    ("output_tokens", pa.int64()),
])
# What the replica needs of a row, then what scoring needs.
ENGINE_FIELDS = ["mode", "chat", "prompt", "continuations", "params"]
SCORE_FIELDS = ["answer", "judged", "gold", "choices"]


class ModelCaller(Caller):
    """Ray Data caller: one Serve call per batch; takes no CPU (it only waits)."""

    inputs = ENGINE_FIELDS + SCORE_FIELDS
    outputs = RESULT_SCHEMA

    def __init__(self, app: str):
        from ray import serve

        from raveval.serving.deploy import wait_ready

        self.handle = serve.get_deployment_handle("model", app)
        self.ready = None  # one readiness wait shared by the calls in flight
        self._wait_ready = lambda: wait_ready(app)

    async def process(self, rows: list[dict]) -> list[dict]:
        if self.ready is None:
            self.ready = asyncio.ensure_future(self._wait_ready())
        await self.ready  # a model that cannot start stops the run here, before any row is sent
        try:
            results = await self.handle.run_batch.remote([{k: r[k] for k in ENGINE_FIELDS} for r in rows])
        except Exception as e:  # replica lost: the rows become error rows, a re-run retries them
            err = f"{type(e).__name__}: {e}"
            results = [{"error": err} for _ in rows]
        return [score(r, res) for r, res in zip(rows, results)]


def score(row: dict, res: dict) -> dict:
    """A row's result columns: the engine's output and, for rows with a gold answer, its score."""
    err, text, logprobs = res.get("error"), res.get("text"), res.get("logprobs")
    pred = correct = None
    if not err and not row["judged"]:
        pred, correct = score_row(row["mode"], row["answer"], row["gold"], len(row["choices"]), text, logprobs)
    return {**res, "prediction": None if err else (pred if row["mode"] == "ll" else text),
            "answer_pred": pred, "correct": correct}


def model_stage(app: str, settings: StreamConfig) -> Stage:
    return Stage(f"model:{app}", ModelCaller, {"app": app}, settings)
