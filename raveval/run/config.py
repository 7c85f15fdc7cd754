"""The typed config of one run: a model, its datasets, judge endpoints and the
stream settings of each stage. `load_config` composes the YAML (config.compose)
and validates it against `RunConfig`; errors name the key and its file.
"""
from __future__ import annotations

import os

from pydantic import Field, field_validator, model_validator

from raveval.config.compose import ConfigError, compose, validate
from raveval.config.schema import DatasetConfig, EndpointConfig, NotifyConfig, StreamConfig, Strict
from raveval.engines.registry import AnyModelConfig
from raveval.results.workdir import is_uri

# Set by Ray's job supervisor in the environment of a submitted job's driver.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"

# Flat keys of earlier versions -> where they live now.
MOVED_KEYS = {
    "batch_rows": "model_stream.batch_rows",
    "callers": "model_stream.callers",
    "calls_per_caller": "model_stream.calls_per_caller",
    "judge_batch_rows": "judge_stream.batch_rows",
    "judge_callers": "judge_stream.callers",
    "judge_calls_per_caller": "judge_stream.calls_per_caller",
}


class RunConfig(Strict):
    # Validated by the class of its `engine:` (raveval.engines.registry).
    model: AnyModelConfig
    datasets: dict[str, DatasetConfig]
    # A folder, or a URI on shared storage (s3://, gs://, hdfs://, file://).
    work_dir: str
    # Root folder that dataset paths may interpolate as ${data_root}.
    data_root: str = "data"
    # Ray cluster: "local" starts one in-process; "auto" joins the running cluster.
    ray_address: str = "local"
    # The model stage: rows per Serve call (a call's rows run concurrently in the
    # replica), caller actors, calls in flight per caller.
    model_stream: StreamConfig = StreamConfig()
    resume: bool = True
    # LLM judge endpoints by name (conf/judges/*.yaml); datasets name theirs in `judge.endpoint`.
    judges: dict[str, EndpointConfig] = {}
    # The judge stage: judge requests per batch (asked concurrently), caller actors, batches in flight per caller.
    judge_stream: StreamConfig = StreamConfig(batch_rows=16)
    # Port of Serve's HTTP proxy on a local Ray, started only when a model has http_route.
    http_port: int = Field(8000, ge=1, le=65535)
    # How long the model's replicas may take to be placed and to load (a cluster
    # may be adding nodes meanwhile); then the run stops and names what is missing.
    startup_timeout_s: float = Field(900.0, gt=0)
    # Share of rows that may end as error rows (after the in-run retries) with exit status 0.
    max_error_rate: float = Field(0.0, ge=0, le=1)
    # Check every judge and API model the run uses before any generation (http.preflight).
    preflight: bool = True
    # Where run start, finish and failure are posted (Lark/Feishu, Slack, a JSON webhook).
    notify: NotifyConfig = NotifyConfig()

    @field_validator("work_dir")
    @classmethod
    def _work_dir_outlives_the_job(cls, v: str):
        # Ray runs a submitted job in a temporary copy of its working_dir, which Ray
        # deletes with the session or when it prunes old packages.
        if RAY_JOB_ENV in os.environ and not is_uri(v) and not os.path.isabs(v):
            raise ValueError(f"{v!r} is relative, and this run is a Ray job (ray job submit): its working "
                             f"directory is a temporary copy that Ray deletes; give an absolute path on storage "
                             f"every node sees, or a URI such as s3://bucket/run")
        return v

    @model_validator(mode="after")
    def _cpus(self):
        # `num_cpus: auto` becomes a number here: the dry run shows it, the replicas get it.
        model = self.model.with_cpus(local=self.ray_address == "local")
        return self if model is self.model else self.model_copy(update={"model": model})

    @model_validator(mode="after")
    def _has_datasets(self):
        if not self.datasets:
            raise ValueError("datasets: at least one dataset is required")
        return self

    @model_validator(mode="after")
    def _judges_and_api_models(self):
        for name, d in self.datasets.items():
            if d.judge is not None and d.judge.endpoint not in self.judges:
                have = ", ".join(sorted(self.judges)) or "none"
                raise ValueError(f"datasets.{name}.judge.endpoint: no judge endpoint {d.judge.endpoint!r} "
                                 f"under `judges` (have: {have})")
            self.model.check_dataset(name, d)
        return self


def load_config(config: str | None = None, overrides: list[str] = ()) -> RunConfig:
    """Compose CONFIG (a name or a .yaml path) with key=value overrides and validate it."""
    data, sources = compose(config, overrides)
    return run_config(data, sources)


def run_config(data: dict, sources: dict) -> RunConfig:
    """A composed config (config.compose) as a RunConfig; errors name the key and its source."""
    _no_stray_dataset_overrides(data, sources["overrides"])
    return validate(data, sources, RunConfig, MOVED_KEYS)


def _no_stray_dataset_overrides(data: dict, overrides) -> None:
    """`datasets=[a] datasets.b.limit=3` makes an entry `b` holding only `limit`:
    say that b is not in the run, rather than that its loader is missing."""
    datasets = data.get("datasets") if isinstance(data.get("datasets"), dict) else {}
    chosen = [n for n, d in datasets.items() if isinstance(d, dict) and "loader" in d]
    for name, entry in datasets.items():
        stray = [o for o in overrides if o.lstrip("+").startswith(f"datasets.{name}.")]
        if stray and isinstance(entry, dict) and "loader" not in entry:
            raise ConfigError(f"override {stray[0]!r}: dataset {name} is not in this run (its datasets: "
                              f"{', '.join(chosen) or 'none'}); add it to datasets=[...] or drop the override")
