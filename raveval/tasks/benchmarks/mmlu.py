"""MMLU: the JSON-lines layout (question, answer_a..answer_d, correct_answer, topic)
or the original CSV layout (`{subject}_{split}.csv`, no header: question,A,B,C,D,answer).
Prompted as multiple choice questions about the subject; the gold answer is a letter."""
from __future__ import annotations

from pathlib import Path

from raveval.config.schema import DatasetConfig

from .categories import MMLU_CATEGORIES
from .common import BadRow, Parsed, RowError, existing, letter, make_row, read_csv, read_jsonl, row_at, snake, split_files
from .spec import CHOICE_QA, Benchmark

JSONL_KEYS = ("question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer", "topic")


def _is_header_echo(values) -> bool:
    # Some conversions of MMLU kept a CSV header as a data row
    # (question="question", correct_answer="answer"); it is not a question.
    values = [str(v).strip().lower() for v in values]
    return values[0] == "question" and values[-1] in ("answer", "correct_answer")


def _from_jsonl(path: Path, bad: list[BadRow] | None) -> list[dict]:
    rows, counts = [], {}
    for lineno, obj in read_jsonl(path, bad):
        with row_at(bad, path, f"line {lineno}"):
            missing = [k for k in JSONL_KEYS if k not in obj]
            if missing:
                raise RowError(f"missing key(s) {missing}")
            if _is_header_echo([obj["question"], obj["correct_answer"]]):
                continue
            subject = snake(obj["topic"])
            choices = [obj[k] for k in JSONL_KEYS[1:5]]
            gold = letter(obj["correct_answer"], 4)
            idx = counts[subject] = counts.get(subject, -1) + 1
            rows.append(make_row(subject, f"{subject}/{idx}", obj["question"], choices, gold))
    return rows


def _from_csv_folder(path: Path, splits: tuple[str, ...], bad: list[BadRow] | None) -> list[dict]:
    _, files = split_files(path, splits, "mmlu")
    rows = []
    for subject, f in sorted(files.items()):
        idx = 0
        for line, cells in read_csv(f):
            with row_at(bad, f, f"line {line}", subject):
                if len(cells) != 6:
                    raise RowError(f"expected 6 columns (question,A,B,C,D,answer), got {len(cells)}")
                if _is_header_echo(cells):
                    continue
                gold = letter(cells[5], 4)
                rows.append(make_row(subject, f"{subject}/{idx}", cells[0], cells[1:5], gold))
                idx += 1
    return rows


def _read(path_str: str, splits: tuple[str, ...], what: str, bad: list[BadRow] | None) -> list[dict]:
    path = existing(path_str, f"mmlu {what}")
    if path.is_file() and path.suffix == ".jsonl":
        return _from_jsonl(path, bad)
    return _from_csv_folder(path, splits, bad)


def load(cfg: DatasetConfig) -> Parsed:
    bad: list[BadRow] = []
    rows = _read(cfg.path, ("test", "val", "dev"), "path", bad)
    fewshot: dict[str, list[dict]] = {}
    if cfg.fewshot_path:
        for r in _read(cfg.fewshot_path, ("dev", "val"), "fewshot_path", None):
            fewshot.setdefault(r["subject"], []).append(r)
    return Parsed(rows, fewshot, MMLU_CATEGORIES, bad)


BENCHMARK = Benchmark(name="mmlu", load=load, family=CHOICE_QA, answer="choice")
