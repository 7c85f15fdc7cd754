"""Builds and runs one evaluation: datasets -> prompts -> one Ray Data stream
through the model's Serve deployment -> per-row Parquet -> summary.

Every dataset of the model goes through the same stream, so the engine stays
busy and the model is loaded once per replica for the whole run.
"""
from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from raveval.tasks import prompts
from raveval.config.compose import save_config
from raveval.tasks.scoring import score_row
from raveval.config.schema import DatasetConfig, ModelConfig
from raveval.run.config import RunConfig
from raveval.results.store import Store, row_key

# Columns the Serve replica needs from each request row.
REQUEST_FIELDS = ["mode", "chat", "prompt", "continuations", "params"]
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


@dataclass
class DatasetPlan:
    name: str
    cfg: DatasetConfig
    requests: list[dict] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None  # why it cannot be evaluated at all
    rows: list[dict] = field(default_factory=list)  # the loaded rows (judged datasets build on them)
    judge_requests: list[dict] = field(default_factory=list)  # filled by the judge pass


@dataclass
class Plan:
    cfg: RunConfig
    model_id: dict
    datasets: list[DatasetPlan]

    @property
    def requests(self) -> list[dict]:
        return [r for d in self.datasets for r in d.requests]


def model_identity(m: ModelConfig) -> dict:
    """What makes two models' outputs differ (not replicas or batch size)."""
    ident = {"name": m.name, "engine": m.engine, "path": m.path, "dtype": m.dtype,
             "max_model_len": m.max_model_len, "engine_args": m.engine_args}
    # Weight and cache quantization change outputs; added only when set, so other keys stay as they were.
    if m.engine == "vllm" and m.vllm_settings.quantization:
        ident["quantization"] = m.vllm_settings.quantization
    if m.engine == "lmdeploy":
        lm = m.lmdeploy_settings
        ident.update(backend=lm.backend, quant_policy=lm.quant_policy, model_format=lm.model_format)
    return ident


def _gen_params(d: DatasetConfig) -> str:
    g = d.generation
    return json.dumps({"max_new_tokens": g.max_new_tokens, "temperature": g.temperature, "top_p": g.top_p,
                       "top_k": g.top_k, "stop": list(g.stop), "seed": g.seed}, sort_keys=True)


def build_requests(name: str, d: DatasetConfig, loaded, model: ModelConfig, model_id: dict) -> list[dict]:
    chat = d.prompt.format == "chat"
    params = _gen_params(d) if d.mode == "gen" else ""
    out = []
    for row in loaded.rows:
        if d.mode == "ll" and not row["choices"]:
            raise prompts.PromptError(f"row {row['row_id']!r} has no choices, so it cannot run in ll mode")
        shots = prompts.pick_shots(d, loaded.fewshot, row)
        text, is_chat = prompts.encode_prompt(prompts.build_prompt(d, row, shots))
        conts = prompts.continuations(row, chat) if d.mode == "ll" else []
        out.append({
            "key": row_key(model_id, name, row["row_id"], text, conts, params, d.mode),
            "model": model.name, "dataset": name, "subject": row["subject"], "row_id": row["row_id"],
            "mode": d.mode, "chat": is_chat, "prompt": text, "continuations": conts, "params": params,
            "choices": list(row["choices"]), "gold": row["gold"],
            # Judged datasets have no gold answer: the judge stage scores them.
            "answer": "judge" if d.judge is not None else d.answer, "turn": 1,
        })
    return out


def make_plan(cfg: RunConfig) -> Plan:
    """Load every dataset and build its request rows; a failure marks that dataset only."""
    from raveval.tasks.benchmarks import load_dataset
    from raveval.tasks.judging import check as judge_check

    model_id = model_identity(cfg.model)
    plans = []
    for name, d in cfg.datasets.items():
        p = DatasetPlan(name, d)
        try:
            prompts.check(d)
            judge_check(name, d)
            loaded = load_dataset(name, d)
            p.groups = loaded.groups
            p.rows = loaded.rows
            p.requests = build_requests(name, d, loaded, cfg.model, model_id)
            if not p.requests:
                p.error = f"dataset {name}: no rows to evaluate (check path, subjects and limit)"
        except (ValueError, OSError) as e:
            p.error = f"dataset {name}: {e}"
        plans.append(p)
    return Plan(cfg, model_id, plans)


def describe(plan: Plan, finished: set[str] = frozenset()) -> str:
    """The plan in words: what --dry-run prints."""
    from raveval.config.compose import redact
    from raveval.engines import replica_resources

    m = plan.cfg.model
    res = replica_resources(m).describe()
    lines = [
        f"model {m.name}: engine={m.engine} path={m.path} dtype={m.dtype} batch_size={m.batch_size}",
        f"  replicas: {m.replicas} x ({res})",
        *([f"  vllm: device={m.device} max_model_len={m.max_model_len} "
           + " ".join(f"{k}={v}" for k, v in m.vllm_settings.model_dump().items())
           + (f" engine_args={redact(m.engine_args)}" if m.engine_args else "")] if m.engine == "vllm" else []),
        f"  callers: {plan.cfg.model_stream.callers} x {plan.cfg.model_stream.calls_per_caller} calls in flight, {plan.cfg.model_stream.batch_rows} rows per call (num_cpus=0)",
        f"work_dir: {plan.cfg.work_dir}   ray: {plan.cfg.ray_address}",
        "datasets:",
    ]
    for d in plan.datasets:
        if d.error:
            lines.append(f"  {d.name}: CANNOT RUN: {d.error}")
            continue
        done = sum(r["key"] in finished for r in d.requests)
        subjects = len({r['subject'] for r in d.requests})
        lines.append(f"  {d.name}: {d.cfg.loader} mode={d.cfg.mode} format={d.cfg.prompt.format} k_shot={d.cfg.prompt.k_shot} "
                     f"rows={len(d.requests)} subjects={subjects} finished={done}")
        if d.cfg.judge is not None:
            j, e = d.cfg.judge, plan.cfg.judges[d.cfg.judge.endpoint]
            vs = f" vs {j.baseline}" + (" (both orders)" if j.both_orders else "") if j.mode == "pairwise" else ""
            lines.append(f"    judge: {j.mode}{vs} by {j.endpoint} ({e.model} at {e.base_url}; "
                         f"{e.requests_per_minute or 'no limit'} req/min, {e.tokens_per_minute or 'no limit'} tok/min "
                         f"for the whole cluster; {e.max_concurrent} in flight over {plan.cfg.judge_stream.callers} callers)")
    total = len(plan.requests)
    todo = sum(r["key"] not in finished for r in plan.requests)
    lines.append(f"total rows: {total}, to run: {todo}")
    return "\n".join(lines)


class ServeCaller:
    """Ray Data stage: one Serve call per batch; takes no CPU (it only waits)."""

    def __init__(self, app: str):
        from ray import serve

        from raveval.serving.replica import wait_ready

        self.handle = serve.get_deployment_handle("model", app)
        self.ready = None  # one readiness wait shared by the calls in flight
        self._wait_ready = lambda: wait_ready(app)

    async def __call__(self, batch: pa.Table) -> pa.Table:
        if self.ready is None:
            self.ready = asyncio.ensure_future(self._wait_ready())
        await self.ready  # a model that cannot start stops the run here, before any row is sent
        reqs = batch.select(REQUEST_FIELDS).to_pylist()
        try:
            results = await self.handle.run_batch.remote(reqs)
        except Exception as e:  # replica lost: the rows become error rows, a re-run retries them
            err = f"{type(e).__name__}: {e}"
            results = [{"error": err} for _ in reqs]
        return add_results(batch, results)


def add_results(batch: pa.Table, results: list[dict]) -> pa.Table:
    """Score each row and append the result columns."""
    cols = {f.name: [] for f in RESULT_SCHEMA}
    meta = batch.select(["mode", "answer", "gold", "choices"]).to_pylist()
    for m, r in zip(meta, results):
        err = r.get("error")
        text, logprobs = r.get("text"), r.get("logprobs")
        if err or m["answer"] == "judge":
            pred, correct = None, None
        else:
            pred, correct = score_row(m["mode"], m["answer"], m["gold"], len(m["choices"]), text, logprobs)
        cols["prediction"].append(None if err else (pred if m["mode"] == "ll" else text))
        cols["logprobs"].append(logprobs)
        cols["answer_pred"].append(pred)
        cols["correct"].append(correct)
        cols["error"].append(err)
        cols["latency_s"].append(r.get("latency_s"))
        cols["prompt_tokens"].append(r.get("prompt_tokens"))
        cols["output_tokens"].append(r.get("output_tokens"))
    for f in RESULT_SCHEMA:
        batch = batch.append_column(f, pa.array(cols[f.name], type=f.type))
    return batch


def init_ray(address: str, temp_dir: str | None = None, http_port: int | None = None) -> None:
    """Start (or join) Ray and Serve. Serve's HTTP proxy runs only when asked
    for (`http_port`: a model serves an OpenAI-compatible route, e.g. as a judge)."""
    import ray
    from ray import serve

    if ray.is_initialized():
        return
    if address == "local":
        ray.init(address="local", include_dashboard=False, _temp_dir=temp_dir)
        if http_port:
            serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": http_port},
                        logging_config={"enable_access_log": False})
        else:
            serve.start(proxy_location="Disabled", logging_config={"enable_access_log": False})
    else:
        ray.init(address=address)


def stream(cfg: RunConfig, requests: list[dict], store: Store, log=print) -> dict:
    """Run the request rows through the model and write each finished batch."""
    from raveval.serving.replica import app_name, deploy

    t0 = time.perf_counter()
    init_ray(cfg.ray_address, http_port=cfg.http_port if cfg.model.http_route else None)
    max_ongoing = cfg.model_stream.callers * cfg.model_stream.calls_per_caller * 2
    _check_resources(cfg)
    deploy(cfg.model, max_ongoing)
    log(f"model {cfg.model.name} deploying ({time.perf_counter() - t0:.1f}s); streaming {len(requests)} rows")
    ready = _time_ready(app_name(cfg.model))

    batches = caller_stream(requests, ServeCaller, {"app": app_name(cfg.model)}, cfg.model_stream.batch_rows,
                            cfg.model_stream.callers, cfg.model_stream.calls_per_caller)
    first_row = None
    written = 0
    for batch in batches:
        if first_row is None:
            first_row = time.perf_counter()
        store.write_part(batch)
        written += batch.num_rows
    t_end = time.perf_counter()
    ready.join(timeout=5)  # rows came back, so the app was serving
    t_ready = ready.at or t_end
    return {"rows": written, "ready_s": t_ready - t0, "first_batch_s": (first_row or t_end) - t0,
            "wall_s": t_end - t0, "rows_per_s": written / max(t_end - t_ready, 1e-9)}


def pool_size(n_rows: int, batch_rows: int, callers: int) -> int:
    """Caller actors for a stream: no more than its blocks, since an idle caller only costs start-up."""
    return max(1, min(callers, math.ceil(n_rows / batch_rows)))


def caller_stream(requests: list[dict], caller, ctor_kwargs: dict, batch_rows: int, callers: int,
                  calls_per_caller: int):
    """Rows through a pool of CPU-free caller actors (they only wait on Serve or
    HTTP), one call per batch of `batch_rows`; yields the finished batches."""
    import ray
    from ray.data import ActorPoolStrategy

    table = pa.Table.from_pylist(requests)
    n_blocks = max(1, min(math.ceil(len(requests) / batch_rows), 2000))
    step = math.ceil(len(requests) / n_blocks)
    blocks = [table.slice(i, step) for i in range(0, len(requests), step)]
    ds = ray.data.from_arrow(blocks).map_batches(
        caller,
        fn_constructor_kwargs=ctor_kwargs,
        batch_size=batch_rows,
        batch_format="pyarrow",
        num_cpus=0,
        compute=ActorPoolStrategy(size=pool_size(len(requests), batch_rows, callers),
                                  max_concurrent_calls_per_actor=calls_per_caller),
    )
    return ds.iter_batches(batch_size=None, batch_format="pyarrow")


def _check_resources(cfg: RunConfig) -> None:
    """On a local Ray nothing will ever add GPUs: fail now instead of waiting forever."""
    import ray

    if cfg.ray_address != "local":
        return  # an autoscaling cluster may add the nodes
    from raveval.engines import replica_resources

    m = cfg.model
    r = replica_resources(m)
    have = ray.cluster_resources()
    for res, per in (("GPU", r.total_gpus), ("CPU", r.num_cpus)):
        need = per * m.replicas
        if need > have.get(res, 0):
            raise RuntimeError(f"model {m.name}: {m.replicas} replica(s) x {res.lower()}s={per} need {need} {res}, "
                               f"this machine's Ray has {have.get(res, 0)}")


def _time_ready(app: str) -> threading.Thread:
    """A thread that notes when the app starts serving (`.at`), for the start-up figure;
    the stream itself does not wait for it."""
    from raveval.serving.replica import ModelStartError, wait_ready

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


@dataclass
class RunResult:
    plan: Plan
    summary: pa.Table
    failed: list[str]  # datasets that could not be evaluated at all, with the reason
    stats: dict
    files: list[Path]


def run(cfg: RunConfig, log=print) -> RunResult:
    """The whole evaluation: plan, stream what is not finished yet, summarize."""
    from raveval.results.summary import markdown, summarize

    work = Path(cfg.work_dir)
    save_config(cfg, work)
    store = Store(work)
    plan = make_plan(cfg)
    finished = store.finished_keys() if cfg.resume else set()
    todo = [r for r in plan.requests if r["key"] not in finished]
    log(describe(plan, finished))
    stats = {"rows": 0, "reused": len(plan.requests) - len(todo)}
    if todo:
        stats.update(stream(cfg, todo, store, log))
    judgements = None
    if any(d.cfg.judge is not None and not d.error for d in plan.datasets):
        from raveval.stream.judge_stage import read_judgements, run_judging

        stats.update(run_judging(cfg, plan, store, log))
        judgements = read_judgements(work)
    summary, failed = summarize(plan, store.read(), judgements)
    files = store.write_summary(summary, markdown(summary))
    return RunResult(plan, summary, failed, stats, files)


def shutdown(cfg: RunConfig) -> None:
    """Stop what this run started: the local Ray, or only our app on a shared cluster."""
    import ray

    if not ray.is_initialized():
        return
    if cfg.ray_address == "local":
        ray.shutdown()
    else:
        from ray import serve

        from raveval.serving.replica import app_name

        serve.delete(app_name(cfg.model))
