"""The judge stage: judge requests stream through CPU-free async caller actors
to the judge endpoints, and every judgement lands in judgements/ as Parquet.

`run_judging` is the judge pass of a run (called by `pipeline.run` after the
model stream): it generates the later turns of multi-turn datasets (a second
pass through the model stream), builds the judge requests from the stored
predictions, skips the ones already judged, writes the ones that cannot be
asked as error rows, and streams the rest.

Each caller actor holds one `ChatClient` per endpoint (one aiohttp session,
connections reused) and takes its slots from the endpoint's shared limiter
actor, so all callers together keep one budget. A row whose retries are
exhausted, or whose verdict does not parse, is an error row with the reason;
the raw judge text is kept whenever there was one.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import time
from pathlib import Path

import pyarrow as pa

from raveval.tasks.judging import interpret

# Columns a caller needs from each judge request row.
JUDGE_INPUT = ["endpoint", "messages", "max_tokens", "temperature", "guided", "parser", "order"]
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


class JudgeCaller:
    """Ray Data stage: judges a batch of rows concurrently; takes no CPU (it only waits)."""

    def __init__(self, endpoints: dict[str, dict], callers: int = 1):
        from raveval.config.schema import EndpointConfig

        self.cfgs = {n: EndpointConfig.model_validate(c) for n, c in endpoints.items()}
        self.callers = max(1, callers)
        self.clients: dict = {}

    def _client(self, name: str):
        if name not in self.clients:
            from raveval.http.client import ChatClient
            from raveval.http.limiter import make_limiter

            cfg = self.cfgs[name]
            # The endpoint's max_concurrent is shared out among the callers.
            self.clients[name] = ChatClient(cfg, make_limiter(cfg), math.ceil(cfg.max_concurrent / self.callers))
        return self.clients[name]

    def __del__(self):
        for client in self.clients.values():
            client.close_now()

    async def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.select(JUDGE_INPUT).to_pylist()
        results = await asyncio.gather(*(judge_one(self._client, r) for r in rows))
        return add_judgements(batch, results)


async def judge_one(get_client, r: dict) -> dict:
    from raveval.http.client import RequestFailed

    try:
        client = get_client(r["endpoint"])
        extra = {"structured_outputs": {"choice": list(r["guided"])}} if r["guided"] else None
        res = await client.chat(json.loads(r["messages"]), max_tokens=r["max_tokens"],
                                temperature=r["temperature"], extra=extra)
    except RequestFailed as e:
        return {"error": e.reason, "retries": e.retries}
    except Exception as e:  # one bad row must not sink the batch
        return {"error": f"{type(e).__name__}: {e}"}
    out = {"raw": res.text, "prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
           "retries": res.retries, "latency_s": res.latency_s}
    out.update(interpret(r["parser"], r["order"], res.text))
    return out


def add_judgements(batch: pa.Table, results: list[dict]) -> pa.Table:
    for f in JUDGE_RESULT_SCHEMA:
        batch = batch.append_column(f, pa.array([r.get(f.name) for r in results], type=f.type))
    return batch


def error_rows(requests: list[dict], reasons: list[str]) -> pa.Table:
    """Judge requests that were never sent, as error rows."""
    table = pa.Table.from_pylist(requests)
    return add_judgements(table, [{"error": why, "retries": 0} for why in reasons])


def judge_stream(requests: list[dict], endpoints: dict[str, dict], store, *, callers: int = 2,
                 calls_per_caller: int = 4, batch_rows: int = 16, log=print) -> dict:
    """Stream judge requests through the caller actors; write each finished batch."""
    from raveval.run.evaluate import caller_stream, pool_size

    t0 = time.perf_counter()
    size = pool_size(len(requests), batch_rows, callers)
    batches = caller_stream(requests, JudgeCaller, {"endpoints": endpoints, "callers": size}, batch_rows,
                            callers, calls_per_caller)
    written = errors = 0
    for batch in batches:
        store.write_part(batch)
        written += batch.num_rows
        errors += batch.num_rows - batch.column("error").null_count
    return {"judged": written, "judge_errors": errors, "judge_wall_s": time.perf_counter() - t0}


def run_judging(cfg, plan, store, log=print) -> dict:
    """The judge pass of a run (see the module doc). Returns stats."""
    from raveval.run import evaluate as pipeline
    from raveval.tasks import judging as tasks
    from raveval.http.limiter import ensure_shared_limiter
    from raveval.tasks.judge_prompts import load_mt_bench_prompts
    from raveval.results.store import JUDGEMENTS, Store

    judged = [d for d in plan.datasets if d.cfg.judge is not None and not d.error]
    stats: dict = {"judged": 0, "judge_errors": 0}
    if not judged:
        return stats

    # Later turns: each needs the model's answer to the turn before.
    max_turns = max((tasks.n_turns(r) for d in judged for r in d.rows), default=1)
    for turn in range(2, max_turns + 1):
        preds = _predictions(store)
        new = []
        for d in judged:
            more = tasks.followup_requests(d, turn, preds, plan.model_id)
            d.requests.extend(more)
            new += more
        finished = store.finished_keys() if cfg.resume else set()
        todo = [r for r in new if r["key"] not in finished]
        log(f"turn {turn}: {len(new)} rows, {len(todo)} to run")
        if todo:
            s = pipeline.stream(cfg, todo, store, log)
            stats["rows_turn"] = stats.get("rows_turn", 0) + s["rows"]

    preds = _predictions(store)
    reqs = []
    for d in judged:
        endpoint = cfg.judges[d.cfg.judge.endpoint].model_dump()
        mt = load_mt_bench_prompts(d.cfg.judge.prompts_path) if d.cfg.loader == "mt_bench" else None
        d.judge_requests = tasks.judge_requests(d, preds, endpoint, cfg.model.name, mt, tasks.load_baseline(d))
        reqs += d.judge_requests

    jstore = Store(store.root, JUDGEMENTS)
    finished = jstore.finished_keys() if cfg.resume else set()
    pending = [r for r in reqs if r["key"] not in finished]
    # Endpoints whose key is not set here cannot be asked: their rows fail with that reason.
    missing_key = {n: f"environment variable {e.api_key_env} (api_key_env of judge {n}) is not set"
                   for n, e in cfg.judges.items() if e.api_key_env and not os.environ.get(e.api_key_env)}
    failed = [(r, r["pre_error"] or missing_key.get(r["endpoint"])) for r in pending]
    failed = [(r, why) for r, why in failed if why]
    todo = [r for r in pending if not r["pre_error"] and r["endpoint"] not in missing_key]
    log(f"judging: {len(reqs)} judgements, {len(reqs) - len(pending)} reused, {len(todo)} to ask, "
        f"{len(failed)} cannot be asked")
    if failed:
        jstore.write_part(error_rows([r for r, _ in failed], [why for _, why in failed]))
        stats["judge_errors"] += len(failed)
    if todo:
        pipeline.init_ray(cfg.ray_address, http_port=cfg.http_port if cfg.model.http_route else None)
        used = sorted({r["endpoint"] for r in todo})
        for name in used:
            ensure_shared_limiter(cfg.judges[name])  # owned by the driver: one budget for the whole run
        s = judge_stream(todo, {n: cfg.judges[n].model_dump() for n in used}, jstore,
                         callers=cfg.judge_stream.callers, calls_per_caller=cfg.judge_stream.calls_per_caller,
                         batch_rows=cfg.judge_stream.batch_rows, log=log)
        stats["judged"] += s["judged"]
        stats["judge_errors"] += s["judge_errors"]
        stats["judge_wall_s"] = s["judge_wall_s"]
    return stats


def _predictions(store) -> dict[str, dict]:
    table = store.read(columns=["key", "prediction", "error"])
    return {} if table is None else {r["key"]: r for r in table.to_pylist()}


def read_judgements(work_dir: str | Path):
    from raveval.results.store import JUDGEMENTS, Store

    return Store(work_dir, JUDGEMENTS).read()
