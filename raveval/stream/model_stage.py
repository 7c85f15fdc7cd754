"""The model stage: request rows go to the model's Serve deployment, one
streaming Serve call per batch, and come back scored as they finish.

The replica fans a call's rows out as concurrent engine requests, so a call
costs one round trip while the engine still batches continuously, and streams
each row back when it is done. Each row is scored here, as it returns: choice
accuracy, or the answer extracted from the generated text (rows an LLM judge
scores later are left unscored).

When the replica serving a call (or its node) dies, the rows it had not
returned are sent again, after a short backoff, up to MAX_ATTEMPTS calls in
all: Serve's handle routes the new call to a live replica (or queues it until
Serve has restarted one). Only such infrastructure failures are retried; a
row whose engine call failed comes back from the replica as a result with
`error` and stays an error row.
"""
from __future__ import annotations

import asyncio
import logging
import random
from contextlib import aclosing
from typing import AsyncIterator

import pyarrow as pa

from raveval.config.schema import StreamConfig
from raveval.stream.stage import Caller, Stage, append_results
from raveval.tasks.request import Request, to_table
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
    ("replica", pa.string()),          # the Serve replica that computed the row (null if no call came back)
    ("node_id", pa.string()),          # the Ray node it ran on
])
# What the replica needs of a row, then what scoring needs.
ENGINE_FIELDS = ["mode", "chat", "prompt", "continuations", "params"]
SCORE_FIELDS = ["answer", "judged", "gold", "choices"]

# Serve calls per batch when replicas die under it (the first call included),
# and the backoff before each new call: BACKOFF_S, doubling, at most BACKOFF_MAX_S.
MAX_ATTEMPTS = 5
BACKOFF_S = 0.5
BACKOFF_MAX_S = 8.0

log = logging.getLogger(__name__)


def error_rows(requests: list[Request], reasons: list[str]) -> pa.Table:
    """Requests that are never sent, as error rows (the model stage's columns, no prediction)."""
    return append_results(to_table(requests), [{"error": why} for why in reasons], RESULT_SCHEMA)


class ModelCaller(Caller):
    """Ray Data caller: one Serve call per batch; takes no CPU (it only waits)."""

    inputs = ENGINE_FIELDS + SCORE_FIELDS
    outputs = RESULT_SCHEMA

    def __init__(self, app: str, startup_timeout_s: float | None = None, early: tuple | None = None):
        from ray import serve

        from raveval.serving.deploy import wait_ready

        super().__init__(early)
        self.handle = serve.get_deployment_handle("model", app).options(stream=True)
        self.ready = None  # one readiness wait shared by the calls in flight
        self._wait_ready = lambda: wait_ready(app, startup_timeout_s)

    async def process(self, rows: list[dict]) -> AsyncIterator[list[tuple[int, dict]]]:
        if self.ready is None:
            self.ready = asyncio.ensure_future(self._wait_ready())
        await self.ready  # a model that cannot start stops the run here, before any row is sent
        async with aclosing(self.call([{k: r[k] for k in ENGINE_FIELDS} for r in rows])) as results:
            async for finished in results:
                yield [(i, score(rows[i], res)) for i, res in finished]

    async def call(self, requests: list[dict]) -> AsyncIterator[list[tuple[int, dict]]]:
        """A batch's results from the replicas as they finish, (index, result) pairs.
        While the replica serving the call dies, the rows it had not returned are sent
        again (at most MAX_ATTEMPTS calls); any other failure, or the last loss, makes
        each of them an error row naming the cause."""
        todo = list(range(len(requests)))  # indices not answered yet
        for attempt in range(1, MAX_ATTEMPTS + 1):
            sent, answered = todo, set()
            try:
                async for finished in self.handle.stream_batch.remote([requests[i] for i in sent]):
                    answered.update(j for j, _ in finished)
                    yield [(sent[j], res) for j, res in finished]
                return
            except Exception as e:
                todo = [i for j, i in enumerate(sent) if j not in answered]
                if not replica_lost(e):
                    yield [(i, {"error": describe(e)}) for i in todo]
                    return
                if attempt == MAX_ATTEMPTS:
                    err = f"replica lost on all {MAX_ATTEMPTS} attempts of this batch; last: {describe(e)}"
                    yield [(i, {"error": err}) for i in todo]
                    return
                delay = backoff_s(attempt)
                log.warning("model batch: replica lost (%s) with %d of %d rows not back; attempt %d of %d in %.1fs",
                            type(e).__name__, len(todo), len(requests), attempt + 1, MAX_ATTEMPTS, delay)
                await asyncio.sleep(delay)


def replica_lost(e: BaseException) -> bool:
    """Whether a Serve call failed because of the infrastructure (the replica's
    actor, worker or node died, or is unreachable) rather than the call itself."""
    from ray import exceptions as rx
    from ray.serve import exceptions as sx

    lost = (rx.RayActorError, rx.WorkerCrashedError, rx.NodeDiedError, rx.LocalRayletDiedError,
            rx.ObjectLostError, rx.OutOfMemoryError, sx.ReplicaUnavailableError, sx.BackPressureError)
    seen: set[int] = set()
    while e is not None and id(e) not in seen:  # a RayTaskError may wrap the real cause
        if isinstance(e, lost):
            return True
        seen.add(id(e))
        e = getattr(e, "cause", None) or e.__cause__
    return False


def describe(e: BaseException, limit: int = 500) -> str:
    """`Type: message` on one line, cut to `limit` characters (Ray's messages run to many lines)."""
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def backoff_s(attempt: int) -> float:
    """Seconds before call `attempt + 1`: exponential with jitter, so callers do not retry in step."""
    return min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def score(row: dict, res: dict) -> dict:
    """A row's result columns: the engine's output and, for rows with a gold answer, its score."""
    err, text, logprobs = res.get("error"), res.get("text"), res.get("logprobs")
    pred = correct = None
    if not err and not row["judged"]:
        pred, correct = score_row(row["mode"], row["answer"], row["gold"], len(row["choices"]), text, logprobs)
    return {**res, "prediction": None if err else (pred if row["mode"] == "ll" else text),
            "answer_pred": pred, "correct": correct}


def model_stage(app: str, settings: StreamConfig, startup_timeout_s: float | None = None) -> Stage:
    return Stage(f"model:{app}", ModelCaller, {"app": app, "startup_timeout_s": startup_timeout_s}, settings)
