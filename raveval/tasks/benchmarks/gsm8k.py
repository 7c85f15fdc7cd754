"""GSM8K: JSON lines {question, answer}; the answer ends with `#### <number>`.
Shots show the worked solution, then `#### <gold>`; the gold answer is a number."""
from __future__ import annotations

from pathlib import Path

from raveval.config.schema import DatasetConfig

from .common import BadRow, Parsed, RowError, existing, make_row, read_jsonl, row_at
from .spec import Benchmark, Family

PROMPT = Family(header="", template="Question: {question}\nAnswer:", shot_answer=" {explanation}\n#### {gold}")


def final_number(answer: str) -> str | None:
    """The number after the last '####', commas removed ('1,200' -> '1200')."""
    if "####" not in answer:
        return None
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def _read(path: Path, bad: list[BadRow] | None, shots: bool = False) -> list[dict]:
    """Rows of one file; few-shot rows (`shots`) also carry the worked solution
    as `explanation`, which chain-of-thought shots show before '#### <gold>'."""
    rows = []
    for lineno, obj in read_jsonl(path, bad):
        with row_at(bad, path, f"line {lineno}"):
            for key in ("question", "answer"):
                if not isinstance(obj.get(key), str):
                    raise RowError(f"missing string field {key!r}")
            gold = final_number(obj["answer"])
            if not gold:
                raise RowError("answer has no '#### <number>'")
            row = make_row("", str(lineno - 1), obj["question"], [], gold)
            if shots:
                row["explanation"] = obj["answer"].rsplit("####", 1)[0].strip()
            rows.append(row)
    return rows


def load(cfg: DatasetConfig) -> Parsed:
    bad: list[BadRow] = []
    rows = _read(existing(cfg.path, "gsm8k path", want_file=True), bad)
    fewshot = {}
    if cfg.fewshot_path:
        fewshot = {"": _read(existing(cfg.fewshot_path, "gsm8k fewshot_path", want_file=True), None, shots=True)}
    return Parsed(rows, fewshot, {}, bad)


BENCHMARK = Benchmark(name="gsm8k", load=load, family=PROMPT, answer="number")
