"""One evaluation: plan -> the model's and the judge's streams at once -> summary.

Every dataset of the model goes through the same model deployment, so the
engine stays busy and the model is loaded once per replica for the whole run;
later turns and judgements go out as soon as the answers they need exist
(run.pipeline). Each finished batch is written to Parquet as it comes back; a
re-run with the same work_dir computes only the rows not finished yet.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from raveval.config.compose import config_yaml
from raveval.http.keys import read_key
from raveval.http.preflight import preflight
from raveval.results.lock import WorkDirLock
from raveval.results.store import JUDGEMENTS, Store
from raveval.results.workdir import WorkDir
from raveval.results.summary import keep_previous, markdown, summarize
from raveval.run.config import RunConfig
from raveval.run.pipeline import Pipeline, start_ray
from raveval.run.plan import Plan, describe, make_plan
from raveval.serving.deploy import app_name, delete as delete_app, delete_deployed, forget_deployed
from raveval.stream.model_stage import error_rows as model_error_rows
from raveval.tasks.benchmarks import benchmark


@dataclass
class RunResult:
    plan: Plan
    summary: pa.Table
    failed: list[str]  # datasets that could not be evaluated at all, with the reason
    stats: dict
    files: list[str]


def new_run_id(model_name: str) -> str:
    """`<model name>-<yyyymmdd-hhmmss>-<4 hex>`: readable, sorts by start time, unique."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name).strip("-") or "model"
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


# The stored columns the summary and the submissions read.
SUMMARY_READS = ["key", "subject", "row_id", "correct", "answer_pred", "error"]
RUN_FILE = "run.json"  # the latest run on a work_dir: run id, host, pid, times, Serve app, status, replicas

def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _write_run_file(work: WorkDir, record: dict) -> None:
    work.write_bytes((json.dumps(record, indent=1) + "\n").encode(), RUN_FILE)


def replica_rows(served: Counter) -> list[dict]:
    """run.json's `replicas`: the rows each replica computed in this run, and its node."""
    return [{"replica": r, "node_id": n, "rows": c} for (n, r), c in sorted(served.items())]


def run(cfg: RunConfig, log=print, stop: threading.Event | None = None) -> RunResult:
    """The whole evaluation: plan, stream what is not finished yet, judge, summarize.
    Holds the work_dir's lock throughout (`WorkDirLocked` if another run holds it);
    the run's Serve app is named after its run id and deleted when the run ends.
    `stop`: another thread sets it to end the run (pipeline.Stopped is raised then)."""
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
            result = _evaluate(cfg, work, run_id, log, served, stop)
            record["serve_app"] = result.stats.get("serve_app", app)  # a warm deployment, if one served the run
            ok, status = True, "finished"
        except Exception:
            status = "failed"
            raise
        finally:
            _write_run_file(work, {**record, "finished": _now(), "status": status, "replicas": replica_rows(served)})
            # On a cluster a finished run's replicas are idle: wait until they are
            # gone (the resources are free for the next job). On a local Ray, or
            # after an error, only ask Serve to delete them, so the run ends now;
            # on an interrupt of a local run, Ray itself goes next.
            try:
                if status != "interrupted" or cfg.ray_address != "local":
                    delete_app(app, wait=ok and cfg.ray_address != "local")
            except Exception as e:
                if ok:
                    raise
                log(f"raveval: could not delete Serve app {app}: {type(e).__name__}: {e}")
    return result


def _evaluate(cfg: RunConfig, work: WorkDir, run_id: str, log, served: Counter,
              stop: threading.Event | None = None) -> RunResult:
    store = Store(work, log=log)
    plan = _plan_while_ray_starts(cfg, log) if _will_stream(cfg, store) else make_plan(cfg)
    stored = store.read(columns=["key", "dataset", "prediction", "error"]) if cfg.resume else None
    finished, answers = set(), {}
    if stored is not None:
        judged = {d.name for d in plan.datasets if d.cfg.judge is not None}
        for r in stored.filter(pc.is_null(stored.column("error"))).to_pylist():
            finished.add(r["key"])
            if r["dataset"] in judged:  # later turns and judgements build on these
                answers[r["key"]] = r
    bad = plan.bad
    todo = [r for r in plan.requests if r.key not in finished and r.key not in bad]
    log(describe(plan, finished))
    stats = {"run_id": run_id, "reused": len(plan.requests) - len(todo) - len(bad)}
    _write_bad_rows(plan, store)
    jstore = Store(work, JUDGEMENTS)
    flow = Pipeline(cfg, plan, store, jstore, answers, log, run_id=run_id, served=served, stop=stop)
    s = flow.run(todo, lambda judges, model: _preflight(cfg, judges, log, model=model))
    stats["reused"] += s.pop("reused", 0)  # later-turn rows count like the first turn's
    stats.update(s)
    stats.setdefault("rows", 0)
    judgements = jstore.read() if flow.judged else None
    results = store.read(columns=SUMMARY_READS)  # not the prompts: a large run's summary reads a fraction
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


def _will_stream(cfg: RunConfig, store: Store) -> bool:
    """Whether the run will surely need Ray: nothing stored to reuse, and every dataset
    file is there (a mistyped path fails at once, without starting Ray for nothing)."""
    paths = [p for d in cfg.datasets.values() for p in (d.path, d.fewshot_path) if p]
    return all(os.path.exists(p) for p in paths) and not (cfg.resume and store.parts())


def _plan_while_ray_starts(cfg: RunConfig, log) -> Plan:
    """Build the plan in a thread while Ray starts (a local Ray takes seconds). Ray
    starts here, not in the thread: the processes of a local Ray die with the thread
    that started them."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="raveval-plan")
    try:
        planned = pool.submit(make_plan, cfg)
        start_ray(cfg, log)
        return planned.result()
    finally:
        pool.shutdown(wait=False)  # an interrupt need not wait for the plan


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
