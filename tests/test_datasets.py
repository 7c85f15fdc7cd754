"""Dataset loaders: real shared data (skipped when absent), synthetic fixtures in
tmp_path for every layout, error messages, and the bundled demo data."""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pytest

import raveval.tasks.benchmarks
from raveval.tasks.benchmarks import BENCHMARKS, DatasetError, LoadedDataset, load_dataset
from raveval.tasks.benchmarks.categories import CEVAL_CATEGORIES, CEVAL_CHINESE_NAMES, MMLU_CATEGORIES
from raveval.config.schema import DatasetConfig

# Real data lives next to the project (../shared/data); RAVEVAL_SHARED_DATA overrides.
SHARED = Path(os.environ.get("RAVEVAL_SHARED_DATA")
              or Path(__file__).resolve().parents[1].parent / "shared" / "data")
needs_shared = pytest.mark.skipif(
    not all((SHARED / f).is_file() for f in ("mmlu/test.jsonl", "gsm8k/test.jsonl", "gsm8k/train.jsonl")),
    reason=f"shared benchmark data not found at {SHARED} (set RAVEVAL_SHARED_DATA)")
DEMO = Path(raveval.__file__).resolve().parent / "demo_data"
ROW_KEYS = {"subject", "row_id", "question", "choices", "gold"}


def cfg(loader: str, path, **kw) -> DatasetConfig:
    kw = {k: (str(v) if isinstance(v, Path) else v) for k, v in kw.items()}
    return DatasetConfig(loader=loader, path=str(path), mode="ll", **kw)


def check_rows(ds: LoadedDataset) -> None:
    shots = [r for rows in ds.fewshot.values() for r in rows]
    for r in ds.rows + shots:
        # Few-shot rows may add the worked solution (GSM8K, C-Eval dev).
        assert set(r) == ROW_KEYS or (r in shots and set(r) == ROW_KEYS | {"explanation"})
        assert all(isinstance(r[k], str) for k in set(r) - {"choices"})
        assert isinstance(r["choices"], list) and all(isinstance(c, str) for c in r["choices"])
    ids = [r["row_id"] for r in ds.rows]
    assert len(ids) == len(set(ids))
    json.dumps(ds.rows)  # JSON friendly


def write_csv(path: Path, rows, header=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path: Path, objs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs), encoding="utf-8")
    return path


# ---------------------------------------------------------------- category tables

def test_category_tables():
    mmlu = [s for members in MMLU_CATEGORIES.values() for s in members]
    assert len(mmlu) == len(set(mmlu)) == 57
    main = [s for g in ("stem", "social_science", "humanities", "other") for s in CEVAL_CATEGORIES[g]]
    assert len(main) == len(set(main)) == 52
    assert set(CEVAL_CATEGORIES["hard"]) <= set(CEVAL_CATEGORIES["stem"])
    assert len(CEVAL_CATEGORIES["hard"]) == 8
    assert set(CEVAL_CHINESE_NAMES) == set(main)


def test_registry():
    assert {b.name for b in BENCHMARKS} >= {"mmlu", "ceval", "gsm8k", "generic"}
    with pytest.raises(DatasetError, match="unknown loader 'nope'"):
        load_dataset("x", cfg("nope", "x"))


def test_every_benchmark_module_is_registered_once():
    """Adding a benchmark is its module plus one registry line: no module is left out."""
    folder = Path(raveval.tasks.benchmarks.__file__).parent
    shared = {"__init__", "common", "spec", "categories"}
    modules = {p.stem for p in folder.glob("*.py")} - shared
    names = [b.name for b in BENCHMARKS]
    assert len(names) == len(set(names))
    assert modules == {b.load.__module__.rpartition(".")[2] for b in BENCHMARKS}
    for b in BENCHMARKS:
        assert raveval.tasks.benchmarks.benchmark(b.name) is b


# ---------------------------------------------------------------- real shared data

@needs_shared
def test_real_mmlu_jsonl():
    ds = load_dataset("mmlu", cfg("mmlu", SHARED / "mmlu" / "test.jsonl"))
    check_rows(ds)
    # 14044 lines, of which 2 are a CSV header kept as data (question="question"):
    # the real MMLU test set has 14042 questions.
    assert len(ds.rows) == 14042
    subjects = {r["subject"] for r in ds.rows}
    assert len(subjects) == 57 and "moral_scenarios" in subjects
    grouped = {s for members in ds.groups.values() for s in members}
    assert subjects == grouped
    assert set(ds.groups) == {"stem", "humanities", "social_sciences", "other"}
    counts = {s: sum(r["subject"] == s for r in ds.rows) for s in subjects}
    assert counts["elementary_mathematics"] == 378 and counts["professional_law"] == 1534
    assert {r["gold"] for r in ds.rows} == set("ABCD")
    assert all(len(r["choices"]) == 4 for r in ds.rows)
    assert [r["subject"] for r in ds.rows] == sorted(r["subject"] for r in ds.rows)
    assert ds.rows[0]["row_id"] == "abstract_algebra/0" and ds.fewshot == {}


@needs_shared
def test_real_mmlu_limit_seed_subjects():
    path = SHARED / "mmlu" / "test.jsonl"
    full = load_dataset("m", cfg("mmlu", path))
    by_id = {r["row_id"]: r for r in full.rows}
    a = load_dataset("m", cfg("mmlu", path, limit=5, seed=7))
    b = load_dataset("m", cfg("mmlu", path, limit=5, seed=7))
    c = load_dataset("m", cfg("mmlu", path, limit=5, seed=8))
    first = load_dataset("m", cfg("mmlu", path, limit=5))
    assert a.rows == b.rows and a.rows != c.rows
    assert len(a.rows) == 57 * 5
    assert all(by_id[r["row_id"]] == r for r in a.rows)  # row ids do not move
    assert [r["row_id"] for r in first.rows[:5]] == [f"abstract_algebra/{i}" for i in range(5)]
    # A subject's sample does not depend on which other subjects are selected.
    sub = load_dataset("m", cfg("mmlu", path, limit=5, seed=7, subjects=["virology", "anatomy"]))
    assert {r["subject"] for r in sub.rows} == {"anatomy", "virology"}
    assert sub.rows == [r for r in a.rows if r["subject"] in ("anatomy", "virology")]
    assert sub.groups == {"stem": ["anatomy"], "other": ["virology"]}


@needs_shared
def test_real_gsm8k():
    ds = load_dataset("gsm8k", cfg("gsm8k", SHARED / "gsm8k" / "test.jsonl",
                                   fewshot_path=SHARED / "gsm8k" / "train.jsonl"))
    check_rows(ds)
    assert len(ds.rows) == 1319 and len(ds.fewshot[""]) == 7473
    assert all(re.fullmatch(r"-?\d+(\.\d+)?", r["gold"]) for r in ds.rows)
    assert ds.rows[0]["row_id"] == "0" and ds.rows[0]["gold"] == "18"
    assert ds.rows[0]["choices"] == [] and ds.rows[0]["subject"] == "" and ds.groups == {}
    shot = ds.fewshot[""][0]
    assert shot["explanation"] and "####" not in shot["explanation"] and shot["gold"].isdigit()
    s1 = load_dataset("g", cfg("gsm8k", SHARED / "gsm8k" / "test.jsonl", limit=10, seed=3))
    s2 = load_dataset("g", cfg("gsm8k", SHARED / "gsm8k" / "test.jsonl", limit=10, seed=3))
    assert s1.rows == s2.rows and len(s1.rows) == 10
    assert [int(r["row_id"]) for r in s1.rows] == sorted(int(r["row_id"]) for r in s1.rows)


# ---------------------------------------------------------------- MMLU CSV layout

def make_mmlu_csv(root: Path) -> Path:
    for split, n in (("test", 4), ("dev", 2)):
        for subject in ("anatomy", "philosophy"):
            rows = [(f"{subject} q{i}, with comma", "a", "b", "c", "d", "ABCD"[i % 4]) for i in range(n)]
            write_csv(root / "data" / split / f"{subject}_{split}.csv", rows)
    return root / "data"


def test_mmlu_csv_layout(tmp_path):
    data = make_mmlu_csv(tmp_path)
    ds = load_dataset("m", cfg("mmlu", data / "test", fewshot_path=data / "dev"))
    check_rows(ds)
    assert [r["row_id"] for r in ds.rows] == [f"anatomy/{i}" for i in range(4)] + \
        [f"philosophy/{i}" for i in range(4)]
    assert ds.rows[1] == {"subject": "anatomy", "row_id": "anatomy/1", "question": "anatomy q1, with comma",
                          "choices": ["a", "b", "c", "d"], "gold": "B"}
    assert {s: len(v) for s, v in ds.fewshot.items()} == {"anatomy": 2, "philosophy": 2}
    assert ds.groups == {"stem": ["anatomy"], "humanities": ["philosophy"]}
    # The parent data/ folder works too and picks test/ (dev/ for fewshot).
    parent = load_dataset("m", cfg("mmlu", data, fewshot_path=data))
    assert parent.rows == ds.rows and parent.fewshot == ds.fewshot


def test_mmlu_jsonl_fewshot_and_topic_names(tmp_path):
    objs = [{"question": f"q{i}", "answer_a": "1", "answer_b": "2", "answer_c": "3", "answer_d": "4",
             "correct_answer": "ABCD"[i % 4], "topic": t}
            for i, t in enumerate(["high school physics", "moral scenarios", "high school physics"])]
    path = write_jsonl(tmp_path / "mmlu.jsonl", objs)
    ds = load_dataset("m", cfg("mmlu", path, fewshot_path=path))
    assert [(r["subject"], r["row_id"], r["gold"]) for r in ds.rows] == [
        ("high_school_physics", "high_school_physics/0", "A"),
        ("high_school_physics", "high_school_physics/1", "C"),
        ("moral_scenarios", "moral_scenarios/0", "B")]
    assert set(ds.fewshot) == {"high_school_physics", "moral_scenarios"}


# ---------------------------------------------------------------- C-Eval layout

CEVAL_HEADER = ["id", "question", "A", "B", "C", "D", "answer"]


def make_ceval(root: Path) -> Path:
    base = root / "ceval" / "formal_ceval"
    for subject in ("college_physics", "law", "physician"):
        write_csv(base / "dev" / f"{subject}_dev.csv",
                  [(i, f"{subject} 示例{i}", "甲", "乙", "丙", "丁", "A", "解析") for i in range(2)],
                  CEVAL_HEADER + ["explanation"])
        write_csv(base / "val" / f"{subject}_val.csv",
                  [(i, f"{subject} 问题{i}", "甲", "乙", "丙", "丁", "ABCD"[i % 4]) for i in range(5)],
                  CEVAL_HEADER)
        write_csv(base / "test" / f"{subject}_test.csv",
                  [(i, f"{subject} 测试{i}", "甲", "乙", "丙", "丁", "") for i in range(3)],
                  CEVAL_HEADER)
    return base


def test_ceval_val_with_dev_fewshot(tmp_path):
    base = make_ceval(tmp_path)
    ds = load_dataset("ceval", cfg("ceval", base / "val", fewshot_path=base / "dev"))
    check_rows(ds)
    assert len(ds.rows) == 15
    assert ds.rows[0] == {"subject": "college_physics", "row_id": "college_physics/0",
                          "question": "college_physics 问题0", "choices": ["甲", "乙", "丙", "丁"], "gold": "A"}
    assert {s: len(v) for s, v in ds.fewshot.items()} == {"college_physics": 2, "law": 2, "physician": 2}
    assert ds.fewshot["law"][0]["explanation"] == "解析" and "explanation" not in ds.rows[0]
    assert ds.groups == {"stem": ["college_physics"], "humanities": ["law"], "other": ["physician"],
                         "hard": ["college_physics"]}
    lim = load_dataset("ceval", cfg("ceval", base / "val", limit=2, subjects=["law"]))
    assert [r["row_id"] for r in lim.rows] == ["law/0", "law/1"]
    assert lim.groups == {"humanities": ["law"]}


def test_ceval_test_split_has_empty_gold(tmp_path):
    base = make_ceval(tmp_path)
    ds = load_dataset("ceval", cfg("ceval", base / "test"))
    assert len(ds.rows) == 9 and {r["gold"] for r in ds.rows} == {""}


def bad_rows(loaded) -> list[tuple[str, str, str]]:
    return [(b.row_id, b.subject, b.error) for b in loaded.bad]


def test_ceval_val_empty_answer_is_a_bad_row(tmp_path):
    f = write_csv(tmp_path / "val" / "law_val.csv", [(0, "q", "a", "b", "c", "d", ""), (1, "q", "a", "b", "c", "d", "B")],
                  CEVAL_HEADER)
    loaded = load_dataset("c", cfg("ceval", f.parent))
    assert [r["gold"] for r in loaded.rows] == ["B"]
    assert bad_rows(loaded) == [("law_val.csv:2", "law", f"{f}: line 2: bad answer letter '' (expected one of A, B, C, D)")]


# ---------------------------------------------------------------- generic loader

GENERIC = [{"prompt": f"What is {i}+{i}?", "label": str(2 * i), "opts": [str(2 * i), "0"],
            "A": str(2 * i), "B": "0", "topic": "sums" if i % 2 else "adds", "uid": f"u{i}"}
           for i in range(4)]


def test_generic_jsonl_list_column(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", GENERIC)
    fields = {"question": "prompt", "gold": "label", "choices": "opts", "subject": "topic", "row_id": "uid"}
    ds = load_dataset("g", cfg("generic", path, fields=fields))
    check_rows(ds)
    assert [r["row_id"] for r in ds.rows] == ["u0", "u2", "u1", "u3"]  # by subject, then file order
    assert ds.rows[1] == {"subject": "adds", "row_id": "u2", "question": "What is 2+2?",
                          "choices": ["4", "0"], "gold": "4"}


def test_generic_csv_column_list_and_default_ids(tmp_path):
    path = write_csv(tmp_path / "g.csv", [[o["prompt"], o["label"], o["A"], o["B"]] for o in GENERIC],
                     ["prompt", "label", "A", "B"])
    ds = load_dataset("g", cfg("generic", path, fields={"question": "prompt", "gold": "label",
                                                        "choices": ["A", "B"]}, limit=3))
    check_rows(ds)
    assert [r["row_id"] for r in ds.rows] == ["0", "1", "2"]
    assert ds.rows[2]["choices"] == ["4", "0"] and ds.rows[2]["subject"] == ""


def test_generic_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "g.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": o["prompt"], "gold": int(o["label"]), "choices": o["opts"]}
                                         for o in GENERIC]), path)
    ds = load_dataset("g", cfg("generic", path, fields={"choices": "choices"}))
    check_rows(ds)
    assert ds.rows[3] == {"subject": "", "row_id": "3", "question": "What is 3+3?",
                          "choices": ["6", "0"], "gold": "6"}


def test_generic_missing_column(tmp_path):
    objs = [dict(GENERIC[0]), {k: v for k, v in GENERIC[1].items() if k != "label"}]
    path = write_jsonl(tmp_path / "g.jsonl", objs)
    loaded = load_dataset("g", cfg("generic", path, fields={"question": "prompt", "gold": "label"}))
    assert len(loaded.rows) == 1 and bad_rows(loaded) == [("g.jsonl:2", "", f"{path}: line 2: missing column 'label'")]
    with pytest.raises(DatasetError, match="unknown fields key"):
        load_dataset("g", cfg("generic", path, fields={"answer": "label"}))
    with pytest.raises(DatasetError, match="must name one column"):
        load_dataset("g", cfg("generic", path, fields={"question": ["prompt"]}))


# ---------------------------------------------------------------- errors

def test_missing_paths(tmp_path):
    for loader in ("mmlu", "ceval", "gsm8k", "generic"):
        with pytest.raises(DatasetError, match="not found: .*nowhere"):
            load_dataset("x", cfg(loader, tmp_path / "nowhere"))
    good = write_jsonl(tmp_path / "t.jsonl", [{"question": "q", "answer": "#### 1"}])
    with pytest.raises(DatasetError, match="fewshot_path not found"):
        load_dataset("x", cfg("gsm8k", good, fewshot_path=tmp_path / "train.jsonl"))


def test_bad_json_line(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text('{"question": "q", "answer": "#### 1"}\n\n{"question": oops}\n[1]\n')
    loaded = load_dataset("g", cfg("gsm8k", path))
    assert [r["row_id"] for r in loaded.rows] == ["0"]
    assert [(b.row_id, b.error.split(": ", 2)[2]) for b in loaded.bad] == [
        ("test.jsonl:3", "invalid JSON (Expecting value)"), ("test.jsonl:4", "expected a JSON object")]
    # A few-shot file shapes every prompt: a bad record there fails the dataset.
    with pytest.raises(DatasetError, match=r"test\.jsonl: line 3: invalid JSON"):
        load_dataset("g", cfg("gsm8k", write_jsonl(tmp_path / "ok.jsonl", [{"question": "q", "answer": "#### 1"}]),
                              fewshot_path=path))


def test_non_utf8_line_is_a_bad_row_naming_the_file(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"question": "q", "answer": "#### 1"}\n{"question": "caf\u00e9", "answer": "#### 2"}\n'
                     .encode("latin-1"))
    loaded = load_dataset("g", cfg("gsm8k", path))
    assert len(loaded.rows) == 1
    assert loaded.bad[0].error == f"{path}: line 2: not UTF-8 (byte 0xe9 at column 18); save the file as UTF-8"


def test_gsm8k_gold_and_missing_marker(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"question": "q", "answer": "so\n#### 1,234"}])
    assert load_dataset("g", cfg("gsm8k", path)).rows[0]["gold"] == "1234"
    path = write_jsonl(tmp_path / "t.jsonl", [{"question": "q", "answer": "#### 1"}, {"question": "q", "answer": "2"}])
    assert bad_rows(load_dataset("g", cfg("gsm8k", path))) == [("t.jsonl:2", "", f"{path}: line 2: answer has no '#### <number>'")]


def test_bad_answer_letter(tmp_path):
    f = write_csv(tmp_path / "test" / "anatomy_test.csv", [("q", "a", "b", "c", "d", "A"), ("q", "a", "b", "c", "d", "E")])
    loaded = load_dataset("m", cfg("mmlu", f.parent))
    assert [r["row_id"] for r in loaded.rows] == ["anatomy/0"]
    assert bad_rows(loaded) == [("anatomy_test.csv:2", "anatomy", f"{f}: line 2: bad answer letter 'E' (expected one of A, B, C, D)")]
    # A subjects filter leaves out the bad records of the other subjects.
    assert load_dataset("m", cfg("mmlu", f.parent, subjects=["anatomy"])).bad
    obj = {"question": "q", "answer_a": "1", "answer_b": "2", "answer_c": "3", "answer_d": "4",
           "correct_answer": "5", "topic": "anatomy"}
    path = write_jsonl(tmp_path / "m.jsonl", [obj, {**obj, "correct_answer": "B"}])
    loaded = load_dataset("m", cfg("mmlu", path))
    assert [r["row_id"] for r in loaded.rows] == ["anatomy/0"]  # ids count the rows that load
    assert bad_rows(loaded) == [("m.jsonl:1", "", f"{path}: line 1: bad answer letter '5' (expected one of A, B, C, D)")]


def test_mmlu_csv_wrong_column_count(tmp_path):
    f = write_csv(tmp_path / "test" / "anatomy_test.csv", [("q", "a", "b", "A")])
    assert bad_rows(load_dataset("m", cfg("mmlu", f.parent)))[0][2] == (
        f"{f}: line 1: expected 6 columns (question,A,B,C,D,answer), got 4")


def test_unknown_subject(tmp_path):
    data = make_mmlu_csv(tmp_path)
    with pytest.raises(DatasetError, match=r"unknown subject.*'astrology'.*valid: \['anatomy', 'philosophy'\]"):
        load_dataset("m", cfg("mmlu", data / "test", subjects=["anatomy", "astrology"]))


# ---------------------------------------------------------------- bundled demo data

def test_demo_mmlu():
    ds = load_dataset("demo", cfg("mmlu", DEMO / "mmlu" / "test", fewshot_path=DEMO / "mmlu" / "dev"))
    check_rows(ds)
    subjects = {"elementary_mathematics", "high_school_geography", "world_religions"}
    assert {r["subject"] for r in ds.rows} == subjects and len(ds.rows) == 24
    assert set(ds.fewshot) == subjects and all(len(v) == 3 for v in ds.fewshot.values())
    assert ds.groups == {"stem": ["elementary_mathematics"], "humanities": ["world_religions"],
                         "social_sciences": ["high_school_geography"]}
    assert load_dataset("demo", cfg("mmlu", DEMO / "mmlu")).rows == ds.rows


def test_demo_ceval():
    ds = load_dataset("demo", cfg("ceval", DEMO / "ceval" / "val", fewshot_path=DEMO / "ceval" / "dev"))
    check_rows(ds)
    assert {r["subject"] for r in ds.rows} == {"high_school_physics", "modern_chinese_history"}
    assert len(ds.rows) == 12 and all(r["gold"] in "ABCD" and r["gold"] for r in ds.rows)
    assert all(len(v) == 3 for v in ds.fewshot.values())
    assert ds.groups == {"stem": ["high_school_physics"], "humanities": ["modern_chinese_history"],
                         "hard": ["high_school_physics"]}


def test_demo_gsm8k_and_generic():
    ds = load_dataset("demo", cfg("gsm8k", DEMO / "gsm8k" / "test.jsonl",
                                  fewshot_path=DEMO / "gsm8k" / "train.jsonl"))
    check_rows(ds)
    assert len(ds.rows) == 12 and len(ds.fewshot[""]) == 4
    assert ds.fewshot[""][0]["explanation"].endswith("12 dollars.")
    assert all(r["gold"].isdigit() for r in ds.rows)
    # The same file through the generic loader (gold is then the whole answer text).
    gen = load_dataset("demo", cfg("generic", DEMO / "gsm8k" / "test.jsonl", fields={"gold": "answer"}))
    assert [r["row_id"] for r in gen.rows] == [r["row_id"] for r in ds.rows]
    assert all(g["gold"].endswith("#### " + r["gold"]) for g, r in zip(gen.rows, ds.rows))
