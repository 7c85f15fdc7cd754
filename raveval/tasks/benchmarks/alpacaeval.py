"""AlpacaEval: a JSON list of {instruction, output, generator, dataset}.

One row per instruction (subject = its source `dataset`); `output` is the
reference (baseline) output the model's answer is compared with, pairwise.
`load_baseline` reads another model's outputs in the same layout, matched by
instruction.

Judged pairwise as AlpacaEval's judges do: the two outputs are named m and M,
and the judge answers with the identifier of the better one.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from raveval.config.schema import DatasetConfig
from raveval.tasks.verdicts import Verdict

from .common import BadRow, DatasetError, Parsed, RowError, existing, make_row, row_at
from .spec import OPEN_CHAT, Benchmark, JudgeMode, Prompter, chat


def _records(path: Path, bad: list[BadRow] | None) -> list[tuple[int, dict]]:
    """(index, item) of the file's JSON list; an item without a string `instruction` is a bad row."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: invalid JSON ({e.msg}, line {e.lineno})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not UTF-8; save the file as UTF-8") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of objects")
    items = []
    for i, obj in enumerate(data):
        with row_at(bad, path, f"item {i}"):
            if not isinstance(obj, dict) or not isinstance(obj.get("instruction"), str):
                raise RowError("expected an object with a string `instruction`")
            items.append((i, obj))
    return items


def load_baseline(path: Path, rows: list[dict]) -> dict[str, list[str]]:
    """{row_id: [output]} of a baseline model's outputs file, matched to the rows by instruction."""
    outputs = {obj["instruction"]: str(obj.get("output") or "") for _, obj in _records(path, None)}
    return {r["row_id"]: [outputs[r["question"]]] for r in rows if r["question"] in outputs}


def load(cfg: DatasetConfig) -> Parsed:
    path = existing(cfg.path, "alpacaeval path", want_file=True)
    rows, bad = [], []
    for i, obj in _records(path, bad):
        row = make_row(str(obj.get("dataset") or ""), str(i), obj["instruction"], [], "")
        out = obj.get("output")
        row["reference"] = [str(out)] if out else []
        row["reference_generator"] = str(obj.get("generator") or "")
        rows.append(row)
    return Parsed(rows, {}, {}, bad)


# ---- judge prompt and verdict --------------------------------------------------
_SYSTEM = ("You are a careful evaluator of instruction-following language models. You compare the "
           "outputs of two models for one instruction and say which output a human would prefer.")
_USER = (
    "Which of the two outputs below answers the instruction better? Judge helpfulness, accuracy, and how "
    "closely the instruction is followed. The order of the outputs and their length must not influence "
    "you.\n\n"
    "## Instruction\n\n{instruction}\n\n"
    "## Output (m)\n\n{output_m}\n\n"
    "## Output (M)\n\n{output_M}\n\n"
    "Reply with the identifier of the better output and nothing else: m or M."
)


def judge_messages(instruction: str, output_m: str, output_M: str) -> list[dict]:
    return chat(_SYSTEM, _USER.format(instruction=instruction, output_m=output_m, output_M=output_M))


def parse_verdict(text: str) -> Optional[str]:
    """'m' or 'M' (the identifiers of the two outputs)."""
    if not text:
        return None
    t = text.strip().strip("`\"'().[] \n")
    if t in ("m", "M"):
        return t
    found = re.findall(r"(?<![A-Za-z])(m|M)(?![A-Za-z])", text)
    return found[-1] if found else None


VERDICT = Verdict("alpaca", parse_verdict, "no m/M", first="m", guided=("m", "M"))


def _pairwise(cfg: DatasetConfig) -> Prompter:
    return lambda row, first, second: judge_messages(row["question"], first[0], second[0])


BENCHMARK = Benchmark(name="alpacaeval", load=load, family=OPEN_CHAT,
                      judge_modes={"pairwise": JudgeMode(VERDICT, _pairwise)}, baseline=load_baseline)
