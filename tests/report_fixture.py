"""A work_dir with every kind of dataset a report draws (MMLU's 57 subjects,
C-Eval's 52, MT-Bench single grading, AlignBench, AlpacaEval pairwise), written
without a model: rows made here, then stored and summarized by raveval's own
Store and scoring code, as a run would."""
from __future__ import annotations

import json
import random

import pyarrow as pa
import yaml

from raveval.results.store import JUDGEMENTS, Store
from raveval.results.summary import SUMMARY_SCHEMA, markdown
from raveval.tasks.benchmarks.categories import CEVAL_CATEGORIES, MMLU_CATEGORIES
from raveval.tasks.scoring import aggregate, aggregate_subjective

MT_BENCH = ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"]
ALIGNBENCH = ["专业能力", "数学计算", "基本任务", "逻辑推理", "中文理解", "文本写作", "角色扮演", "综合问答"]


def _subjects(table: dict) -> list[str]:
    seen: list[str] = []
    for members in table.values():
        seen += [s for s in members if s not in seen]
    return seen


def write_work_dir(path, model: str = "model-a", skill: float = 0.6, seed: int = 0, extra_rows: int = 0) -> str:
    """Write the work_dir at `path`; `skill` moves every score, `extra_rows` adds
    that many MMLU rows (for a large row browser). Returns the path."""
    rng = random.Random(seed)
    work = str(path)
    preds, judgements = [], []

    def pred(dataset, subject, i, correct, error=None, turn=1, text=None):
        row_id = f"{subject}-{i}"
        preds.append({"key": f"{dataset}/{row_id}/{turn}", "model": model, "dataset": dataset, "subject": subject,
                      "row_id": row_id, "turn": turn, "prompt": f"Question {i} about {subject}? " + "context " * 40,
                      "prediction": text if text is not None else ("A" if correct else "B"), "answer_pred": "A",
                      "gold": "A", "correct": None if error else correct, "error": error,
                      "prompt_tokens": 100, "output_tokens": 5})
        return row_id

    for dataset, table in (("mmlu", MMLU_CATEGORIES), ("ceval", CEVAL_CATEGORIES)):
        for s in _subjects(table):
            for i in range(4):
                pred(dataset, s, i, rng.random() < skill)
    for i in range(extra_rows):
        pred("mmlu", "college_physics", 1000 + i, rng.random() < skill,
             error="HTTP 500 from replica" if i % 997 == 0 else None)
    pred("mmlu", "anatomy", 99, None, error="timeout after 120s")

    def judge(dataset, row_id, subject, turn=1, order="", score=None, outcome=None, verdict=None, error=None,
              ratings=None):
        judgements.append({"key": f"j/{dataset}/{row_id}/{turn}/{order}", "model": model, "dataset": dataset,
                           "subject": subject, "row_id": row_id, "turn": turn, "order": order, "score": score,
                           "outcome": outcome, "verdict": verdict, "ratings": ratings, "error": error,
                           "raw": f"[[{verdict or score}]]", "prompt_tokens": 300, "completion_tokens": 20,
                           "retries": 1 if error else 0, "model_len": 50, "baseline_len": 60})

    for c in MT_BENCH:
        for i in range(2):
            for turn in (1, 2):
                rid = pred("mt_bench", c, i, None, turn=turn, text=f"An answer about {c}.")
                score = float(min(10, max(1, round(10 * skill + rng.uniform(-2, 2)))))
                judge("mt_bench", rid, c, turn=turn, score=score, verdict=str(int(score)))
    for c in ALIGNBENCH:
        for i in range(2):
            rid = pred("alignbench", c, i, None, text="回答。")
            score = float(min(10, max(1, round(10 * skill + rng.uniform(-2, 2)))))
            judge("alignbench", rid, c, score=score, verdict=str(int(score)),
                  ratings=json.dumps({"事实正确性": score, "综合得分": score}, ensure_ascii=False))
    for i in range(12):
        rid = pred("alpaca", "helpful_base", i, None, text="Sure.")
        for order in ("AB", "BA"):
            if i == 11:
                judge("alpaca", rid, "helpful_base", order=order, error="unparseable verdict")
                continue
            o = 1.0 if rng.random() < skill else (0.5 if rng.random() < 0.3 else 0.0)
            judge("alpaca", rid, "helpful_base", order=order, outcome=o, verdict={1.0: "m", 0.5: "tie", 0.0: "M"}[o])

    store = Store(work)
    store.write_part(pa.Table.from_pylist(preds))
    Store(work, JUDGEMENTS).write_part(pa.Table.from_pylist(judgements))

    summary = []
    for dataset, table in (("mmlu", MMLU_CATEGORIES), ("ceval", CEVAL_CATEGORIES)):
        rows = [p for p in preds if p["dataset"] == dataset]
        summary += [{"model": model, "dataset": dataset, **m} for m in aggregate(rows, table)]
    for dataset, mode in (("mt_bench", "single"), ("alignbench", "single"), ("alpaca", "pairwise")):
        rows = [j for j in judgements if j["dataset"] == dataset]
        summary += [{"model": model, "dataset": dataset, **m} for m in aggregate_subjective(rows, mode)]
    table = pa.Table.from_pylist(summary, schema=SUMMARY_SCHEMA)
    store.write_summary(table, markdown(table))

    datasets = {"mmlu": {"loader": "mmlu", "mode": "ll"}, "ceval": {"loader": "ceval", "mode": "gen"},
                "mt_bench": {"loader": "mt_bench", "mode": "gen", "judge": {"endpoint": "j", "mode": "single"}},
                "alignbench": {"loader": "alignbench", "mode": "gen", "judge": {"endpoint": "j", "mode": "single"}},
                "alpaca": {"loader": "alpacaeval", "mode": "gen", "judge": {"endpoint": "j", "mode": "pairwise"}}}
    store.work.write_bytes(yaml.safe_dump({"model": {"name": model, "engine": "instant", "path": "instant"},
                                           "datasets": datasets}).encode(), "config.yaml")
    store.work.write_bytes(json.dumps({"run_id": f"{model}-20260101-120000-abcd", "model": model, "host": "h",
                                       "started": "2026-01-01T12:00:00+00:00",
                                       "finished": "2026-01-01T12:03:20+00:00", "status": "finished"}).encode(),
                           "run.json")
    return work
