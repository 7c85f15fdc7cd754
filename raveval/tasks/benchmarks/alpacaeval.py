"""AlpacaEval: a JSON list of {instruction, output, generator, dataset}.

One row per instruction (subject = its source `dataset`); `output` is the
reference (baseline) output the model's answer is compared with, pairwise.
`load_baseline` reads another model's outputs in the same layout, matched by
instruction.
"""
from __future__ import annotations

import json
from pathlib import Path

from raveval.config.schema import DatasetConfig

from .common import DatasetError, Parsed, existing, make_row


def _records(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: invalid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of objects")
    for i, obj in enumerate(data):
        if not isinstance(obj, dict) or not isinstance(obj.get("instruction"), str):
            raise DatasetError(f"{path}: item {i}: expected an object with a string `instruction`")
    return data


def load_baseline(path: Path) -> dict[str, str]:
    """{instruction: output} of a baseline model's outputs file."""
    return {obj["instruction"]: str(obj.get("output") or "") for obj in _records(path)}


def load(cfg: DatasetConfig) -> Parsed:
    path = existing(cfg.path, "alpacaeval path", want_file=True)
    rows = []
    for i, obj in enumerate(_records(path)):
        row = make_row(str(obj.get("dataset") or ""), str(i), obj["instruction"], [], "")
        out = obj.get("output")
        row["reference"] = [str(out)] if out else []
        row["reference_generator"] = str(obj.get("generator") or "")
        rows.append(row)
    return Parsed(rows, {}, {})
