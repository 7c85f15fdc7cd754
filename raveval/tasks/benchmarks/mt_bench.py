"""MT-Bench (FastChat llm_judge layout): `question.jsonl` lines
{question_id, category, turns: [turn 1, turn 2], reference?: [answer 1, answer 2]}.

Each question is one row (subject = category); the model answers turn 1, then
turn 2 with its own turn-1 answer in the chat history, and both turns are
judged. Reference answers (math, reasoning, coding) come from the question's
`reference` field, or from `judge.reference_path`, a FastChat answer file
such as `reference_answer_gpt-4.jsonl`, which wins where it has the question.
"""
from __future__ import annotations

from pathlib import Path

from raveval.config.schema import DatasetConfig

from .common import DatasetError, Parsed, existing, make_row, read_jsonl


def load_answers(path: Path) -> dict[str, list[str]]:
    """A FastChat answer file: lines {question_id, choices: [{turns: [...]}]} -> {row_id: turns}."""
    out = {}
    for lineno, obj in read_jsonl(path):
        try:
            turns = obj["choices"][0]["turns"]
            qid = obj["question_id"]
        except (KeyError, IndexError, TypeError):
            raise DatasetError(f"{path}: line {lineno}: expected question_id and choices[0].turns") from None
        if not isinstance(turns, list):
            raise DatasetError(f"{path}: line {lineno}: choices[0].turns is not a list")
        out[str(qid)] = [str(t) for t in turns]
    return out


def load(cfg: DatasetConfig) -> Parsed:
    path = existing(cfg.path, "mt_bench path", want_file=True)
    refs = {}
    if cfg.judge is not None and cfg.judge.reference_path:
        refs = load_answers(existing(cfg.judge.reference_path, "mt_bench judge.reference_path", want_file=True))
    rows = []
    for lineno, obj in read_jsonl(path):
        turns = obj.get("turns")
        if "question_id" not in obj or not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise DatasetError(f"{path}: line {lineno}: expected question_id and turns (a list of strings)")
        row_id = str(obj["question_id"])
        row = make_row(str(obj.get("category") or ""), row_id, turns[0], [], "")
        row["turns"] = list(turns)
        row["reference"] = [str(x) for x in (refs.get(row_id) or obj.get("reference") or [])]
        rows.append(row)
    return Parsed(rows, {}, {})
