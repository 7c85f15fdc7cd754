"""The summary: one row per (model, dataset, metric), as Arrow, CSV and Markdown."""
from __future__ import annotations

import math

import pyarrow as pa

from raveval.tasks.benchmarks import benchmark
from raveval.tasks.judging import prompts_used
from raveval.tasks.scoring import aggregate, aggregate_subjective, is_score_metric

# `note`: how a value was obtained where that decides whether it compares with a
# leaderboard's (a judged dataset's judge prompts, the LC win rate's GLM); else null.
SUMMARY_SCHEMA = pa.schema([
    ("model", pa.string()), ("dataset", pa.string()), ("metric", pa.string()),
    ("level", pa.string()), ("value", pa.float64()), ("n", pa.int64()), ("errors", pa.int64()),
    ("note", pa.string()),
])


JUDGE_COLUMNS = ["key", "subject", "row_id", "turn", "order", "score", "outcome", "ratings",
                 "model_len", "baseline_len", "error"]


def summarize(plan, results: pa.Table | None, judgements: pa.Table | None = None) -> tuple[pa.Table, list[str]]:
    """Summary rows for the plan's datasets from the stored rows of this plan's keys
    (and, for judged datasets, from the judgement rows of the plan's judge requests).

    Returns (summary table, reasons for datasets that could not be evaluated at all).
    A dataset that failed to load gets one `accuracy` row with n=0 and its rows
    counted as errors (its unreadable records, or 1 where not even those are
    known), so the summary always lists it.
    """
    by_key = {}
    if results is not None:
        cols = results.select(["key", "subject", "correct", "error"]).to_pylist()
        by_key = {r["key"]: r for r in cols}
    rows, failed = [], []
    model = plan.cfg.model.name
    for d in plan.datasets:
        if d.error:
            failed.append(d.error)
            rows.append({"model": model, "dataset": d.name, "metric": "accuracy", "level": "dataset", "value": math.nan,
                         "n": 0, "errors": max(1, len(d.requests))})
            continue
        if d.cfg.judge is not None:
            metrics = _subjective(d, judgements)
            # The headline row names the judge prompts; other notes (the LC GLM) follow them.
            prompts = f"judge prompts: {prompts_used(d.cfg)}"
            for m in metrics:
                if m is metrics[0] or m.get("note"):
                    m["note"] = "; ".join(x for x in (prompts, m.get("note")) if x)
            if metrics[0]["n"] == 0:
                failed.append(f"dataset {d.name}: no judgement succeeded ({metrics[0]['errors']} error rows)")
            rows += [{"model": model, "dataset": d.name, **m} for m in metrics]
            continue
        found = [by_key[r.key] for r in d.requests if r.key in by_key]
        missing = len(d.requests) - len(found)
        # A row the stream never returned is still counted, as an error.
        found += [{"subject": r.subject, "correct": None, "error": "no result"} for r in d.requests if r.key not in by_key]
        metrics = aggregate(found, d.groups)
        if metrics[0]["n"] == 0:
            failed.append(f"dataset {d.name}: all {len(d.requests)} rows ended in errors" + (f" ({missing} without result)" if missing else ""))
        rows += [{"model": model, "dataset": d.name, **m} for m in metrics]
    return pa.Table.from_pylist(rows, schema=SUMMARY_SCHEMA), failed


def keep_previous(summary: pa.Table, previous: pa.Table | None, datasets: list[str]) -> pa.Table:
    """`summary` with the rows of `datasets` (which could not be evaluated this time)
    taken from the previous summary where it has them: a failed load loses nothing."""
    if previous is None:
        return summary
    old = [r for r in previous.to_pylist() if r.get("dataset") in datasets]
    have = {r["dataset"] for r in old}
    new = [r for r in summary.to_pylist() if r["dataset"] not in have]
    return pa.Table.from_pylist(new + [{f.name: r.get(f.name) for f in SUMMARY_SCHEMA} for r in old],
                                schema=SUMMARY_SCHEMA)


def _subjective(d, judgements: pa.Table | None) -> list[dict]:
    """Judge metrics of one dataset; a judgement that never came back counts as an error."""
    by_key = {}
    if judgements is not None and d.judge_requests:
        have = [c for c in JUDGE_COLUMNS if c in judgements.column_names]
        by_key = {r["key"]: r for r in judgements.select(have).to_pylist()}
    if d.judge_requests:
        found = [by_key.get(r.key) or {"subject": r.subject, "row_id": r.row_id, "turn": r.turn, "order": r.order,
                                       "error": r.pre_error or "no result"} for r in d.judge_requests]
        # Records that are not rows were never answered, so never judged: errors too.
        found += [{"subject": r.subject, "row_id": r.row_id, "turn": 1, "order": "", "error": d.bad[r.key]}
                  for r in d.requests if r.key in d.bad]
    else:  # the judge pass never ran: every answer counts as an error
        found = [{"subject": r.subject, "row_id": r.row_id, "turn": r.turn, "order": "", "error": "not judged"}
                 for r in d.requests]
    return aggregate_subjective(found, d.cfg.judge.mode, d.groups,
                                instruction_index=benchmark(d.cfg.loader).instruction_index)


def _fmt(v, metric: str = "") -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.2f}" if is_score_metric(metric) else f"{100 * v:.2f}%"
    return str(v)


def markdown(summary: pa.Table, subjects: bool = True) -> str:
    """Markdown table: rates in percent, judge scores on their 1-10 scale;
    subjects=False leaves out per-subject rows."""
    rows = [r for r in summary.to_pylist() if subjects or r["level"] != "subject"]
    head = "| model | dataset | metric | value | n | errors |\n|---|---|---|---:|---:|---:|\n"
    table = head + "".join(f"| {r['model']} | {r['dataset']} | {r['metric']} | {_fmt(r['value'], r['metric'])} "
                           f"| {r['n']} | {r['errors']} |\n" for r in rows)
    notes = [f"- {r['dataset']} {r['metric']}: {r['note']}\n" for r in rows if r.get("note")]
    return table + ("\nNotes:\n" + "".join(notes) if notes else "")


def wide(summary: pa.Table, models: list[str]) -> list[dict]:
    """The summary as OpenCompass prints it: one row per (dataset, metric), one
    column per model (None where a model has no value), rows in first-seen order."""
    rows: dict[tuple, dict] = {}
    for r in summary.to_pylist():
        row = rows.setdefault((r["dataset"], r["metric"]), {"dataset": r["dataset"], "metric": r["metric"],
                                                             "level": r["level"], **{m: None for m in models}})
        if r["model"] in row:
            row[r["model"]] = r["value"]
    return list(rows.values())


def wide_csv(summary: pa.Table, models: list[str]) -> bytes:
    import io

    import pyarrow.csv as pacsv

    schema = pa.schema([("dataset", pa.string()), ("metric", pa.string()), *((m, pa.float64()) for m in models)])
    table = pa.Table.from_pylist([{k: v for k, v in r.items() if k != "level"} for r in wide(summary, models)],
                                 schema=schema)
    out = io.BytesIO()
    pacsv.write_csv(table, out)
    return out.getvalue()


def wide_markdown(summary: pa.Table, models: list[str], subjects: bool = True) -> str:
    """The wide table in Markdown (a model without a value shows -); subjects=False leaves out per-subject rows."""
    rows = [r for r in wide(summary, models) if subjects or r["level"] != "subject"]
    head = f"| dataset | metric | {' | '.join(models)} |\n|---|---|{'---:|' * len(models)}\n"
    return head + "".join(f"| {r['dataset']} | {r['metric']} | "
                          + " | ".join("-" if r[m] is None else _fmt(r[m], r["metric"]) for m in models) + " |\n"
                          for r in rows)
