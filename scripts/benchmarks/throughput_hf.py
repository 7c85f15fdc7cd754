"""raveval vs a plain in-process loop: same engine, same batch size, same prompts.

The tiny model on the full MMLU test set (ll mode) and GSM8K test (gen, 32
new tokens), first through raveval (local Ray, Serve replica, Data stream),
then through a loop that calls the same Hugging Face engine's batch methods
directly, on the same torch threads, with the prompts length-sorted across the
whole set. Prints wall time, steady-state rows/s and raveval's fixed start-up
(ray init + deploy + first row), side by side, and the machine's load.

    .venv/bin/python scripts/benchmarks/throughput_hf.py [--data-root ../shared/data] [--limit N]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from raveval.run.evaluate import run, shutdown
from raveval.run.config import load_config
from raveval.results.store import Store

ROOT = Path(__file__).resolve().parents[2]  # the checkout


def plain_loop(cfg, requests: list) -> dict:
    """The baseline a user would write: one process, the engine's own batch methods
    on every core the replica gets (num_cpus, `auto`: the machine's), each mode's
    prompts sorted by length across the whole set, batch_size rows at a time."""
    from raveval.engines.base import GenParams
    from raveval.engines.hf import HFEngine, _size
    from raveval.tasks.request import decode_prompt

    t0 = time.perf_counter()
    engine = HFEngine(cfg.model)
    t_loaded = time.perf_counter()
    bs = cfg.model.batch_size
    for mode in ("ll", "gen"):
        rows = sorted((r for r in requests if r.mode == mode), key=lambda r: -_size(decode_prompt(r.prompt, r.chat)))
        for i in range(0, len(rows), bs):
            chunk = rows[i:i + bs]
            if mode == "ll":
                engine.loglikelihood_batch([(decode_prompt(r.prompt, r.chat), list(r.continuations)) for r in chunk])
            else:
                p = json.loads(chunk[0].params)
                params = GenParams(**{**p, "stop": tuple(p["stop"])})
                engine.generate_batch([decode_prompt(r.prompt, r.chat) for r in chunk], params)
    t_end = time.perf_counter()
    return {"load_s": t_loaded - t0, "run_s": t_end - t_loaded, "rows": len(requests)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--limit", type=int, default=None, help="rows per MMLU subject and of GSM8K (default: all)")
    ap.add_argument("--batch-size", type=int, default=16, help="engine batch size, the same on both sides")
    ap.add_argument("--batch-rows", type=int, default=256, help="raveval rows per Serve call")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="raveval-bench-")
    overrides = [f"data_root={args.data_root}", f"work_dir={work}", f"model.batch_size={args.batch_size}",
                 f"model_stream.batch_rows={args.batch_rows}", "datasets.gsm8k_gen.generation.max_new_tokens=32"]
    if args.limit:
        overrides += [f"datasets.mmlu_ll.limit={args.limit}", f"datasets.gsm8k_gen.limit={args.limit}"]
    cfg = load_config("eval_tiny_mmlu_gsm8k", overrides)

    t0 = time.perf_counter()
    result = run(cfg, log=lambda *_: None)
    t_run = time.perf_counter() - t0
    shutdown(cfg)
    s = result.stats
    n = s["rows"]
    ok = Store(work).read(columns=["error"]).column("error").null_count
    base = plain_loop(cfg, result.plan.requests)

    steady = s["rows_per_s"]
    plain_rate = base["rows"] / base["run_s"]
    print(f"rows: {n} (MMLU ll + GSM8K gen, 32 new tokens), engine batch {args.batch_size}, "
          f"{args.batch_rows} rows per Serve call; rows without error: {ok}")
    print(f"{'':28}{'raveval':>12}{'plain loop':>12}")
    print(f"{'wall time (s)':28}{t_run:12.1f}{base['load_s'] + base['run_s']:12.1f}")
    print(f"{'start-up (s)':28}{s['ready_s']:12.1f}{base['load_s']:12.1f}   (raveval: ray init + deploy until the replica serves; plain: model load)")
    print(f"{'first batch back (s)':28}{s['first_batch_s']:12.1f}{'':12}   ({args.batch_rows} rows per batch, {cfg.model_stream.callers * cfg.model_stream.calls_per_caller} in flight)")
    print(f"{'rows/s after start-up':28}{steady:12.1f}{plain_rate:12.1f}")
    print(f"{'ratio raveval / plain':28}{steady / plain_rate:12.2f}   (target >= 0.95)")
    print(f"torch threads: {int(cfg.model.num_cpus)} on both sides; load average after: {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} cores")
    for d in result.summary.to_pylist():
        if d["metric"] == "accuracy":
            print(f"accuracy {d['dataset']}: {100 * d['value']:.2f}% over {d['n']} rows, {d['errors']} errors")


if __name__ == "__main__":
    main()
