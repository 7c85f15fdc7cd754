"""The report's charts as Vega-Lite specs (plain dicts), one run or several side
by side: the same spec draws in the HTML page (vega-embed) and as a PNG
(vl-convert). Each chart is {"id", "title", "spec"}; a chart with no data is left out."""
from __future__ import annotations

import math
import re

from raveval.results.report_data import RunData
from raveval.tasks.scoring import is_score_metric

SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json"


def headline(run: RunData, dataset: str) -> dict | None:
    """The dataset's first dataset-level row: accuracy, score, win_rate or answered."""
    return next((r for r in run.summary if r["dataset"] == dataset and r["level"] == "dataset"), None)


def datasets_of(runs: list[RunData]) -> list[str]:
    seen: list[str] = []
    for run in runs:
        for r in run.summary:
            if r["dataset"] not in seen:
                seen.append(r["dataset"])
    return seen


def _num(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _spec(title: str, data: list[dict], **rest) -> dict:
    return {"$schema": SCHEMA, "title": title, "data": {"values": data}, **rest}


def _run_color(runs: list[RunData]) -> dict:
    return {"field": "run", "type": "nominal", "title": "run", "sort": [r.label for r in runs]}


def headline_bars(runs: list[RunData]) -> list[dict]:
    """Per-dataset headline: rates (accuracy, win rate) in %, judge scores on their 1-10 scale."""
    rates, scores = [], []
    for d in datasets_of(runs):
        for run in runs:
            h = headline(run, d)
            if h is None or _num(h["value"]) is None:
                continue
            row = {"dataset": d, "metric": h["metric"], "run": run.label, "n": h["n"], "errors": h["errors"]}
            if is_score_metric(h["metric"]):
                scores.append({**row, "value": round(h["value"], 3)})
            else:
                rates.append({**row, "value": round(100 * h["value"], 2)})
    charts = []
    for cid, title, data, axis, top in (("accuracy", "Accuracy per dataset (%)", rates, "percent", 100),
                                        ("scores", "Judge score per dataset (1-10)", scores, "score", 10)):
        if data:
            charts.append({"id": cid, "title": title, "spec": _bars(title, data, runs, "dataset", axis, top)})
    return charts


def _bars(title: str, data: list[dict], runs: list[RunData], x: str, axis: str, top: float) -> dict:
    tooltip = [{"field": k, "type": "nominal" if k in ("run", x, "metric") else "quantitative"}
               for k in (x, "run", "metric", "value", "n", "errors") if k in data[0]]
    return _spec(title, data, width={"step": max(14, 60 // max(1, len(runs)))}, height=220, mark={"type": "bar"},
                 encoding={"x": {"field": x, "type": "nominal", "title": None, "sort": None,
                                 "axis": {"labelAngle": -30, "labelLimit": 180}},
                           "xOffset": {"field": "run", "sort": [r.label for r in runs]},
                           "y": {"field": "value", "type": "quantitative", "title": axis,
                                 "scale": {"domain": [0, top]}},
                           "color": _run_color(runs), "tooltip": tooltip})


def subject_heatmaps(runs: list[RunData]) -> list[dict]:
    """Per-subject accuracy of datasets with subjects (MMLU's 57, C-Eval's 52), grouped by category."""
    charts = []
    for d in datasets_of(runs):
        data = []
        for run in runs:
            for r in run.summary:
                if r["dataset"] == d and r["level"] == "subject" and r["metric"].startswith("accuracy/"):
                    subject = r["metric"].split("/", 1)[1]
                    v = _num(r["value"])
                    data.append({"subject": subject, "category": run.category_of(d, subject), "run": run.label,
                                 "value": None if v is None else round(100 * v, 1), "n": r["n"],
                                 "errors": r["errors"]})
        if not data:
            continue
        title = f"{d}: accuracy per subject (%), by category"
        cats = sorted({x["category"] for x in data})
        spec = {"$schema": SCHEMA, "title": title, "vconcat": [_heat_block(c, [x for x in data if x["category"] == c],
                                                                            runs) for c in cats],
                "resolve": {"scale": {"color": "shared"}}}
        charts.append({"id": f"subjects-{d}", "title": title, "spec": spec})
    return charts


def _heat_block(category: str, data: list[dict], runs: list[RunData]) -> dict:
    """One category's subjects (rows) against the runs (columns), the accuracy in each cell."""
    enc = {"x": {"field": "run", "type": "nominal", "title": None, "sort": [r.label for r in runs],
                 "axis": {"orient": "top", "labelAngle": 0, "labelLimit": 160}},
           "y": {"field": "subject", "type": "nominal", "title": category, "sort": "ascending",
                 "axis": {"labelLimit": 260}},
           "tooltip": [{"field": "subject"}, {"field": "category"}, {"field": "run"},
                       {"field": "value", "type": "quantitative", "title": "accuracy %"},
                       {"field": "n", "type": "quantitative"}, {"field": "errors", "type": "quantitative"}]}
    return {"data": {"values": data}, "width": max(120, 90 * len(runs)), "height": {"step": 16}, "encoding": enc,
            "layer": [{"mark": "rect", "encoding": {"color": {"field": "value", "type": "quantitative", "title": "%",
                                                              "scale": {"domain": [0, 100],
                                                                        "scheme": "redyellowgreen"}}}},
                      {"mark": {"type": "text", "fontSize": 10},
                       "encoding": {"text": {"field": "value", "type": "quantitative", "format": ".0f"}}}]}


def _category_scores(runs: list[RunData], d: str) -> list[dict]:
    data = []
    for run in runs:
        for r in run.summary:
            v = _num(r["value"])
            if r["dataset"] == d and r["level"] == "subject" and r["metric"].startswith("score/") and v is not None:
                data.append({"category": r["metric"].split("/", 1)[1], "run": run.label, "value": round(v, 2),
                             "n": r["n"], "errors": r["errors"]})
    return data


def judged_datasets(runs: list[RunData], mode: str, loader: str | None = None) -> list[str]:
    out = []
    for d in datasets_of(runs):
        kinds = [run.dataset_kind(d) for run in runs if any(r["dataset"] == d for r in run.summary)]
        if any(k["judge"] == mode and (loader is None or k["loader"] == loader) for k in kinds):
            out.append(d)
    return out


def mt_bench_radar(runs: list[RunData]) -> list[dict]:
    """MT-Bench's score per category (8) as a radar: one closed polygon per run on a 0-10 scale."""
    charts = []
    for d in judged_datasets(runs, "single", "mt_bench"):
        data = _category_scores(runs, d)
        cats = sorted({x["category"] for x in data})
        if len(cats) < 3:
            continue
        angle = {c: math.pi / 2 - 2 * math.pi * i / len(cats) for i, c in enumerate(cats)}

        def at(r, c):
            return {"x": round(r * math.cos(angle[c]), 4), "y": round(r * math.sin(angle[c]), 4)}

        points = []
        for run in runs:
            mine = {x["category"]: x for x in data if x["run"] == run.label}
            ring = [c for c in cats if c in mine]
            for i, c in enumerate(ring + ring[:1]):  # back to the first: a closed polygon
                points.append({"run": run.label, "category": c, "order": i, "value": mine[c]["value"],
                               **at(mine[c]["value"], c)})
        grid = [{"level": lv, "order": i, **at(lv, c)} for lv in (2, 4, 6, 8, 10)
                for i, c in enumerate(cats + cats[:1])]
        spokes = [{"category": c, "x0": 0, "y0": 0, **at(10, c)} for c in cats]
        labels = [{"category": c, **at(11.6, c)} for c in cats]
        hidden = {"axis": None, "scale": {"domain": [-12.5, 12.5]}}
        xy = {"x": {"field": "x", "type": "quantitative", **hidden},
              "y": {"field": "y", "type": "quantitative", **hidden}}
        title = f"{d}: score per category (0-10)"
        spec = {"$schema": SCHEMA, "title": title, "width": 360, "height": 360, "layer": [
            {"data": {"values": grid}, "mark": {"type": "line", "color": "#ddd", "strokeWidth": 1},
             "encoding": {**xy, "detail": {"field": "level"}, "order": {"field": "order"}}},
            {"data": {"values": spokes}, "mark": {"type": "rule", "color": "#ddd"},
             "encoding": {**xy, "x2": {"field": "x0"}, "y2": {"field": "y0"}}},
            {"data": {"values": labels}, "mark": {"type": "text", "fontSize": 11},
             "encoding": {**xy, "text": {"field": "category"}}},
            {"data": {"values": points}, "mark": {"type": "line", "point": True, "strokeWidth": 2},
             "encoding": {**xy, "color": _run_color(runs), "order": {"field": "order"},
                          "tooltip": [{"field": "run"}, {"field": "category"},
                                      {"field": "value", "type": "quantitative"}]}}]}
        charts.append({"id": f"radar-{d}", "title": title, "spec": spec})
    return charts


def category_bars(runs: list[RunData]) -> list[dict]:
    """Single-graded datasets other than MT-Bench (AlignBench's categories): score per category."""
    charts = []
    radar = set(judged_datasets(runs, "single", "mt_bench"))
    for d in judged_datasets(runs, "single"):
        data = _category_scores(runs, d)
        if d in radar or not data:
            continue
        title = f"{d}: score per category (1-10)"
        charts.append({"id": f"categories-{d}", "title": title,
                       "spec": _bars(title, data, runs, "category", "score", 10)})
    return charts


def pairwise_bars(runs: list[RunData]) -> list[dict]:
    """Pairwise datasets: the share of wins, ties and losses against the baseline, per run."""
    data = []
    for d in judged_datasets(runs, "pairwise"):
        for run in runs:
            rates = {r["metric"]: _num(r["value"]) for r in run.summary if r["dataset"] == d and r["level"] == "dataset"}
            for i, outcome in enumerate(("win", "tie", "loss")):
                v = rates.get(f"{outcome}_rate")
                if v is not None:
                    data.append({"dataset": d, "run": run.label, "outcome": outcome, "order": i,
                                 "value": round(100 * v, 2)})
    if not data:
        return []
    title = "Pairwise against the baseline: win / tie / loss (%)"
    spec = _spec(title, data, width=420, height={"step": 22}, mark="bar", encoding={
        "y": {"field": "label", "type": "nominal", "title": None, "sort": None, "axis": {"labelLimit": 300}},
        "x": {"field": "value", "type": "quantitative", "stack": "zero", "scale": {"domain": [0, 100]},
              "title": "%"},
        "color": {"field": "outcome", "type": "nominal", "sort": ["win", "tie", "loss"],
                  "scale": {"domain": ["win", "tie", "loss"], "range": ["#54a24b", "#bab0ac", "#e45756"]}},
        "order": {"field": "order"},
        "tooltip": [{"field": "dataset"}, {"field": "run"}, {"field": "outcome"},
                    {"field": "value", "type": "quantitative"}]},
        transform=[{"calculate": "datum.dataset + ' | ' + datum.run", "as": "label"}])
    return [{"id": "pairwise", "title": title, "spec": spec}]


def error_bars(runs: list[RunData]) -> list[dict]:
    """Error rows per dataset, model stage and judge stage, per run."""
    data = [{**e, "run": run.label} for run in runs for e in run.errors]
    if not data:
        return []
    title = "Error rows per dataset (model and judge stages)"
    spec = _spec(title, data, width={"step": max(14, 60 // max(1, len(runs)))}, height=180, mark="bar", encoding={
        "x": {"field": "dataset", "type": "nominal", "title": None, "axis": {"labelAngle": -30}},
        "xOffset": {"field": "run", "sort": [r.label for r in runs]},
        "y": {"field": "errors", "type": "quantitative", "title": "rows", "stack": "zero"},
        "color": {"field": "stage", "type": "nominal", "scale": {"domain": ["model", "judge"],
                                                                   "range": ["#e45756", "#f58518"]}},
        "tooltip": [{"field": "dataset"}, {"field": "run"}, {"field": "stage"},
                    {"field": "errors", "type": "quantitative"}]})
    return [{"id": "errors", "title": title, "spec": spec}]


def delta_bars(runs: list[RunData]) -> list[dict]:
    """Several runs: each run's headline minus the first run's (the baseline), per dataset."""
    if len(runs) < 2:
        return []
    data = []
    for d in datasets_of(runs):
        base = headline(runs[0], d)
        if base is None or _num(base["value"]) is None:
            continue
        score = is_score_metric(base["metric"])
        for run in runs[1:]:
            h = headline(run, d)
            if h is None or h["metric"] != base["metric"] or _num(h["value"]) is None:
                continue
            delta = h["value"] - base["value"]
            data.append({"dataset": d, "run": run.label, "metric": base["metric"],
                         "delta": round(delta if score else 100 * delta, 2), "unit": "points" if score else "pp"})
    if not data:
        return []
    title = f"Change against {runs[0].label} (percentage points; judge scores in points)"
    spec = _spec(title, data, width={"step": max(14, 60 // max(1, len(runs) - 1))}, height=200, mark="bar",
                 encoding={"x": {"field": "dataset", "type": "nominal", "title": None, "sort": None,
                                 "axis": {"labelAngle": -30}},
                           "xOffset": {"field": "run", "sort": [r.label for r in runs[1:]]},
                           "y": {"field": "delta", "type": "quantitative", "title": "delta"},
                           "color": {"condition": {"test": "datum.delta < 0", "value": "#e45756"},
                                     "value": "#54a24b"},
                           "tooltip": [{"field": "dataset"}, {"field": "run"}, {"field": "metric"},
                                       {"field": "delta", "type": "quantitative"}, {"field": "unit"}]})
    return [{"id": "deltas", "title": title, "spec": spec}]


def all_charts(runs: list[RunData]) -> list[dict]:
    charts = (headline_bars(runs) + delta_bars(runs) + subject_heatmaps(runs) + mt_bench_radar(runs)
            + category_bars(runs) + pairwise_bars(runs) + error_bars(runs))
    for c in charts:  # ids name HTML elements and PNG files
        c["id"] = re.sub(r"[^A-Za-z0-9_-]+", "_", c["id"])
    return charts
