"""Integration: a real local Ray, a real Serve deployment and the real tiny model."""
from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from raveval.run import evaluate as pipeline
from raveval.run.config import load_config
from raveval.results.store import Store
from raveval.run.plan import make_plan
from raveval.stream.model_stage import RESULT_SCHEMA
from raveval.stream.stage import append_results
from raveval.tasks.request import to_table


@pytest.fixture(scope="module")
def demo_run(ray_local, tmp_path_factory):
    work = tmp_path_factory.mktemp("demo")
    cfg = load_config("demo", [f"work_dir={work}"])
    return cfg, pipeline.run(cfg, log=lambda *_: None)


def test_every_row_is_scored_and_written(demo_run):
    cfg, result = demo_run
    plan = result.plan
    assert not result.failed
    rows = Store(cfg.work_dir).read().to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(r.key for r in plan.requests)
    assert result.stats["rows"] == len(plan.requests) and result.stats["reused"] == 0
    for r in rows:
        assert r["error"] is None, r["error"]
        assert r["model"] == "tiny-llama" and r["latency_s"] > 0
        if r["mode"] == "ll":
            assert len(r["logprobs"]) == len(r["choices"]) == 4
            assert all(x < 0 for x in r["logprobs"]) and r["prediction"] in "ABCD"
            assert r["correct"] == (r["prediction"] == r["gold"])
        else:
            assert isinstance(r["prediction"], str) and r["output_tokens"] >= 1
            assert r["correct"] is not None


def test_summary_matches_the_rows(demo_run):
    cfg, result = demo_run
    summary = pq.read_table(f"{cfg.work_dir}/summary.parquet").to_pylist()
    assert {"model", "dataset", "metric", "value", "n", "errors"} <= set(summary[0])
    rows = Store(cfg.work_dir).read().to_pylist()
    for name in cfg.datasets:
        mine = [r for r in rows if r["dataset"] == name]
        acc = next(s for s in summary if s["dataset"] == name and s["metric"] == "accuracy")
        assert acc["n"] == len(mine) and acc["errors"] == 0
        assert acc["value"] == pytest.approx(sum(r["correct"] for r in mine) / len(mine))
    metrics = {s["metric"] for s in summary if s["dataset"] == "demo_mmlu_ll"}
    assert {"accuracy_macro", "accuracy/stem", "accuracy/humanities", "accuracy/elementary_mathematics"} <= metrics
    assert Path(result.files[1]).read_text().startswith('"model"')
    assert "| tiny-llama | demo_gsm8k_gen | accuracy |" in Path(result.files[2]).read_text()


def test_rerun_reuses_finished_rows(demo_run):
    cfg, first = demo_run
    again = pipeline.run(cfg, log=lambda *_: None)
    assert again.stats["rows"] == 0 and again.stats["reused"] == len(first.plan.requests)
    assert again.summary.equals(first.summary)


def test_error_rows_are_kept_counted_and_retried(ray_local, tmp_path):
    cfg = load_config("demo", [f"work_dir={tmp_path}", "datasets=[demo_gsm8k_gen]", "datasets.demo_gsm8k_gen.limit=4"])
    plan = make_plan(cfg)
    # A crashed earlier run left these rows as error rows.
    batch = to_table(plan.requests)
    Store(tmp_path).write_part(append_results(batch, [{"error": "ActorDiedError: replica lost"}] * batch.num_rows,
                                              RESULT_SCHEMA))
    from raveval.results.summary import summarize

    summary, failed = summarize(plan, Store(tmp_path).read())
    acc = summary.to_pylist()[0]
    assert acc["n"] == 0 and acc["errors"] == 4 and failed and "all 4 rows ended in errors" in failed[0]
    # The re-run computes exactly those rows again.
    result = pipeline.run(cfg, log=lambda *_: None)
    assert result.stats["rows"] == 4 and not result.failed
    assert result.summary.to_pylist()[0]["errors"] == 0


def test_a_dataset_that_cannot_load_fails_alone(ray_local, tmp_path):
    cfg = load_config("demo", [f"work_dir={tmp_path}", "datasets=[demo_gsm8k_gen,mmlu_ll]",
                               "datasets.demo_gsm8k_gen.limit=2", f"data_root={tmp_path}/nowhere"])
    result = pipeline.run(cfg, log=lambda *_: None)
    assert len(result.failed) == 1 and "nowhere" in result.failed[0]
    by = {(s["dataset"], s["metric"]): s for s in result.summary.to_pylist()}
    assert by[("demo_gsm8k_gen", "accuracy")]["n"] == 2
    assert by[("mmlu_ll", "accuracy")]["n"] == 0


def test_instant_engine_runs_the_whole_pipeline(ray_local, tmp_path):
    """engine: instant (no weights, answers at once): every row of the demo streams
    through Serve and Ray Data and is scored; deterministic answers."""
    cfg = load_config("demo", ["model=instant", f"work_dir={tmp_path}"])
    result = pipeline.run(cfg, log=lambda *_: None)
    rows = Store(tmp_path).read().to_pylist()
    assert len(rows) == 48 and all(r["error"] is None for r in rows) and not result.failed
    ll = [r for r in rows if r["mode"] == "ll"]
    assert ll and all(r["prediction"] == "A" for r in ll)  # equal-length continuations: the first wins
    gen = [r for r in rows if r["mode"] == "gen"]
    assert gen and all(r["prediction"] for r in gen)


def test_ray_starts_beside_the_plan_only_when_the_run_will_stream(tmp_path):
    """A fresh run starts Ray while its datasets load; a mistyped path (the run may
    have nothing to stream) or stored rows to reuse (maybe all of them) do not."""
    import pyarrow as pa

    store = Store(tmp_path)
    cfg = load_config("demo", [f"work_dir={tmp_path}"])
    assert pipeline._will_stream(cfg, store)
    assert not pipeline._will_stream(load_config("demo", [f"work_dir={tmp_path}", "datasets.demo_gsm8k_gen.path=/nope"]),
                                     store)
    store.write_part(pa.table({"key": ["a stored row"]}))
    assert cfg.resume and not pipeline._will_stream(cfg, store)
    assert pipeline._will_stream(load_config("demo", [f"work_dir={tmp_path}", "resume=false"]), store)
