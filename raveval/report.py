"""The summary: one row per (model, dataset, metric), as Arrow, CSV and Markdown."""
from __future__ import annotations

import math

import pyarrow as pa

from raveval.metrics import aggregate

SUMMARY_SCHEMA = pa.schema([
    ("model", pa.string()), ("dataset", pa.string()), ("metric", pa.string()),
    ("level", pa.string()), ("value", pa.float64()), ("n", pa.int64()), ("errors", pa.int64()),
])


def summarize(plan, results: pa.Table | None) -> tuple[pa.Table, list[str]]:
    """Summary rows for the plan's datasets from the stored rows of this plan's keys.

    Returns (summary table, reasons for datasets that could not be evaluated at all).
    A dataset that failed to load gets one `accuracy` row with n=0 and every
    row counted as an error, so the summary always lists it.
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
            rows.append({"model": model, "dataset": d.name, "metric": "accuracy", "level": "dataset", "value": math.nan, "n": 0, "errors": 0})
            continue
        found = [by_key[r["key"]] for r in d.requests if r["key"] in by_key]
        missing = len(d.requests) - len(found)
        # A row the stream never returned is still counted, as an error.
        found += [{"subject": r["subject"], "correct": None, "error": "no result"} for r in d.requests if r["key"] not in by_key]
        metrics = aggregate(found, d.groups)
        if metrics[0]["n"] == 0:
            failed.append(f"dataset {d.name}: all {len(d.requests)} rows ended in errors" + (f" ({missing} without result)" if missing else ""))
        rows += [{"model": model, "dataset": d.name, **m} for m in metrics]
    return pa.Table.from_pylist(rows, schema=SUMMARY_SCHEMA), failed


def _fmt(v) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{100 * v:.2f}"
    return str(v)


def markdown(summary: pa.Table, subjects: bool = True) -> str:
    """Markdown table, accuracy in percent; subjects=False leaves out per-subject rows."""
    rows = [r for r in summary.to_pylist() if subjects or r["level"] != "subject"]
    head = "| model | dataset | metric | value (%) | n | errors |\n|---|---|---|---:|---:|---:|\n"
    return head + "".join(f"| {r['model']} | {r['dataset']} | {r['metric']} | {_fmt(r['value'])} | {r['n']} | {r['errors']} |\n" for r in rows)
