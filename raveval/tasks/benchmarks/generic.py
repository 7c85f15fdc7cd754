"""Generic loader: a .jsonl, .csv (with header) or .parquet file whose columns are
mapped to our row keys by `cfg.fields`, e.g.
    fields: {question: prompt, gold: label, choices: [A, B, C, D], subject: topic}
`question` and `gold` default to columns of the same name; `choices` is one column
holding a list (a JSON list string in CSV) or a list of columns; `row_id` defaults
to the record index in the file. Rows with choices (`ll` mode or `answer: choice`) are
prompted as multiple choice questions, others as "Question: ... Answer:"."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

from raveval.config.schema import DatasetConfig

from .common import BadRow, DatasetError, Parsed, RowError, existing, make_row, read_jsonl, row_at
from .spec import CHOICE_QA, OPEN_QA, Benchmark, Family

KEYS = ("question", "gold", "choices", "subject", "row_id")


def _records(path: Path, bad: list[BadRow] | None) -> Iterator[tuple[str, str, dict]]:
    """Yield (where, default row_id, record) for each record of the file; a record
    that is not one yields the RowError saying why."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for lineno, obj in read_jsonl(path, bad):
            yield f"line {lineno}", str(lineno - 1), obj
    elif suffix == ".csv":
        try:
            with open(path, encoding="utf-8-sig", newline="") as f:
                reader = csv.DictReader(f)
                for idx, rec in enumerate(reader):
                    # DictReader pads short rows with None and keys extra cells by None.
                    if None in rec or None in rec.values():
                        rec = RowError(f"expected {len(reader.fieldnames)} cells like the header")
                    yield f"line {reader.line_num}", str(idx), rec
        except UnicodeDecodeError:
            raise DatasetError(f"{path}: not UTF-8; save the file as UTF-8") from None
    elif suffix == ".parquet":
        import pyarrow.parquet as pq  # only needed for parquet files

        for idx, rec in enumerate(pq.read_table(path).to_pylist()):
            yield f"row {idx + 1}", str(idx), rec
    else:
        raise DatasetError(f"generic: unsupported file type {path} (use .jsonl, .csv or .parquet)")


def _read(path: Path, fields: dict, bad: list[BadRow] | None) -> list[dict]:
    def get(rec: dict, column: str):
        if column not in rec:
            raise RowError(f"missing column {column!r}")
        return rec[column]

    rows = []
    for where, default_id, rec in _records(path, bad):
        with row_at(bad, path, where):
            if isinstance(rec, RowError):
                raise rec
            question = get(rec, fields.get("question", "question"))
            if question is None:
                raise RowError(f"column {fields.get('question', 'question')!r} is empty")
            gold = get(rec, fields.get("gold", "gold"))
            spec = fields.get("choices")
            if spec is None:
                choices = []
            elif isinstance(spec, list):
                choices = [get(rec, c) for c in spec]
            else:
                choices = get(rec, spec)
                if isinstance(choices, str):
                    try:
                        choices = json.loads(choices)
                    except json.JSONDecodeError:
                        choices = None
                if not isinstance(choices, (list, tuple)):
                    raise RowError(f"column {spec!r} does not hold a list")
            subject = str(get(rec, fields["subject"])) if "subject" in fields else ""
            row_id = str(get(rec, fields["row_id"])) if "row_id" in fields else default_id
            rows.append(make_row(subject, row_id, str(question), list(choices),
                                 "" if gold is None else str(gold)))
    return rows


def load(cfg: DatasetConfig) -> Parsed:
    unknown = sorted(set(cfg.fields) - set(KEYS))
    if unknown:
        raise DatasetError(f"generic: unknown fields key(s) {unknown}; allowed: {list(KEYS)}")
    lists = [k for k, v in cfg.fields.items() if isinstance(v, list) and k != "choices"]
    if lists:
        raise DatasetError(f"generic: fields {lists} must name one column (only choices takes a list)")
    bad: list[BadRow] = []
    rows = _read(existing(cfg.path, "generic path", want_file=True), cfg.fields, bad)
    fewshot: dict[str, list[dict]] = {}
    if cfg.fewshot_path:
        for r in _read(existing(cfg.fewshot_path, "generic fewshot_path", want_file=True), cfg.fields, None):
            fewshot.setdefault(r["subject"], []).append(r)
    return Parsed(rows, fewshot, {}, bad)


def family(cfg: DatasetConfig) -> Family:
    return CHOICE_QA if cfg.mode == "ll" or cfg.answer == "choice" else OPEN_QA


BENCHMARK = Benchmark(name="generic", load=load, family=family)
