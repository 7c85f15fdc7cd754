"""One evaluation: plan -> model stage -> later turns -> judge stage -> summary.

Every dataset of the model goes through the same model stage, so the engine
stays busy and the model is loaded once per replica for the whole run. Each
finished batch is written to Parquet as it comes back; a re-run with the same
work_dir computes only the rows not finished yet.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import socket
import time
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

from raveval.config.compose import config_yaml
from raveval.http.keys import MissingApiKey, read_key
from raveval.http.limiter import ensure_shared_limiter
from raveval.http.preflight import preflight
from raveval.results.lock import WorkDirLock
from raveval.results.store import JUDGEMENTS, Store
from raveval.results.workdir import WorkDir
from raveval.results.summary import keep_previous, markdown, summarize
from raveval.run.config import RunConfig
from raveval.run.plan import Plan, describe, make_plan
from raveval.serving.deploy import (ModelStartError, app_name, delete as delete_app, delete_deployed, deploy,
                                    forget_deployed, running_warm, watch_ready)
from raveval.stream.cluster import check_resources, init_ray
from raveval.stream.judge_stage import error_rows, judge_stream
from raveval.stream.metrics import StreamMetrics
from raveval.stream.model_stage import error_rows as model_error_rows, model_stage
from raveval.stream.progress import Progress
from raveval.tasks import judging
from raveval.tasks.benchmarks import benchmark
from raveval.tasks.request import Request, to_table


@dataclass
class RunResult:
    plan: Plan
    summary: pa.Table
    failed: list[str]  # datasets that could not be evaluated at all, with the reason
    stats: dict
    files: list[str]


def start_ray(cfg: RunConfig, log=print) -> None:
    for line in init_ray(cfg.ray_address, http_port=cfg.http_port if cfg.model.http_route else None):
        log(line)


def model_pass(cfg: RunConfig, requests: list[Request], store: Store, log=print, *, run_id: str,
               served: Counter) -> dict:
    """Run the request rows through the model's deployment and write each finished
    batch; `served` counts the rows each (node, replica) computed."""
    t0 = time.perf_counter()
    # On a cluster the weights may live on the GPU nodes only; here a missing path can only fail.
    missing = cfg.ray_address == "local" and cfg.model.missing_weights()
    if missing:
        raise ModelStartError(f"model {cfg.model.name}: {missing}")
    # The driver reads the API model's key (engine openai) and hands it to the replicas.
    api_key = read_key(cfg.model.endpoint(), f"model {cfg.model.name}")
    start_ray(cfg, log)
    check_resources(cfg.model, local=cfg.ray_address == "local")
    ms = cfg.model_stream
    # A warm deployment of the same model (raveval serve up) serves the run; it is not the run's to delete.
    warm = running_warm(cfg.model)
    app = warm or deploy(cfg.model, max_ongoing=ms.callers * ms.calls_per_caller * 2, run_id=run_id, api_key=api_key)
    log(f"model {cfg.model.name} " + (f"on the warm deployment {warm}" if warm else "deploying")
        + f" ({time.perf_counter() - t0:.1f}s); streaming {len(requests)} rows")
    need = f"{cfg.model.min_replicas} x ({cfg.model.resources().describe()})"
    ready = watch_ready(app, log, cfg.startup_timeout_s, need)
    # Calls in flight scale with the replicas: `callers` callers per replica keep each one busy.
    per_replica = ms.model_copy(update={"callers": ms.callers * cfg.model.max_replicas})
    first_row = None
    written = 0
    batches = model_stage(app, per_replica, cfg.startup_timeout_s).run(to_table(requests))
    progress = Progress("model", Counter(r.dataset for r in requests), log)
    metrics = StreamMetrics("model", run_id, cfg.model.name)
    try:
        for batch in batches:
            if first_row is None:
                first_row = time.perf_counter()
            store.write_part(batch)
            progress.update(batch)
            metrics.update(batch, progress.rate())
            written += batch.num_rows
            served.update(w for w in zip(batch.column("node_id").to_pylist(), batch.column("replica").to_pylist())
                          if w[1] is not None)
    except BaseException:
        progress.close()
        batches.close()  # stops the stream's executor before anything shuts Ray down
        ready.stop = True  # before Ray goes: the watcher would start it again
        ready.join(timeout=5)
        if ready.error:  # the stream failed because the model could not start: say why, once
            raise ModelStartError(f"model {cfg.model.name}: {ready.error}") from None
        raise
    t_end = time.perf_counter()
    progress.close()
    ready.join(timeout=5)  # rows came back, so the app was serving
    ready.stop = True
    t_ready = ready.at or t_end
    return {"rows": written, "serve_app": app, "ready_s": t_ready - t0,
            "first_batch_s": (first_row or t_end) - t0, "wall_s": t_end - t0,
            "rows_per_s": written / max(t_end - t_ready, 1e-9)}


def later_turns(cfg: RunConfig, plan: Plan, store: Store, log=print, *, run_id: str,
                served: Counter) -> dict:
    """Multi-turn datasets (MT-Bench): turn k asks the chat of turns 1..k-1 with
    the model's own answers, so each turn is a model pass after the one before."""
    judged = [d for d in plan.datasets if d.cfg.judge is not None and not d.error]
    stats: dict = {}
    max_turns = max((judging.n_turns(r) for d in judged for r in d.rows), default=1)
    for turn in range(2, max_turns + 1):
        preds = _predictions(store)
        new = []
        for d in judged:
            more = judging.followup_requests(d, turn, preds, plan.model_id)
            d.requests.extend(more)
            new += more
        finished = store.finished_keys() if cfg.resume else set()
        todo = [r for r in new if r.key not in finished]
        log(f"turn {turn}: {len(new)} rows, {len(todo)} to run")
        stats["reused"] = stats.get("reused", 0) + len(new) - len(todo)
        if todo:
            s = model_pass(cfg, todo, store, log, run_id=run_id, served=served)
            stats["rows_turn"] = stats.get("rows_turn", 0) + s["rows"]
    return stats


def judge_pass(cfg: RunConfig, plan: Plan, store: Store, log=print, run_id: str = "") -> dict:
    """Judge every answer of the judged datasets: skip the judgements already in
    judgements/, write the ones that cannot be asked as error rows, stream the rest."""
    judged = [d for d in plan.datasets if d.cfg.judge is not None and not d.error]
    preds = _predictions(store)
    reqs = []
    for d in judged:
        endpoint = cfg.judges[d.cfg.judge.endpoint].model_dump()
        d.judge_requests = judging.judge_requests(d, preds, endpoint, cfg.model.name)
        reqs += d.judge_requests

    stats: dict = {"judged": 0, "judge_errors": 0}
    jstore = Store(store.work, JUDGEMENTS)
    finished = jstore.finished_keys() if cfg.resume else set()
    pending = [r for r in reqs if r.key not in finished]
    # The driver reads each judge's key once and hands it to the callers (they may run on
    # nodes without it). Endpoints whose key is not set here cannot be asked: their rows fail with that reason.
    api_keys, missing_key = {}, {}
    for n in sorted({r.endpoint for r in pending}):
        try:
            api_keys[n] = read_key(cfg.judges[n], f"judge {n}")
        except MissingApiKey as e:
            missing_key[n] = str(e)
    failed = [(r, r.pre_error or missing_key.get(r.endpoint)) for r in pending]
    failed = [(r, why) for r, why in failed if why]
    todo = [r for r in pending if not r.pre_error and r.endpoint not in missing_key]
    log(f"judging: {len(reqs)} judgements, {len(reqs) - len(pending)} reused, {len(todo)} to ask, "
        f"{len(failed)} cannot be asked")
    if failed:
        jstore.write_part(error_rows([r for r, _ in failed], [why for _, why in failed]))
        stats["judge_errors"] += len(failed)
    if todo:
        used = sorted({r.endpoint for r in todo})
        if cfg.preflight:
            _preflight(cfg, set(used), log)
        start_ray(cfg, log)
        for name in used:
            ensure_shared_limiter(cfg.judges[name])  # owned by the driver: one budget for the whole run
        s = judge_stream(todo, {n: cfg.judges[n].model_dump() for n in used},
                         {n: api_keys[n] for n in used if api_keys[n] is not None}, jstore, cfg.judge_stream, log=log,
                         metrics=StreamMetrics("judge", run_id, cfg.model.name))
        stats.update(judged=s["judged"], judge_errors=stats["judge_errors"] + s["judge_errors"],
                     judge_wall_s=s["judge_wall_s"])
    return stats


def _predictions(store: Store) -> dict[str, dict]:
    table = store.read(columns=["key", "prediction", "error"])
    return {} if table is None else {r["key"]: r for r in table.to_pylist()}


def new_run_id(model_name: str) -> str:
    """`<model name>-<yyyymmdd-hhmmss>-<4 hex>`: readable, sorts by start time, unique."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name).strip("-") or "model"
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


RUN_FILE = "run.json"  # the latest run on a work_dir: run id, host, pid, times, Serve app, status, replicas

def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _write_run_file(work: WorkDir, record: dict) -> None:
    work.write_bytes((json.dumps(record, indent=1) + "\n").encode(), RUN_FILE)


def replica_rows(served: Counter) -> list[dict]:
    """run.json's `replicas`: the rows each replica computed in this run, and its node."""
    return [{"replica": r, "node_id": n, "rows": c} for (n, r), c in sorted(served.items())]


def run(cfg: RunConfig, log=print) -> RunResult:
    """The whole evaluation: plan, stream what is not finished yet, judge, summarize.
    Holds the work_dir's lock throughout (`WorkDirLocked` if another run holds it);
    the run's Serve app is named after its run id and deleted when the run ends."""
    run_id = new_run_id(cfg.model.name)
    work = WorkDir(cfg.work_dir)
    with WorkDirLock(work, run_id, log=log):
        app = app_name(cfg.model, run_id)
        log(f"run {run_id}: work_dir {work}, Serve app {app}")
        record = {"run_id": run_id, "model": cfg.model.name, "host": socket.gethostname(), "pid": os.getpid(),
                  "ray_address": cfg.ray_address, "serve_app": app, "started": _now(), "status": "running"}
        _write_run_file(work, record)
        ok, status = False, "interrupted"  # unless it finishes, or fails with an error
        served: Counter = Counter()  # (node, replica) -> rows, also for a run that stops early
        try:
            result = _evaluate(cfg, work, run_id, log, served)
            record["serve_app"] = result.stats.get("serve_app", app)  # a warm deployment, if one served the run
            ok, status = True, "finished"
        except Exception:
            status = "failed"
            raise
        finally:
            _write_run_file(work, {**record, "finished": _now(), "status": status, "replicas": replica_rows(served)})
            # A finished run's replicas are idle: wait until they are gone. On an
            # error only ask Serve to delete them, so the run ends now; on an
            # interrupt of a local run, Ray itself goes next.
            try:
                if status != "interrupted" or cfg.ray_address != "local":
                    delete_app(app, wait=ok)
            except Exception as e:
                if ok:
                    raise
                log(f"raveval: could not delete Serve app {app}: {type(e).__name__}: {e}")
    return result


def _evaluate(cfg: RunConfig, work: WorkDir, run_id: str, log, served: Counter) -> RunResult:
    store = Store(work, log=log)
    plan = make_plan(cfg)
    finished = store.finished_keys() if cfg.resume else set()
    bad = plan.bad
    todo = [r for r in plan.requests if r.key not in finished and r.key not in bad]
    log(describe(plan, finished))
    stats = {"run_id": run_id, "rows": 0, "reused": len(plan.requests) - len(todo) - len(bad)}
    _write_bad_rows(plan, store)
    if cfg.preflight and todo:  # judges too: they will be asked once the answers exist
        judges = {d.cfg.judge.endpoint for d in plan.datasets if d.cfg.judge is not None and not d.error}
        _preflight(cfg, judges, log, model=True)
    if todo:
        stats.update(model_pass(cfg, todo, store, log, run_id=run_id, served=served))
    judgements = None
    if any(d.cfg.judge is not None and not d.error for d in plan.datasets):
        turns = later_turns(cfg, plan, store, log, run_id=run_id, served=served)
        stats["reused"] += turns.pop("reused", 0)  # later-turn rows count like the first turn's
        stats.update(turns)
        stats.update(judge_pass(cfg, plan, store, log, run_id=run_id))
        judgements = Store(work, JUDGEMENTS).read()
    results = store.read()
    summary, failed = summarize(plan, results, judgements)
    # A dataset that could not be loaded keeps the numbers of the last run that had it,
    # and the config of that run stays beside them.
    broken = [d.name for d in plan.datasets if d.error]
    if broken:
        summary = keep_previous(summary, store.read_summary(), broken)
    if not broken or not work.exists("config.yaml"):
        work.write_bytes(config_yaml(cfg).encode(), "config.yaml")
    files = store.write_summary(summary, markdown(summary)) + _write_submissions(plan, results, work)
    return RunResult(plan, summary, failed, stats, files)


def _write_submissions(plan: Plan, results: pa.Table | None, work: WorkDir) -> list[str]:
    """For a split without gold answers whose benchmark has a leaderboard file (C-Eval
    test), `submissions/<dataset>.json` from this run's predictions."""
    files = []
    by_key = {} if results is None else {r["key"]: r for r in results.select(
        ["key", "subject", "row_id", "answer_pred", "error"]).to_pylist()}
    for d in plan.datasets:
        make = benchmark(d.cfg.loader).submission
        rows = [r for r in d.requests if r.key not in d.bad]
        if d.error or make is None or not rows or any(r.gold for r in rows):
            continue
        preds = [by_key.get(r.key) or {"subject": r.subject, "row_id": r.row_id} for r in rows]
        work.write_bytes(json.dumps(make(preds), ensure_ascii=False, indent=1).encode(), "submissions", f"{d.name}.json")
        files.append(f"{work}/submissions/{d.name}.json")
    return files


def _preflight(cfg: RunConfig, judges: set[str], log, model: bool = False) -> None:
    """The endpoints about to be asked (the API model under test if `model`, the named
    judges) answer, take their keys and serve their models; else one line within
    seconds (PreflightFailed, MissingApiKey) before anything is generated or asked."""
    endpoints = []
    if model and cfg.model.endpoint() is not None:
        who = f"model {cfg.model.name}"
        endpoints.append((cfg.model.endpoint(), read_key(cfg.model.endpoint(), who), who))
    for name in sorted(judges):
        endpoints.append((cfg.judges[name], read_key(cfg.judges[name], f"judge {name}"), f"judge {name}"))
    if endpoints:
        t0 = time.perf_counter()
        preflight(endpoints)
        log(f"preflight: {', '.join(who for _, _, who in endpoints)} answer ({time.perf_counter() - t0:.1f}s)")


def _write_bad_rows(plan: Plan, store: Store) -> None:
    """Records that are not rows, as error rows naming their file and line (once:
    a later run finds them stored, and the same records are as bad as before)."""
    if not plan.bad:
        return  # nothing to write: no need to read the stored rows again
    stored = store.read(columns=["key", "error"])
    have = {} if stored is None else dict(zip(stored.column("key").to_pylist(), stored.column("error").to_pylist()))
    new = [(r, plan.bad[r.key]) for r in plan.requests if r.key in plan.bad and have.get(r.key) != plan.bad[r.key]]
    if new:
        store.write_part(model_error_rows([r for r, _ in new], [why for _, why in new]))


def shutdown(cfg: RunConfig) -> None:
    """Stop what this run started: the local Ray, or on a shared cluster only the
    Serve apps this process created (never another run's)."""
    import ray

    if not ray.is_initialized():
        forget_deployed()
    elif cfg.ray_address == "local":
        forget_deployed()
        ray.shutdown()
    else:
        delete_deployed(wait=True)
