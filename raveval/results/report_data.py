"""What a report shows of one work_dir: its summary, run facts and the rows
for the row browser, read from the files a run leaves (run.json, config.yaml,
summary.parquet, predictions/, judgements/). Needs no plotting package."""
from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field

import pyarrow.compute as pc
import yaml

from raveval.results.store import JUDGEMENTS, PREDICTIONS, Store
from raveval.results.workdir import WorkDir, WorkDirError
from raveval.tasks.benchmarks.categories import CEVAL_CATEGORIES, MMLU_CATEGORIES

# Subject -> category, for the heatmap's grouping; a subject in several groups
# (C-Eval's "hard" overlaps stem) takes the first.
CATEGORY_TABLES = {"mmlu": MMLU_CATEGORIES, "ceval": CEVAL_CATEGORIES}

PRED_COLUMNS = ["key", "dataset", "subject", "row_id", "turn", "prompt", "prediction", "answer_pred", "gold",
                "correct", "error", "prompt_tokens", "output_tokens"]
JUDGE_COLUMNS = ["key", "dataset", "row_id", "turn", "order", "score", "verdict", "outcome", "error",
                 "prompt_tokens", "completion_tokens", "retries"]
# The browser's rows carry text cut to this budget in all (prompt + prediction), so
# 100,000 rows stay a page of tens of MB, not of the whole prompts.
TEXT_BUDGET = 16_000_000
TEXT_MIN, TEXT_MAX = 80, 600


class ReportError(RuntimeError):
    """A work_dir has nothing to report (one line naming it)."""


@dataclass
class RunData:
    work: str  # as messages show it
    label: str = ""  # the column of this run in tables and charts
    run: dict = field(default_factory=dict)  # run.json
    config: dict = field(default_factory=dict)  # config.yaml (secrets already redacted there)
    summary: list[dict] = field(default_factory=list)
    facts: dict = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)  # {dataset, stage, errors}
    rows: list[list] = field(default_factory=list)  # the browser's rows, see ROW_FIELDS

    def dataset_kind(self, name: str) -> dict:
        """{"loader", "judge"}: the dataset's loader and judge mode (None if not judged), from config.yaml."""
        d = (self.config.get("datasets") or {}).get(name) or {}
        return {"loader": d.get("loader"), "judge": (d.get("judge") or {}).get("mode")}

    def category_of(self, dataset: str, subject: str) -> str:
        table = CATEGORY_TABLES.get(self.dataset_kind(dataset)["loader"] or "", {})
        return next((g for g, members in table.items() if subject in members), "all")


ROW_FIELDS = ["dataset", "subject", "row_id", "turn", "prompt", "prediction", "answer", "gold", "correct", "error",
              "judge"]


def beside(spec: str, name: str) -> str:
    """The folder `name` inside a work_dir given as a path or a URI (before its ?query, if it has one)."""
    base, q, query = str(spec).partition("?")
    return f"{base.rstrip('/')}/{name}" + (q + query if q else "")


def expand_work_dirs(specs: list[str]) -> list[str]:
    """Each work_dir, or for a run of several models (`models: [...]`, its run.json
    lists them) the sub-directories of its models, in their order."""
    out = []
    for spec in specs:
        models = _json(WorkDir(spec), "run.json").get("models")
        if isinstance(models, dict) and models:
            out += [beside(spec, m["work_dir"].partition("?")[0].rstrip("/").rsplit("/", 1)[-1]) for m in models.values()]
        else:
            out.append(spec)
    return out


def load_run(spec: str, log=print) -> RunData:
    """Everything the report shows of one work_dir (local folder or URI)."""
    work = WorkDir(spec)
    summary = Store(work, log=log, set_aside=False).read_summary()
    if summary is None:
        raise ReportError(f"no summary at {work}/summary.parquet (has a run finished there?)")
    data = RunData(work=str(work), summary=summary.to_pylist())
    data.run = _json(work, "run.json")
    raw = work.read_bytes("config.yaml")
    data.config = (yaml.safe_load(raw) or {}) if raw else {}
    preds = _read(work, PREDICTIONS, PRED_COLUMNS, log)
    judgements = _read(work, JUDGEMENTS, JUDGE_COLUMNS, log)
    data.facts = _facts(data, preds, judgements)
    data.errors = _errors(preds, "model") + _errors(judgements, "judge")
    data.rows = _browser_rows(preds, judgements)
    return data


def _json(work: WorkDir, name: str) -> dict:
    raw = work.read_bytes(name)
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


def _read(work: WorkDir, kind: str, columns: list[str], log):
    store = Store(work, kind, log=log, set_aside=False)
    parts = store.parts()
    if not parts:
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    have = None
    for part in parts:  # the columns of the first readable part (older runs may lack some)
        try:
            have = set(pq.read_schema(part, filesystem=work.fs).names)
            break
        except (OSError, pa.ArrowInvalid):
            continue
    if have is None:
        return None
    try:
        return store.read(columns=[c for c in columns if c in have])
    except (OSError, WorkDirError) as e:
        log(f"raveval: cannot read {work}/{kind}: {e}")
        return None


def _sum(table, column: str) -> int:
    if table is None or column not in table.column_names:
        return 0
    return int(pc.sum(table.column(column)).as_py() or 0)


def _count_errors(table) -> int:
    return 0 if table is None else table.num_rows - table.column("error").null_count


def _wall_s(run: dict) -> float | None:
    try:
        start = datetime.datetime.fromisoformat(run["started"])
        end = datetime.datetime.fromisoformat(run["finished"])
    except (KeyError, TypeError, ValueError):
        return None
    return (end - start).total_seconds()


def _facts(data: RunData, preds, judgements) -> dict:
    model = data.config.get("model") or {}
    identity = {k: model[k] for k in ("engine", "path", "model", "base_url", "dtype", "revision") if model.get(k)}
    return {
        "model": data.run.get("model") or model.get("name") or "?",
        "identity": ", ".join(f"{k}={v}" for k, v in identity.items()),
        "run_id": data.run.get("run_id", ""),
        "status": data.run.get("status", ""),
        "host": data.run.get("host", ""),
        "started": data.run.get("started", ""),
        "wall_s": _wall_s(data.run),
        "rows": 0 if preds is None else preds.num_rows,
        "error_rows": _count_errors(preds),
        "prompt_tokens": _sum(preds, "prompt_tokens"),
        "output_tokens": _sum(preds, "output_tokens"),
        "judge_requests": 0 if judgements is None else judgements.num_rows,
        "judge_errors": _count_errors(judgements),
        "judge_tokens": _sum(judgements, "prompt_tokens") + _sum(judgements, "completion_tokens"),
        "judge_retries": _sum(judgements, "retries"),
        "datasets": len({r["dataset"] for r in data.summary}),
    }


def _errors(table, stage: str) -> list[dict]:
    if table is None:
        return []
    bad = table.filter(pc.invert(pc.is_null(table.column("error"))))
    counts: dict[str, int] = {}
    for d in bad.column("dataset").to_pylist():
        counts[d] = counts.get(d, 0) + 1
    return [{"dataset": d, "stage": stage, "errors": n} for d, n in sorted(counts.items())]


def _cut(text, limit: int) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit} more chars]"


def _judge_text(js: list[dict]) -> tuple[str, str | None]:
    """(what the judge said, its error) for one answer: a score, or A/B verdicts per order."""
    said, errors = [], []
    for j in sorted(js, key=lambda j: j.get("order") or ""):
        if j.get("error"):
            errors.append(str(j["error"]))
        elif j.get("score") is not None:
            said.append(f"score {j['score']:g}")
        else:
            tag = f"{j['order']}: " if j.get("order") else ""
            said.append(f"{tag}{j.get('verdict') or ''} (outcome {j.get('outcome')})")
    return "; ".join(said), ("; ".join(errors) or None)


def _browser_rows(preds, judgements) -> list[list]:
    if preds is None:
        return []
    cols = [c for c in PRED_COLUMNS if c in preds.column_names]
    rows = preds.select(cols).to_pylist()
    by_answer: dict[tuple, list[dict]] = {}
    if judgements is not None:
        for j in judgements.to_pylist():
            by_answer.setdefault((j["dataset"], j["row_id"], j.get("turn") or 1), []).append(j)
    limit = max(TEXT_MIN, min(TEXT_MAX, TEXT_BUDGET // max(1, 2 * len(rows))))
    rows.sort(key=lambda r: (r["dataset"], r.get("subject") or "", str(r.get("row_id")), r.get("turn") or 1))
    out = []
    for r in rows:
        judge, judge_error = _judge_text(by_answer.get((r["dataset"], r["row_id"], r.get("turn") or 1), []))
        error = "; ".join(e for e in (r.get("error"), judge_error and f"judge: {judge_error}") if e) or None
        out.append([r["dataset"], r.get("subject") or "", str(r.get("row_id")), r.get("turn") or 1,
                    _cut(r.get("prompt"), limit), _cut(r.get("prediction"), limit), r.get("answer_pred") or "",
                    _cut(r.get("gold"), 200), r.get("correct"), _cut(error, 300) if error else None, judge])
    return out


def label_runs(runs: list[RunData]) -> None:
    """Column names: the model name, with the run id or folder where two runs share it."""
    names = [r.facts["model"] for r in runs]
    for r in runs:
        if names.count(r.facts["model"]) == 1:
            r.label = r.facts["model"]
        else:
            r.label = f"{r.facts['model']} ({r.facts['run_id'] or os.path.basename(r.work.rstrip('/'))})"
    seen: dict[str, int] = {}
    for r in runs:  # the same run given twice: still one column each
        seen[r.label] = seen.get(r.label, 0) + 1
        if seen[r.label] > 1:
            r.label = f"{r.label} #{seen[r.label]}"
