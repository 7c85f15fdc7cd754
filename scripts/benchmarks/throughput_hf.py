"""raveval vs a plain in-process loop: same engine, same batch size, same prompts.

The tiny model on the full MMLU test set (ll mode) and GSM8K test (gen, 32
new tokens), first through raveval (local Ray, Serve replica, Data stream),
then through a loop that calls the same Hugging Face engine's batch methods
directly, on the same torch threads, with the prompts length-sorted across the
whole set. Prints wall time, steady-state rows/s and raveval's fixed start-up
(ray init + deploy + first row), side by side, and the machine's load.

    .venv/bin/python scripts/benchmarks/throughput_hf.py [--data-root ../shared/data] [--limit N] [--repeat 3]
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
    """The baseline a user would write: one process, the engine's own batch code on
    every core the replica gets (num_cpus, `auto`: the machine's), each mode's rows
    tokenized, sorted by length in tokens across the whole set, batch_size at a time."""
    from raveval.engines.base import GenParams
    from raveval.engines.hf import HFEngine
    from raveval.tasks.request import decode_prompt

    t0 = time.perf_counter()
    engine = HFEngine(cfg.model)
    t_loaded = time.perf_counter()
    bs = cfg.model.batch_size
    ll = sorted((engine._ll_ids(decode_prompt(r.prompt, r.chat), list(r.continuations))
                 for r in requests if r.mode == "ll"), key=lambda it: -(len(it[0]) + max(map(len, it[1]), default=0)))
    for i in range(0, len(ll), bs):
        engine._loglikelihood(ll[i:i + bs])
    by_params: dict[str, list] = {}
    for r in requests:
        if r.mode == "gen":
            by_params.setdefault(r.params, []).append(r)
    for raw, rows in by_params.items():
        p = json.loads(raw)
        params = GenParams(**{**p, "stop": tuple(p["stop"])})
        encs = sorted((engine._gen_ids(decode_prompt(r.prompt, r.chat), params) for r in rows), key=lambda e: -len(e))
        for i in range(0, len(encs), bs):
            engine._generate(encs[i:i + bs], params)
    t_end = time.perf_counter()
    engine.batcher.close()
    return {"load_s": t_loaded - t0, "run_s": t_end - t_loaded, "rows": len(requests)}


def spread(xs: list[float], fmt: str = "{:.1f}") -> str:
    """min / median / max of the repeats."""
    xs = sorted(xs)
    return " / ".join(fmt.format(x) for x in (xs[0], xs[len(xs) // 2], xs[-1])) if len(xs) > 1 else fmt.format(xs[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--limit", type=int, default=None, help="rows per MMLU subject and of GSM8K (default: all)")
    ap.add_argument("--batch-size", type=int, default=16, help="engine batch size, the same on both sides")
    ap.add_argument("--batch-rows", type=int, default=256, help="raveval rows per Serve call")

    ap.add_argument("--repeat", type=int, default=3, help="runs of each side (the spread is printed)")
    args = ap.parse_args()

    overrides = [f"data_root={args.data_root}", f"model.batch_size={args.batch_size}",
                 f"model_stream.batch_rows={args.batch_rows}", "datasets.gsm8k_gen.generation.max_new_tokens=32"]
    if args.limit:
        overrides += [f"datasets.mmlu_ll.limit={args.limit}", f"datasets.gsm8k_gen.limit={args.limit}"]
    load_before = os.getloadavg()[0]
    walls, rates, readies, firsts, plain_walls, plain_rates, loads = [], [], [], [], [], [], []
    for k in range(args.repeat):
        work = tempfile.mkdtemp(prefix="raveval-bench-")
        cfg = load_config("eval_tiny_mmlu_gsm8k", overrides + [f"work_dir={work}"])
        t0 = time.perf_counter()
        result = run(cfg, log=lambda *_: None)
        walls.append(time.perf_counter() - t0)
        shutdown(cfg)
        s = result.stats
        rates.append(s["rows_per_s"])
        readies.append(s["ready_s"])
        firsts.append(s["first_batch_s"])
        ok = Store(work).read(columns=["error"]).column("error").null_count
        base = plain_loop(cfg, result.plan.requests)
        plain_walls.append(base["load_s"] + base["run_s"])
        plain_rates.append(base["rows"] / base["run_s"])
        loads.append(base["load_s"])
        print(f"run {k + 1}: raveval {rates[-1]:.1f} rows/s, plain loop {plain_rates[-1]:.1f} rows/s, "
              f"ratio {rates[-1] / plain_rates[-1]:.2f}", flush=True)

    ratios = [r / p for r, p in zip(rates, plain_rates)]
    print(f"rows: {s['rows']} (MMLU ll + GSM8K gen, 32 new tokens), engine batch {args.batch_size}, "
          f"{args.batch_rows} rows per Serve call; rows without error: {ok}; "
          f"{args.repeat} runs of each, min / median / max")
    print(f"{'':28}{'raveval':>24}{'plain loop':>24}")
    print(f"{'wall time (s)':28}{spread(walls):>24}{spread(plain_walls):>24}")
    print(f"{'start-up (s)':28}{spread(readies):>24}{spread(loads):>24}   (raveval: ray init + deploy until the replica serves; plain: model load)")
    print(f"{'first batch back (s)':28}{spread(firsts):>24}{'':24}   ({args.batch_rows} rows per batch, {cfg.model_stream.callers * cfg.model_stream.calls_per_caller} in flight)")
    print(f"{'rows/s after start-up':28}{spread(rates):>24}{spread(plain_rates):>24}")
    print(f"{'ratio raveval / plain':28}{spread(ratios, '{:.2f}'):>24}   (target >= 0.95)")
    print(f"torch threads: {int(cfg.model.num_cpus)} on both sides (raveval: {cfg.model.cpu_streams} batches at once); "
          f"load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    for d in result.summary.to_pylist():
        if d["metric"] == "accuracy":
            print(f"accuracy {d['dataset']}: {100 * d['value']:.2f}% over {d['n']} rows, {d['errors']} errors")


if __name__ == "__main__":
    main()
