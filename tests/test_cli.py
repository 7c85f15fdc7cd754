"""The `raveval` command as a user runs it: in a subprocess, with its own local Ray."""
from __future__ import annotations

import subprocess
import sys

import pyarrow.parquet as pq


def raveval(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "raveval", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def test_help_imports_no_heavy_package():
    code = ("import sys; from raveval.cli import main\n"
            "try: main(['--help'])\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('ray', 'torch', 'transformers', 'vllm', 'pyarrow', 'hydra') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout and "raveval run" not in out.stderr
    assert "run" in out.stdout and "list" in out.stdout


def test_list_filters_by_all_words():
    out = raveval("list", "mmlu", "ll")
    assert out.returncode == 0 and "mmlu_ll" in out.stdout and "gsm8k" not in out.stdout


def test_dry_run_prints_plan_without_running(tmp_path):
    from raveval.engines.base import machine_cpus

    out = raveval("run", "demo", f"work_dir={tmp_path}", "--dry-run")
    assert out.returncode == 0, out.stderr
    # num_cpus: auto: one local replica gets every CPU of the machine.
    assert f"replicas: 1 x (num_cpus={float(machine_cpus())}, num_gpus=0.0)" in out.stdout
    assert "demo_mmlu_ll: mmlu mode=ll" in out.stdout and "rows=24" in out.stdout
    assert not (tmp_path / "predictions").exists()


def test_bad_override_exits_2_naming_the_key(tmp_path):
    out = raveval("run", "demo", f"work_dir={tmp_path}", "model.replica=2")
    assert out.returncode == 2 and "model.replica: unknown key" in out.stderr


def test_run_end_to_end(tmp_path):
    work = tmp_path / "w"
    out = raveval("run", f"work_dir={work}", "datasets.demo_gsm8k_gen.limit=3", "datasets.demo_ceval_gen.limit=2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "| tiny-llama | demo_mmlu_ll | accuracy |" in out.stdout
    summary = pq.read_table(work / "summary.parquet").to_pylist()
    gsm = next(s for s in summary if s["dataset"] == "demo_gsm8k_gen" and s["metric"] == "accuracy")
    assert gsm["n"] == 3 and gsm["errors"] == 0
    assert (work / "config.yaml").is_file() and (work / "summary.md").is_file()
    # A dataset that cannot load makes the exit status non-zero; the others are still evaluated.
    out = raveval("run", f"work_dir={work}", "datasets=[demo_gsm8k_gen,gsm8k_gen]", "datasets.demo_gsm8k_gen.limit=3",
                  f"data_root={tmp_path}/none")
    assert out.returncode == 1 and "FAILED" in out.stderr and "gsm8k_gen" in out.stderr
    # The demo rows finished in the first run are reused, not recomputed.
    assert "all 3 rows reused" in out.stdout and "| demo_gsm8k_gen | accuracy |" in out.stdout
