"""Bad input and partial failure, as a user meets them: each case ends with exit
status 2 (config) or 1 (data or runtime), a line naming the file, key, row or
resource, no traceback, and nothing already computed lost or overwritten."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from replica_loss_cluster import write_generic_run

ROOT = Path(__file__).resolve().parents[1]


def raveval(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "raveval", "run", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def last_line(out) -> str:
    lines = out.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def no_traceback(out) -> bool:
    return "Traceback" not in out.stderr and "Traceback" not in out.stdout


def test_malformed_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("defaults:\n  - base\ndatasets:\n  x: {loader: generic, path: a\n")
    out = raveval(bad, "--dry-run")
    assert out.returncode == 2 and no_traceback(out), out.stderr
    assert last_line(out).startswith(f"raveval: not valid YAML: {bad}: line 5, column 1:")


def test_override_of_a_dataset_not_in_the_run(tmp_path):
    out = raveval("demo", f"work_dir={tmp_path}", "datasets=[demo_gsm8k_gen]", "datasets.demo_mmlu_ll.limit=3", "--dry-run")
    assert out.returncode == 2 and no_traceback(out)
    assert last_line(out) == ("raveval: override 'datasets.demo_mmlu_ll.limit=3': dataset demo_mmlu_ll is not in this "
                              "run (its datasets: demo_gsm8k_gen); add it to datasets=[...] or drop the override")


def test_non_ascii_and_spaces_in_an_override_need_no_quotes(tmp_path):
    work = tmp_path / "résultats 2026"
    out = raveval("demo", f"work_dir={work}", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert f"work_dir: {work}   ray: local" in out.stdout


def test_work_dir_that_is_a_file_or_cannot_be_made(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for work in (afile, "/proc/raveval-test/w"):
        out = raveval("demo", f"work_dir={work}", "datasets=[demo_mmlu_ll]")
        assert out.returncode == 1 and no_traceback(out), out.stderr
        assert last_line(out).startswith(f"raveval: cannot create {work}"), out.stderr


def test_missing_model_path_is_one_line_before_ray_starts(tmp_path):
    out = raveval("demo", f"work_dir={tmp_path}", "model.path=/no/such/model", "datasets=[demo_mmlu_ll]", timeout=120)
    assert out.returncode == 1 and no_traceback(out)
    assert last_line(out) == "raveval: model tiny-llama: model.path /no/such/model does not exist on this machine"


def stored(work: Path) -> list[dict]:
    rows = []
    for part in sorted((work / "predictions").glob("part-*.parquet")):
        rows += pq.read_table(part, columns=["key", "row_id", "error"]).to_pylist()
    return rows


def test_bad_rows_corrupt_parts_and_failed_loads_lose_nothing(tmp_path):
    good = [json.dumps({"question": f"Q{i}: which is alpha?", "choices": [f"alpha {i}", "beta", "gamma", "delta"],
                        "gold": f"alpha {i}"}) for i in range(6)]
    lines = [*good[:2], '{"question": oops', *good[2:4], json.dumps({"question": "no choices", "gold": "x"}), *good[4:]]
    cfg = write_generic_run(tmp_path, lines, "g")
    work = tmp_path / "work"

    # 1. Two bad records: error rows naming file and line; the six good rows run; exit 1.
    first = raveval(cfg)
    assert first.returncode == 1 and no_traceback(first), first.stderr[-3000:]
    rows = stored(work)
    errors = {r["row_id"]: r["error"] for r in rows if r["error"]}
    assert errors == {"g.jsonl:3": f"{tmp_path}/g.jsonl: line 3: invalid JSON (Expecting value)",
                      "g.jsonl:6": f"{tmp_path}/g.jsonl: line 6: missing column 'choices'"}
    assert sum(r["error"] is None for r in rows) == 6
    head = pq.read_table(work / "summary.parquet").to_pylist()[0]
    assert (head["n"], head["errors"]) == (6, 2)
    assert "2 rows are records of the data files that cannot be read" in first.stderr
    assert last_line(first).startswith("raveval: 2 of 8 rows ended in errors")
    summary, config = (work / "summary.parquet").read_bytes(), (work / "config.yaml").read_text()

    # 2. A part cut short, and the data file gone: the part is set aside and named, the
    #    previous summary and config stay, the dataset's failure is said; exit 1.
    parts = sorted((work / "predictions").glob("part-*.parquet"))
    cut = next(p for p in parts if any(r["error"] is None for r in pq.read_table(p).to_pylist()))
    lost = sorted(r["row_id"] for r in pq.read_table(cut).to_pylist())  # row ids: line number - 1
    cut.write_bytes(cut.read_bytes()[:100])
    dry = raveval(cfg, "--dry-run")
    assert dry.returncode == 0 and f"{cut} is not readable Parquet" in dry.stderr and cut.exists()
    (tmp_path / "g.jsonl").rename(tmp_path / "g.jsonl.away")
    second = raveval(cfg)
    assert second.returncode == 1 and no_traceback(second), second.stderr[-3000:]
    assert f"set aside as {cut.name}.corrupt" in second.stdout + second.stderr
    assert not cut.exists() and cut.with_name(cut.name + ".corrupt").exists()
    assert "generic path not found" in second.stderr
    assert (work / "summary.parquet").read_bytes() == summary and (work / "config.yaml").read_text() == config

    # 3. The file is back: the set-aside rows are computed again, the others reused, and
    #    the bad records are not written twice.
    (tmp_path / "g.jsonl.away").rename(tmp_path / "g.jsonl")
    before = len(stored(work))
    third = raveval(cfg)
    assert third.returncode == 1, third.stderr[-3000:]
    rows = stored(work)
    new = rows[before:]  # parts sort in write order
    assert lost and sorted(r["row_id"] for r in new) == lost and set(lost) <= {"0", "1", "3", "4", "6", "7"}
    assert all(r["error"] is None for r in new)
    head = pq.read_table(work / "summary.parquet").to_pylist()[0]
    assert (head["n"], head["errors"]) == (6, 2)


def test_ceval_test_split_has_no_accuracy_and_writes_the_submission_file(tmp_path):
    """C-Eval's test split has no answers: the run reports how many rows were answered,
    and writes the file the C-Eval leaderboard takes ({subject: {id: letter}})."""
    folder = tmp_path / "ceval" / "test"
    folder.mkdir(parents=True)
    for subject, n in (("law", 3), ("physician", 2)):
        (folder / f"{subject}_test.csv").write_text("id,question,A,B,C,D\n" + "".join(
            f"{i},问题 {i}：哪一个是对的？,甲{i},乙,丙,丁\n" for i in range(n)), encoding="utf-8")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"""defaults:
  - base
  - model: tiny_hf
  - _self_
datasets:
  ceval_test:
    loader: ceval
    path: {folder}
    mode: ll
work_dir: {tmp_path}/work
""")
    out = raveval(cfg, "--no-subjects")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| tiny-llama | ceval_test | answered | 100.00% | 5 | 0 |" in out.stdout
    sub = json.loads((tmp_path / "work" / "submissions" / "ceval_test.json").read_text())
    assert list(sub) == ["law", "physician"] and list(sub["law"]) == ["0", "1", "2"] and list(sub["physician"]) == ["0", "1"]
    assert all(v in "ABCD" and v for s in sub.values() for v in s.values())
    assert f"{tmp_path}/work/submissions/ceval_test.json" in out.stdout
