"""The plan of a run: every dataset loaded and turned into request rows with
stable keys, before anything starts; `describe` is what `--dry-run` prints.
A dataset that cannot be loaded is marked with the reason; the others run."""
from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass, field

from raveval.config.schema import DatasetConfig
from raveval.config.secrets import public_url
from raveval.results.workdir import display
from raveval.run.config import RunConfig
from raveval.tasks import prompts
from raveval.tasks.benchmarks import load_dataset
from raveval.tasks.judging import check as judge_check, prompts_used
from raveval.tasks.request import JudgeRequest, Request, bad_requests, build_requests


@dataclass
class DatasetPlan:
    name: str
    cfg: DatasetConfig
    requests: list[Request] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None  # why it cannot be evaluated at all
    rows: list[dict] = field(default_factory=list)  # the loaded rows (judged datasets build on them)
    judge_requests: list[JudgeRequest] = field(default_factory=list)  # filled by the judge pass
    # Records of the file that are not rows: key -> why; never sent, written as error rows.
    # Their requests are in `requests`, so the summary counts them.
    bad: dict[str, str] = field(default_factory=dict)


@dataclass
class Plan:
    cfg: RunConfig
    model_id: dict
    datasets: list[DatasetPlan]

    @property
    def requests(self) -> list[Request]:
        return [r for d in self.datasets for r in d.requests]

    @property
    def bad(self) -> dict[str, str]:
        return {k: why for d in self.datasets for k, why in d.bad.items()}


@contextmanager
def _no_gc():
    """A plan is millions of small objects without cycles: the cyclic collector would
    scan them again and again as they are made (a third of the plan's time on
    200,000 rows). Afterwards they are frozen: they live as long as the run, and
    later collections (while rows stream) skip them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.freeze()


def make_plan(cfg: RunConfig) -> Plan:
    """Load every dataset and build its request rows; a failure marks that dataset only."""
    with _no_gc():
        return _make_plan(cfg)


def _make_plan(cfg: RunConfig) -> Plan:
    model_id = cfg.model.identity()
    plans = []
    for name, d in cfg.datasets.items():
        p = DatasetPlan(name, d)
        try:
            prompts.check(d)
            judge_check(name, d)
            loaded = load_dataset(name, d)
            p.groups = loaded.groups
            p.rows = loaded.rows
            p.requests = build_requests(name, d, loaded, cfg.model.name, model_id)
            bad = bad_requests(name, d, loaded, cfg.model.name, model_id)
            if not p.requests and not bad:
                p.error = f"dataset {name}: no rows to evaluate (check path, subjects and limit)"
            elif not p.requests:
                p.error = (f"dataset {name}: none of its {len(bad)} records can be read "
                           f"(first: {next(iter(bad.values()))[1]})")
            p.requests += [r for r, _ in bad.values()]
            p.bad = {k: why for k, (_, why) in bad.items()}
        except (ValueError, OSError) as e:
            p.error = f"dataset {name}: {e}"
        plans.append(p)
    return Plan(cfg, model_id, plans)


def describe(plan: Plan, finished: set[str] = frozenset()) -> str:
    """The plan in words: what --dry-run prints."""
    cfg, m = plan.cfg, plan.cfg.model
    ms = cfg.model_stream
    lines = [
        f"model {m.name}: engine={m.engine} path={m.path} dtype={m.dtype} batch_size={m.batch_size}",
        f"  replicas: {m.describe_replicas()} x ({m.resources().describe()})",
        *m.describe(),
        f"  callers: {ms.callers} x {ms.calls_per_caller} calls in flight, {ms.batch_rows} rows per call (num_cpus=0)",
        f"work_dir: {display(cfg.work_dir)}   ray: {cfg.ray_address}",
        "datasets:",
    ]
    for d in plan.datasets:
        if d.error:
            lines.append(f"  {d.name}: CANNOT RUN: {d.error}")
            continue
        done = sum(r.key in finished for r in d.requests)
        subjects = len({r.subject for r in d.requests})
        lines.append(f"  {d.name}: {d.cfg.loader} mode={d.cfg.mode} format={d.cfg.prompt.format} "
                     f"k_shot={d.cfg.prompt.k_shot} rows={len(d.requests)} subjects={subjects} finished={done}")
        if d.bad:
            lines.append(f"    {len(d.bad)} bad record(s), evaluated as error rows; first: {next(iter(d.bad.values()))}")
        if d.cfg.judge is not None:
            j, e = d.cfg.judge, cfg.judges[d.cfg.judge.endpoint]
            vs = f" vs {j.baseline}" + (" (both orders)" if j.both_orders else "") if j.mode == "pairwise" else ""
            lines.append(f"    judge: {j.mode}{vs} by {j.endpoint} ({e.model} at {public_url(e.base_url)}; "
                         f"{e.requests_per_minute or 'no limit'} req/min, {e.tokens_per_minute or 'no limit'} tok/min "
                         f"for the whole cluster; {e.max_concurrent} in flight over {cfg.judge_stream.callers} callers)")
            lines.append(f"    judge prompts: {prompts_used(d.cfg)}")
    total = len(plan.requests)
    todo = sum(r.key not in finished and r.key not in plan.bad for r in plan.requests)
    lines.append(f"total rows: {total}, to run: {todo}")
    return "\n".join(lines)
