"""Many models in one run (`models: [...]`): each model in its own sub-directory
with its own deployment, side by side when they fit and one after another when
they do not, a model that fails leaves the others evaluated, one wide summary
with a column per model; `model=[a,b]` is an error."""
from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def write_models(tmp: Path, models: dict[str, str]) -> None:
    """Model configs tmp/conf/model/<name>.yaml (a run from `tmp` finds them first)."""
    folder = tmp / "conf" / "model"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in models.items():
        (folder / f"{name}.yaml").write_text(text)


def write_run(tmp: Path, models: list[str]) -> Path:
    path = tmp / "many.yaml"
    path.write_text(f"""defaults:
  - base
  - datasets: [demo_mmlu_ll]
  - _self_
models: [{', '.join(models)}]
work_dir: {tmp}/work
""")
    return path


def raveval(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raveval", *args], cwd=tmp, capture_output=True, text=True,
                          timeout=600)


def cli(monkeypatch, capsys, tmp: Path, *args: str) -> tuple[int, str, str]:
    """`raveval ARGS` in this process, from folder `tmp` (for what starts no Ray)."""
    from raveval.cli import main

    monkeypatch.chdir(tmp)
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def run_record(work: Path) -> dict:
    return json.loads((work / "run.json").read_text())


TINY = """name: {name}
engine: hf
path: builtin:tiny-llama
dtype: float32
max_model_len: {max_len}
batch_size: 8
replicas: 1
num_cpus: 1
num_gpus: 0
"""


def test_two_tiny_models_side_by_side_with_a_wide_summary_and_resume(tmp_path, monkeypatch, capsys):
    # Two variants of the tiny model: their identities differ (name, max_model_len).
    write_models(tmp_path, {"tiny_a": TINY.format(name="tiny-a", max_len=2048),
                            "tiny_b": TINY.format(name="tiny-b", max_len=1024)})
    config = str(write_run(tmp_path, ["tiny_a", "tiny_b"]))
    work = tmp_path / "work"

    first = raveval(tmp_path, "run", config)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    # 2 CPUs for the two replicas: every machine that runs the tests has them.
    assert "2 models side by side: their replicas need 2 CPU, 0 GPU together" in first.stdout, first.stdout[-3000:]
    runs = {m: run_record(work / m) for m in ("tiny-a", "tiny-b")}
    for m, rec in runs.items():  # each model's own deployment served its 24 rows
        assert rec["status"] == "finished" and rec["serve_app"].startswith(f"raveval-{m}-"), rec
        assert sum(r["rows"] for r in rec["replicas"]) == 24, rec
        assert pq.read_table(work / m / "predictions").num_rows == 24
    assert runs["tiny-a"]["serve_app"] != runs["tiny-b"]["serve_app"]
    a, b = runs["tiny-a"], runs["tiny-b"]
    assert a["started"] <= b["finished"] and b["started"] <= a["finished"], runs  # at the same time

    with open(work / "summary_wide.csv") as f:
        wide = list(csv.DictReader(f))
    assert list(wide[0]) == ["dataset", "metric", "tiny-a", "tiny-b"], wide[0]
    head = {(r["dataset"], r["metric"]): r for r in wide}[("demo_mmlu_ll", "accuracy")]
    long = pq.read_table(work / "summary.parquet").to_pylist()
    for m in ("tiny-a", "tiny-b"):  # the wide table holds each model's own figure
        mine = next(r for r in long if r["model"] == m and r["metric"] == "accuracy")
        assert mine["n"] == 24 and abs(float(head[m]) - mine["value"]) < 1e-9, (mine, head)
    assert "| dataset | metric | tiny-a | tiny-b |" in first.stdout

    before = (work / "summary_wide.csv").read_text()
    code, report, _ = cli(monkeypatch, capsys, tmp_path, "report", str(work))
    assert code == 0 and report.startswith("| dataset | metric | tiny-a | tiny-b |"), report

    again = raveval(tmp_path, "run", config)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("all 24 rows reused from") == 2, again.stdout[-3000:]
    assert (work / "summary_wide.csv").read_text() == before


INSTANT = """name: {name}
engine: instant
num_cpus: {cpus}
num_gpus: {gpus}
"""


def test_models_that_do_not_fit_run_one_after_another_and_a_failure_spares_the_others(tmp_path, monkeypatch, capsys):
    import ray._private.utils

    cpus = ray._private.utils.get_num_cpus()  # what a local Ray will have: each model takes all of it
    write_models(tmp_path, {"inst_a": INSTANT.format(name="inst-a", cpus=cpus, gpus=0),
                            "inst_gpu": INSTANT.format(name="inst-gpu", cpus=0, gpus=1),
                            "inst_b": INSTANT.format(name="inst-b", cpus=cpus, gpus=0)})
    config = str(write_run(tmp_path, ["inst_a", "inst_gpu", "inst_b"]))
    work = tmp_path / "work"

    code, _, err = cli(monkeypatch, capsys, tmp_path, "run", config, "model=[inst_a,inst_b]")
    assert code == 2 and "use models=[inst_a,inst_b]" in err, err
    code, dry, err = cli(monkeypatch, capsys, tmp_path, "run", config, "--dry-run")
    assert code == 0, err
    assert [ln for ln in dry.splitlines() if ln.startswith("model ")] == [
        "model inst-a: engine=instant path=instant dtype=float32 batch_size=16",
        "model inst-gpu: engine=instant path=instant dtype=float32 batch_size=16",
        "model inst-b: engine=instant path=instant dtype=float32 batch_size=16"], dry
    assert f"work_dir: {work}/inst-gpu   ray: local" in dry and not work.exists()
    code, dry, err = cli(monkeypatch, capsys, tmp_path, "run", config, "models=[inst_b,inst_a]", "--dry-run")
    assert code == 0 and [ln.split(":")[0] for ln in dry.splitlines() if ln.startswith("model ")] == [
        "model inst-b", "model inst-a"], dry + err

    out = raveval(tmp_path, "run", config)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"3 models one after another: their replicas need {2 * cpus:g} CPU, 1 GPU together" in out.stdout
    # The model that cannot start says why, once at the end too; the others are evaluated.
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("raveval: 1 of 3 models failed: inst-gpu: ModelStartError: model inst-gpu:") \
        and "need 1.0 GPU" in last, out.stderr[-3000:]
    a, b = run_record(work / "inst-a"), run_record(work / "inst-b")
    assert a["status"] == b["status"] == "finished" and a["finished"] <= b["started"], (a, b)  # one after another
    assert run_record(work / "inst-gpu")["status"] == "failed"
    top = run_record(work)
    assert top["placement"] == "one after another" and top["models"]["inst-gpu"]["status"] == "failed", top
    with open(work / "summary_wide.csv") as f:
        wide = list(csv.DictReader(f))
    assert list(wide[0]) == ["dataset", "metric", "inst-a", "inst-gpu", "inst-b"]
    # The same engine gives both the same figures; the failed model has none.
    assert all(r["inst-a"] and r["inst-a"] == r["inst-b"] and not r["inst-gpu"] for r in wide), wide
    assert re.search(r"^\| demo_mmlu_ll \| accuracy \| (\S+) \| - \| \1 \|$", out.stdout, re.M), out.stdout[-2000:]
