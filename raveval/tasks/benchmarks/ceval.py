"""C-Eval in the OpenCompass layout: `formal_ceval/{dev,val,test}/{subject}_{split}.csv`
with a header `id,question,A,B,C,D,answer[,explanation]`. The test split has no labels,
so its gold is "". Few-shot (dev) rows also carry `explanation`.
Prompted in Chinese with the subject's Chinese name, as OpenCompass's ceval configs do."""
from __future__ import annotations

from raveval.config.schema import DatasetConfig

from .categories import CEVAL_CATEGORIES, CEVAL_CHINESE_NAMES
from .common import BadRow, DatasetError, Parsed, existing, letter, make_row, read_csv, row_at, split_files
from .spec import Benchmark, Family

COLUMNS = ("question", "A", "B", "C", "D", "answer")

PROMPT = Family(
    header="以下是中国关于{subject_name}考试的单项选择题，请选出其中的正确答案。\n\n",
    template="{question}\n{choices}\n答案:",
    shot_answer=" {gold}",
    subject_names=CEVAL_CHINESE_NAMES,
)


def _read(path_str: str, splits: tuple[str, ...], what: str, bad: list[BadRow] | None,
          shots: bool = False) -> list[dict]:
    split, files = split_files(existing(path_str, f"ceval {what}"), splits, "ceval")
    rows = []
    for subject, f in sorted(files.items()):
        records = read_csv(f)
        header = next(records, (1, []))[1]
        col = {name.strip(): i for i, name in enumerate(header)}
        missing = [c for c in COLUMNS if c not in col and not (c == "answer" and split == "test")]
        if missing:
            raise DatasetError(f"{f}: header lacks column(s) {missing} (got {header})")
        for idx, (line, cells) in enumerate(records):
            with row_at(bad, f, f"line {line}", subject):
                cells = cells + [""] * (len(header) - len(cells))
                choices = [cells[col[k]] for k in "ABCD"]
                answer = cells[col["answer"]] if "answer" in col else ""
                gold = letter(answer, 4, allow_empty=(split == "test"))
                row = make_row(subject, f"{subject}/{idx}", cells[col["question"]], choices, gold)
                if shots:  # dev rows: the explanation column, for chain-of-thought shots
                    row["explanation"] = cells[col["explanation"]] if "explanation" in col else ""
                rows.append(row)
    return rows


def load(cfg: DatasetConfig) -> Parsed:
    bad: list[BadRow] = []
    rows = _read(cfg.path, ("val", "test", "dev"), "path", bad)
    fewshot: dict[str, list[dict]] = {}
    if cfg.fewshot_path:
        for r in _read(cfg.fewshot_path, ("dev",), "fewshot_path", None, shots=True):
            fewshot.setdefault(r["subject"], []).append(r)
    return Parsed(rows, fewshot, CEVAL_CATEGORIES, bad)


def submission(rows: list[dict]) -> dict:
    """C-Eval's leaderboard file: {subject: {id: letter}}, ids as in the test CSVs
    (row ids are `<subject>/<id>`); a row without an answer gets ""."""
    out: dict[str, dict[str, str]] = {}
    for r in sorted(rows, key=lambda r: (r["subject"], int(r["row_id"].rsplit("/", 1)[1]))):
        out.setdefault(r["subject"], {})[r["row_id"].rsplit("/", 1)[1]] = r.get("answer_pred") or ""
    return out


BENCHMARK = Benchmark(name="ceval", load=load, family=PROMPT, answer="choice", submission=submission)
