"""`raveval report`: one self-contained report.html (Vega-Lite charts with their
JavaScript embedded, so it opens offline) and the same charts as PNG files, for
one work_dir or several side by side (the first is the baseline of the deltas).

The plotting package (vl-convert-python: the Vega/Vega-Lite bundle and a PNG
renderer without a browser) is the optional `report` extra, imported here only.
"""
from __future__ import annotations

import html
import json
import math
import os
from importlib import resources

from raveval.config import default_cache_dir
from raveval.results.report_charts import all_charts, datasets_of
from raveval.results.report_data import ROW_FIELDS, ReportError, beside, RunData, label_runs, load_run
from raveval.results.workdir import WorkDir
from raveval.tasks.scoring import is_score_metric

INSTALL_HINT = "pip install 'raveval[report]' (or: pip install vl-convert-python)"
REPORT_FILE = "report.html"


class ReportExtraMissing(ReportError):
    """The plotting package is not installed: the message says how to get it."""


def _vl_convert():
    try:
        import vl_convert
    except ImportError:
        raise ReportExtraMissing(f"the HTML report needs the `report` extra: {INSTALL_HINT}") from None
    return vl_convert


def _javascript_bundle(vlc) -> str:
    """vl-convert's Vega/Vega-Lite bundle, cached per vl-convert version: building it
    takes 1.4 s, more than the rest of a report."""
    path = default_cache_dir() / f"vl-convert-{getattr(vlc, '__version__', 'unknown')}-bundle.js"
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        pass
    bundle = vlc.javascript_bundle()
    try:  # written whole, then renamed: a concurrent report never reads half of it
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(bundle, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache: build it each time
    return bundle


def _fmt(value, metric: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}" if is_score_metric(metric) else f"{100 * value:.2f}"


def wide_table(runs: list[RunData], subjects: bool = False) -> tuple[list[str], list[list[str]]]:
    """OpenCompass's summary layout: dataset, metric, then one column per run
    (rates in %, judge scores 1-10), then each later run's change against the first."""
    head = ["dataset", "metric", *(r.label for r in runs)] + [f"Δ {r.label}" for r in runs[1:]]
    keys: list[tuple[str, str]] = []
    values: dict[tuple[str, str, str], float] = {}
    for run in runs:
        for r in run.summary:
            if r["level"] == "subject" and not subjects:
                continue
            k = (r["dataset"], r["metric"])
            if k not in keys:
                keys.append(k)
            values[(*k, run.label)] = r["value"]
    order = {d: i for i, d in enumerate(datasets_of(runs))}
    keys.sort(key=lambda k: order[k[0]])  # stable: each dataset's metrics keep the summary's order
    body = []
    for d, m in keys:
        vals = [values.get((d, m, r.label)) for r in runs]
        row = [d, m, *(_fmt(v, m) for v in vals)]
        for v in vals[1:]:
            ok = all(x is not None and not math.isnan(x) for x in (v, vals[0]))
            row.append("-" if not ok else (f"{v - vals[0]:+.2f}" if is_score_metric(m)
                                           else f"{100 * (v - vals[0]):+.2f}"))
        body.append(row)
    return head, body


def wide_markdown(runs: list[RunData], subjects: bool = False) -> str:
    head, body = wide_table(runs, subjects)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body]) + "\n"


def _table_html(head: list[str], body: list[list[str]], numeric_from: int) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    rows = []
    for r in body:
        cells = []
        for i, c in enumerate(r):
            cls = ""
            if i >= numeric_from:
                cls = ' class="num' + (" neg" if c.startswith("-") and c != "-" else " pos" if c.startswith("+")
                                       else "") + '"'
            cells.append(f"<td{cls}>{html.escape(str(c))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _facts_html(runs: list[RunData]) -> str:
    def wall(s):
        return "-" if s is None else f"{s:.1f} s"

    fields = [("model", "model"), ("identity", "identity"), ("run id", "run_id"), ("status", "status"),
              ("host", "host"), ("started", "started"), ("wall time (latest run)", "wall_s"),
              ("prediction rows", "rows"), ("error rows (model)", "error_rows"), ("prompt tokens", "prompt_tokens"),
              ("output tokens", "output_tokens"), ("judge requests", "judge_requests"),
              ("judge error rows", "judge_errors"), ("judge tokens", "judge_tokens"),
              ("judge retries", "judge_retries"), ("datasets", "datasets")]
    body = [[name, *(wall(r.facts[k]) if k == "wall_s" else str(r.facts[k]) for r in runs)] for name, k in fields]
    body.append(["work_dir", *(r.work for r in runs)])
    return _table_html(["", *(r.label for r in runs)], body, numeric_from=99)


def _script_json(value) -> str:
    """JSON that is safe inside a <script> element."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")


def render_html(runs: list[RunData], charts: list[dict], bundle: str) -> str:
    page = resources.files("raveval.results").joinpath("report_page.html").read_text(encoding="utf-8")
    title = "raveval report: " + " vs ".join(r.label for r in runs)
    head, body = wide_table(runs)
    rows = [[i, *row] for i, run in enumerate(runs) for row in run.rows]
    parts = {
        "TITLE": html.escape(title),
        "SUMMARY": _table_html(head, body, numeric_from=2),
        "FACTS": _facts_html(runs),
        "CHART_DIVS": "".join(f'<section class="chart"><div id="{html.escape(c["id"])}"></div></section>'
                              for c in charts),
        "CHARTS_JSON": _script_json([{"id": c["id"], "spec": c["spec"]} for c in charts]),
        "ROWS_JSON": _script_json({"fields": ["run", *ROW_FIELDS], "runs": [r.label for r in runs], "rows": rows}),
        "VEGA_BUNDLE": bundle.replace("</script", "<\\/script"),
    }
    for k, v in parts.items():
        page = page.replace(f"@@{k}@@", v)
    return page


def build_report(work_dirs: list[str], out: str | None = None, png: bool = True, log=print,
                 runs: list[RunData] | None = None) -> tuple[str, list[str]]:
    """Write report.html (and png/<chart>.png) for the work_dirs into `out` (a
    folder or URI; default: <the work_dir>/report for one, ./raveval-report for
    several). `runs`: the work_dirs as the caller loaded them (load_run, label_runs),
    so their rows are not read twice. Returns (the HTML's path, the PNG paths)."""
    vlc = _vl_convert()
    if runs is None:
        runs = [load_run(w, log=log) for w in work_dirs]
        label_runs(runs)
    charts = all_charts(runs)
    target = WorkDir(out or (beside(work_dirs[0], "report") if len(work_dirs) == 1 else "raveval-report"))
    target.write_bytes(render_html(runs, charts, _javascript_bundle(vlc)).encode(), REPORT_FILE)
    pngs = []
    if png:
        for c in charts:
            target.write_bytes(vlc.vegalite_to_png(c["spec"], scale=2), "png", f"{c['id']}.png")
            pngs.append(target.path("png", f"{c['id']}.png") if target.local else f"{target}/png/{c['id']}.png")
    where = target.path(REPORT_FILE) if target.local else f"{target}/{REPORT_FILE}"
    return where, pngs
