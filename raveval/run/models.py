"""Many models in one run, as OpenCompass's `models = [...]`: `models: [a, b]`
in a run config (or `models=[a,b]` on the command line) names model configs of
conf/model/, and each is evaluated on the run's datasets by `evaluate.run`.

Each model is composed as if it were the config's one `model` (so its keys,
overrides and interpolations work as for one model) and gets its own
sub-directory of the run's work_dir, with its own lock, run.json, predictions
and summary: a re-run resumes each model. Each has its own Serve app. They run
side by side (a thread each) when their replicas fit in what Ray has free,
else one after another. A model that fails does not stop the others.
The top-level work_dir gets the combined summary: the long table (a model
column) as summary.{parquet,csv,md}, and the wide table (dataset, metric, a
column per model) as summary_wide.{csv,md}.
"""
from __future__ import annotations

import datetime
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa

from raveval.config.compose import ConfigError, _group_file, compose, list_configs
from raveval.results.lock import WorkDirLock
from raveval.results.store import Store
from raveval.results.summary import SUMMARY_SCHEMA, markdown, wide_csv, wide_markdown
from raveval.results.workdir import WorkDir
from raveval.run.config import RunConfig, run_config

WIDE_FILES = ("summary_wide.csv", "summary_wide.md")
# How long a signal waits for the models' threads to end their streams: their pipelines
# look up once a second (pipeline.POLL_S), then stop their waves within 2 s (waves.STOP_FAST_S).
STOP_S = 4.0


@dataclass
class ModelsRun:
    """A run of several models: the top-level work_dir and one RunConfig per
    model, whose work_dir is a sub-directory of it."""
    work_dir: str
    configs: list[RunConfig]

    @property
    def names(self) -> list[str]:
        return [c.model.name for c in self.configs]


@dataclass
class ModelsResult:
    results: dict = field(default_factory=dict)                  # model name -> its run's RunResult
    errors: dict[str, str] = field(default_factory=dict)         # model name -> why it could not be evaluated
    files: list[str] = field(default_factory=list)
    summary: pa.Table | None = None                              # the long table of every model


def load_run(config: str | None = None, overrides: list[str] = ()) -> RunConfig | ModelsRun:
    """CONFIG with overrides: a RunConfig for one `model`, a ModelsRun for `models: [...]`."""
    data, sources = compose(config, overrides)
    if "models" not in data:
        return run_config(data, sources)
    names = data["models"]
    where = _source(sources)
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"models: a list of model config names of conf/model/ is needed, got {names!r} (from {where})")
    if len(set(names)) < len(names):
        twice = sorted(n for n, k in Counter(names).items() if k > 1)
        raise ConfigError(f"models: {', '.join(twice)} listed more than once (from {where})")
    chosen = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") == "model"]
    if chosen:
        raise ConfigError(f"override {chosen[0]!r} and `models` (from {where}): give one model with model=NAME, "
                          f"or several with models=[...], not both")
    unknown = [n for n in names if _group_file("model", n) is None]
    if unknown:
        have = ", ".join(list_configs("")["model"])
        raise ConfigError(f"models: no model config {unknown[0]!r} under conf/model/ (have: {have}) (from {where})")
    # Each model as the config's `model` (`+model=` where the defaults list has none).
    pick = "model=" if sources["choices"].get("model") else "+model="
    rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "models"]
    configs = []
    for name in names:
        d, s = compose(config, [*rest, pick + name])
        d.pop("models", None)
        try:
            configs.append(run_config(d, s))
        except ConfigError as e:
            raise ConfigError(f"model {name}: {e}") from None
    return _split_work_dir(configs, names)


def _source(sources: dict) -> str:
    o = next((o for o in reversed(sources["overrides"]) if o.split("=", 1)[0].lstrip("+~") == "models"), None)
    return f"command-line override {o!r}" if o else str(sources["primary"])


def _split_work_dir(configs: list[RunConfig], names: list[str]) -> ModelsRun:
    """One work_dir for the run, a sub-directory of it per model (named after the model)."""
    tops = sorted({c.work_dir for c in configs})
    if len(tops) > 1:
        raise ConfigError(f"work_dir: the models of one run share its work_dir (each gets a sub-directory), but it "
                          f"differs by model ({', '.join(tops)}): set work_dir to one folder")
    by_dir: dict[str, str] = {}
    out = []
    for name, c in zip(names, configs):
        sub = re.sub(r"[^A-Za-z0-9._-]+", "-", c.model.name).strip("-") or "model"
        if sub in by_dir:
            raise ConfigError(f"models: {by_dir[sub]} and {name} both have model name {c.model.name!r}; the names "
                              f"must differ (they name the sub-directories and the summary's columns)")
        by_dir[sub] = name
        out.append(c.model_copy(update={"work_dir": f"{tops[0].rstrip('/')}/{sub}"}))
    return ModelsRun(tops[0], out)


def needs(configs: list[RunConfig]) -> dict[str, float]:
    """CPUs and GPUs the models' replicas (their minimum count) take together."""
    total = {"CPU": 0.0, "GPU": 0.0}
    for c in configs:
        r = c.model.resources()
        total["CPU"] += r.num_cpus * c.model.min_replicas
        total["GPU"] += r.total_gpus * c.model.min_replicas
    return total


def placement(configs: list[RunConfig], free: dict[str, float]) -> tuple[bool, str]:
    """(side by side?, why): side by side when the replicas of all models fit in `free` at once."""
    need = needs(configs)
    short = [k for k, v in need.items() if v > free.get(k, 0)]
    have = ", ".join(f"{free.get(k, 0):g} {k}" for k in need)
    want = ", ".join(f"{v:g} {k}" for k, v in need.items())
    if short:
        return False, (f"{len(configs)} models one after another: their replicas need {want} together, "
                       f"Ray has {have} free")
    return True, f"{len(configs)} models side by side: their replicas need {want} together, Ray has {have} free"


def describe_placement(configs: list[RunConfig]) -> str:
    """What --dry-run says about placement (it starts no Ray, so it cannot decide)."""
    want = ", ".join(f"{v:g} {k}" for k, v in needs(configs).items())
    return (f"{len(configs)} models: their replicas need {want} together; they run side by side if Ray has that "
            f"free when the run starts, else one after another")


def run_models(many: ModelsRun, log=print) -> ModelsResult:
    """Evaluate every model (see the module's doc); hold the top-level work_dir's
    lock throughout (`WorkDirLocked` if another run holds it)."""
    # Ray and Serve load here, not when a config is read (--dry-run, config errors).
    from raveval.run.evaluate import new_run_id

    top = WorkDir(many.work_dir)
    run_id = new_run_id("models")
    out = ModelsResult()
    with WorkDirLock(top, run_id, log=log):
        record = {"run_id": run_id, "models": {}, "started": _now(), "status": "running"}
        _write_record(top, record)
        try:
            side_by_side = _run_each(many, out, log)
        except BaseException as e:  # a signal, or Ray itself failing: the record must not say running
            _write_record(top, {**record, "finished": _now(),
                                "status": "failed" if isinstance(e, Exception) else "interrupted"})
            raise
        out.summary = _combined(many, out)
        out.files = _write_summaries(top, many.names, out.summary)
        record["models"] = {c.model.name: {"work_dir": c.work_dir,
                                           "status": "failed" if c.model.name in out.errors else "finished",
                                           **({"reason": out.errors[c.model.name]} if c.model.name in out.errors
                                              else {})} for c in many.configs}
        _write_record(top, {**record, "placement": "side by side" if side_by_side else "one after another",
                            "finished": _now(), "status": "failed" if out.errors else "finished"})
    return out


def _run_each(many: ModelsRun, out: ModelsResult, log) -> bool:
    """Run every model into `out` (results, errors), side by side when they fit; whether they did."""
    from raveval.run.evaluate import run
    from raveval.run.pipeline import Stopped
    from raveval.stream.cluster import init_ray

    # Ray starts here, in the main thread: the models' threads find it running.
    route = any(c.model.http_route for c in many.configs)
    for line in init_ray(many.configs[0].ray_address, http_port=many.configs[0].http_port if route else None):
        log(line)
    import ray

    side_by_side, why = placement(many.configs, ray.available_resources())
    log(why)

    stop = threading.Event()  # set on a signal: the models' threads end their streams

    def one(cfg: RunConfig, done: threading.Event | None = None) -> None:
        name = cfg.model.name
        try:
            out.results[name] = run(cfg, log=lambda msg: log("\n".join(f"[{name}] {ln}" for ln in str(msg).split("\n"))),
                                    stop=stop)
        except Stopped:  # the main thread says why
            pass
        except Exception as e:  # this model failed: the others go on
            out.errors[name] = _reason(e)
            log(f"[{name}] FAILED: {out.errors[name]}")
        finally:
            if done is not None:
                done.set()

    if not side_by_side:
        for c in many.configs:
            one(c)
        return False
    # Each thread says when it is done: a join cut short by a signal can leave Python
    # taking a thread that still runs for ended (is_alive() False, join() returns).
    done = [threading.Event() for _ in many.configs]
    for c, d in zip(many.configs, done):
        threading.Thread(target=one, args=(c, d), name=f"raveval-{c.model.name}", daemon=True).start()
    try:
        for d in done:
            while not d.wait(timeout=1.0):  # a signal reaches the main thread between the waits
                pass
    except BaseException:
        # A signal: Ray goes next, and a model's thread still inside Ray then would
        # make Ray end the process with status 1. Each ends its streams first.
        stop.set()
        deadline = time.monotonic() + STOP_S
        for d in done:
            d.wait(timeout=max(0.0, deadline - time.monotonic()))
        raise
    return True


def _reason(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def _combined(many: ModelsRun, out: ModelsResult) -> pa.Table:
    """The long table of every model that has a summary: this run's, or (for a model
    that failed now) none, so no old numbers stand as this run's."""
    tables = [out.results[n].summary for n in many.names if n in out.results]
    return pa.concat_tables(tables) if tables else SUMMARY_SCHEMA.empty_table()


def _write_summaries(top: WorkDir, names: list[str], summary: pa.Table) -> list[str]:
    files = Store(top).write_summary(summary, markdown(summary))
    top.write_bytes(wide_csv(summary, names), WIDE_FILES[0])
    top.write_bytes(wide_markdown(summary, names).encode(), WIDE_FILES[1])
    return files + [f"{top}/{n}" for n in WIDE_FILES]


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _write_record(top: WorkDir, record: dict) -> None:
    top.write_bytes((json.dumps(record, indent=1) + "\n").encode(), "run.json")
