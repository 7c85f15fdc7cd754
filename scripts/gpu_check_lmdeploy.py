"""On a GPU machine: a real LMDeploy replica (TurboMind by default) evaluates a
short C-Eval-format set, by generation and by choice log-likelihood, and the
throughput is printed.

1. Writes C-Eval rows in OpenCompass's layout (`val/` and `dev/` CSVs,
   `id,question,A,B,C,D,answer[,explanation]`) into a temporary folder:
   arithmetic questions in Chinese, so any model can answer them.
2. Runs `raveval run eval_internlm2_ceval_turbomind` on them with the chosen
   model: one Ray Serve replica holding one LMDeploy engine on `--tp` GPUs,
   5-shot chat generation (ceval_val_gen) and 5-shot choice log-likelihood
   (ceval_val_ll, TurboMind's next-token logits).
3. Prints the summary, rows/s after the model is up, and generated tokens/s.

Needs lmdeploy with CUDA (pip install -e '.[hf,lmdeploy]'); no test needs this script.

    python scripts/gpu_check_lmdeploy.py                                   # the tiny model
    python scripts/gpu_check_lmdeploy.py --model /models/internlm2-chat-1_8b --trust-remote-code
    python scripts/gpu_check_lmdeploy.py --model /models/Qwen2.5-0.5B-Instruct --backend pytorch

Exit status 1 when any dataset cannot run or any row ends as an error (the
tiny model's random weights make its accuracy chance-level: it is only reported).
"""
from __future__ import annotations

import argparse
import csv
import random
import sys
import tempfile
import time
from pathlib import Path

SUBJECTS = ("high_school_mathematics", "middle_school_mathematics")


def write_ceval(root: Path, rows: int, seed: int = 0) -> Path:
    """C-Eval-format rows (val + 5 dev shots per subject) under root/formal_ceval."""
    rng = random.Random(seed)
    base = root / "formal_ceval"
    for split, n in (("val", rows), ("dev", 5)):
        (base / split).mkdir(parents=True, exist_ok=True)
        for subject in SUBJECTS:
            with open(base / split / f"{subject}_{split}.csv", "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["id", "question", "A", "B", "C", "D", "answer"] + (["explanation"] if split == "dev" else []))
                for i in range(n):
                    a, b = rng.randint(2, 99), rng.randint(2, 99)
                    right = a + b
                    wrong = rng.sample([x for x in range(right - 20, right + 21) if x != right and x > 0], 3)
                    choices = wrong + [right]
                    rng.shuffle(choices)
                    gold = "ABCD"[choices.index(right)]
                    row = [i, f"计算：{a} 加 {b} 等于多少？", *choices, gold]
                    if split == "dev":
                        row.append(f"{a} + {b} = {right}，所以选 {gold}。")
                    w.writerow(row)
    return base


def overrides(args, data: Path, work: Path) -> list[str]:
    o = [f"datasets.{d}.{k}={data / s}" for d in ("ceval_val_gen", "ceval_val_ll")
         for k, s in (("path", "val"), ("fewshot_path", "dev"))]
    o += [f"model.path={args.model}", f"model.dtype={args.dtype}", f"model.max_model_len={args.max_model_len}",
          f"model.lmdeploy.backend={args.backend}", f"model.lmdeploy.tp={args.tp}",
          f"model.lmdeploy.max_batch_size={args.max_batch_size}",
          f"model.lmdeploy.cache_max_entry_count={args.cache_max_entry_count}",
          f"model.lmdeploy.trust_remote_code={str(args.trust_remote_code).lower()}",
          f"work_dir={work}", "resume=false", f"model_stream.batch_rows={args.batch_rows}"]
    return o + list(args.set)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:tiny-llama",
                    help="model folder or hub id (default: the project's tiny model, built locally)")
    ap.add_argument("--backend", default="turbomind", choices=["turbomind", "pytorch"])
    ap.add_argument("--tp", type=int, default=1, help="GPUs of the replica (tensor parallel)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16"])
    ap.add_argument("--max-model-len", type=int, default=4096, help="LMDeploy's session_len")
    ap.add_argument("--max-batch-size", type=int, default=128)
    ap.add_argument("--cache-max-entry-count", type=float, default=0.5, help="share of free GPU memory for the k/v cache")
    ap.add_argument("--trust-remote-code", action="store_true", help="needed by InternLM2's tokenizer")
    ap.add_argument("--rows", type=int, default=200, help="C-Eval val rows per subject (two subjects)")
    ap.add_argument("--batch-rows", type=int, default=256, help="rows per Serve call")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more raveval config overrides")
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device here: LMDeploy runs on GPUs only (the adapter's CPU tests: "
              "pytest tests/test_lmdeploy_engine.py)", file=sys.stderr)
        return 2
    print(f"GPU: {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}")

    import pyarrow.compute as pc

    from raveval.run.evaluate import run, shutdown
    from raveval.run.config import load_config
    from raveval.results.summary import markdown
    from raveval.results.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-lmdeploy-"))
    data = write_ceval(tmp / "ceval", args.rows)
    cfg = load_config("eval_internlm2_ceval_turbomind", overrides(args, data, tmp / "work"))
    print(f"model {args.model} on LMDeploy {args.backend}, tp={args.tp}; {2 * args.rows} C-Eval rows x (gen, ll) in {data}")
    t0 = time.perf_counter()
    try:
        result = run(cfg, log=lambda *a: print(*a, flush=True))
    finally:
        shutdown(cfg)
    wall = time.perf_counter() - t0
    print()
    print(markdown(result.summary, subjects=False))

    preds = Store(cfg.work_dir).read()
    errors = preds.filter(pc.is_valid(preds["error"])).to_pylist()
    s = result.stats
    busy = max(1e-9, s.get("wall_s", wall) - s.get("ready_s", 0.0))
    out_tokens = pc.sum(preds["output_tokens"]).as_py() or 0
    print(f"\n{s.get('rows', 0)} rows in {wall:.1f}s (model serving after {s.get('ready_s', 0):.1f}s): "
          f"{s.get('rows_per_s', 0):.1f} rows/s while serving, {out_tokens / busy:.0f} generated tokens/s")
    for mode in ("gen", "ll"):
        part = preds.filter(pc.equal(preds["mode"], mode)) if "mode" in preds.column_names else None
        if part is not None and part.num_rows:
            lat = sorted(x for x in part["latency_s"].to_pylist() if x is not None)
            if lat:
                print(f"  {mode}: {part.num_rows} rows, request latency p50 {lat[len(lat) // 2]:.3f}s, "
                      f"p95 {lat[int(len(lat) * 0.95) - 1]:.3f}s")
    for e in errors[:5]:
        print(f"  error row {e.get('dataset')}/{e.get('row_id')}: {e['error']}")
    ok = not result.failed and not errors
    for reason in result.failed:
        print(f"FAILED: {reason}", file=sys.stderr)
    print(f"lmdeploy check: {'OK' if ok else 'FAILED'} ({len(errors)} error rows)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
