"""raveval with the vLLM engine vs vLLM's own offline `LLM`, same prompts and settings.

The tiny model on MMLU test (ll mode) and GSM8K test (gen, 32 new tokens),
through raveval (local Ray, Serve replica hosting `AsyncLLM`, Data stream)
and through vLLM's offline `LLM.generate` in this process: the same token
ids, the same SamplingParams for generation and the same log-prob requests
for scoring (built by the same helpers), all submitted at once, which is
vLLM's best case. The order is vLLM, raveval, vLLM again, so that a change in
what else runs on the machine shows; the ratio is against the mean of the two
vLLM runs. Prints start-up, rows/s after start-up and the ratio, and checks
that both sides scored the same.

    .venv/bin/python scripts/benchmarks/throughput_vllm.py [--data-root ../shared/data] [--limit N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout


def offline_vllm(cfg, requests: list[dict]) -> dict:
    """The baseline: vLLM's offline LLM, every request in one generate call."""
    from vllm import LLM

    from raveval.engines.base import GenParams
    from raveval.engines.tokens import Tokens, resolve_model_path
    from raveval.engines.vllm_engine import (
        engine_kwargs,
        gen_sampling_params,
        ll_requests,
        ll_sampling_params,
        score_ll,
        supports_next_token_scoring,
        tokens_prompt,
    )
    from raveval.tasks.request import decode_prompt

    t0 = time.perf_counter()
    path = resolve_model_path(cfg.model.path)
    llm = LLM(**engine_kwargs(cfg.model, path))
    tokens = Tokens(path)
    max_len = llm.llm_engine.model_config.max_model_len
    next_token = supports_next_token_scoring()
    t_loaded = time.perf_counter()

    prompts, params, owners = [], [], []  # owners: the row index of each vLLM request
    plans, gens = {}, {}
    for i, r in enumerate(requests):
        prompt = decode_prompt(r.prompt, r.chat)
        if r.mode == "ll":
            ctx, ws = tokens.context(prompt)
            conts = tokens.continuations(ws, list(r.continuations))
            reqs = ll_requests(ctx, conts, max_len, next_token=next_token)
            plans[i] = (reqs, len(conts), [])
            for q in reqs:
                prompts.append(tokens_prompt(q.ids))
                params.append(ll_sampling_params(q))
                owners.append(i)
        else:
            p = json.loads(r.params)
            gp = gens[i] = GenParams(**{**p, "stop": tuple(p["stop"])})
            keep = max(1, max_len - gp.max_new_tokens)
            prompts.append(tokens_prompt(tokens.prompt(prompt)[-keep:]))
            params.append(gen_sampling_params(gp))
            owners.append(i)
    outs = llm.generate(prompts, params, use_tqdm=False)
    results: dict[int, dict] = {}
    for i, out in zip(owners, outs):
        if i in plans:
            plans[i][2].append(out)
        else:
            text, n = tokens.finish(out.outputs[0].token_ids, gens[i])
            results[i] = {"text": text, "output_tokens": n}
    for i, (reqs, n, got) in plans.items():
        results[i] = {"logprobs": score_ll(reqs, got, n)}
    t_end = time.perf_counter()
    llm.llm_engine.engine_core.shutdown()  # its processes go before the next phase starts
    del llm
    return {"load_s": t_loaded - t0, "run_s": t_end - t_loaded, "rows": len(requests), "results": results,
            "vllm_requests": len(prompts)}


@contextmanager
def load_sampler(out: list):
    """Samples the 1-minute load average every 5 s while the block runs (others may share the machine)."""
    stop = threading.Event()

    def sample():
        while not stop.wait(5):
            out.append(os.getloadavg()[0])

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield out
    finally:
        stop.set()
        t.join()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--limit", type=int, default=None, help="rows per MMLU subject and of GSM8K (default: all)")
    ap.add_argument("--batch-rows", type=int, default=256, help="raveval rows per Serve call")
    ap.add_argument("--callers", type=int, default=2)
    ap.add_argument("--calls-per-caller", type=int, default=4)
    ap.add_argument("--model-path", default=None, help="a model folder (default: the tiny model, builtin:tiny-llama)")
    ap.add_argument("--dtype", default=None, help="default: the model config's (float32)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: GPU vLLM (one GPU per replica, CUDA graphs on, vLLM's own KV cache sizing)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="more config overrides, e.g. model.engine_args.max_num_seqs=512 (both sides)")
    args = ap.parse_args(argv)

    from raveval.run.evaluate import run, shutdown
    from raveval.run.plan import make_plan
    from raveval.run.config import load_config
    from raveval.tasks.scoring import score_row
    from raveval.results.store import Store

    work = tempfile.mkdtemp(prefix="raveval-bench-vllm-")
    os.environ.setdefault("VLLM_CACHE_ROOT", os.path.join(work, "vllm-cache"))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    overrides = ["model=tiny_vllm", f"data_root={args.data_root}", f"work_dir={work}", f"model_stream.batch_rows={args.batch_rows}",
                 f"model_stream.callers={args.callers}", f"model_stream.calls_per_caller={args.calls_per_caller}",
                 "datasets.gsm8k_gen.generation.max_new_tokens=32"]
    if args.model_path:
        overrides.append(f"model.path={args.model_path}")
    if args.dtype:
        overrides.append(f"model.dtype={args.dtype}")
    if args.device == "cuda":
        overrides += ["model.device=cuda", "~model.num_gpus", "~model.engine_args", "model.vllm.enforce_eager=false"]
    overrides += args.set
    if args.limit:
        overrides += [f"datasets.mmlu_ll.limit={args.limit}", f"datasets.gsm8k_gen.limit={args.limit}"]
    cfg = load_config("eval_tiny_mmlu_gsm8k", overrides)

    # Baseline, raveval, baseline again: the two baselines bracket raveval, so
    # drift in what else runs on the machine shows, and the ratio uses their mean.
    plan_rows = make_plan(cfg).requests
    loads: dict[str, list] = {"before": [], "raveval": [], "after": []}
    with load_sampler(loads["before"]):
        before = offline_vllm(cfg, plan_rows)
    with load_sampler(loads["raveval"]):
        t0 = time.perf_counter()
        result = run(cfg, log=lambda *_: None)
        t_run = time.perf_counter() - t0
        shutdown(cfg)  # the replica's vLLM goes before the second baseline
    with load_sampler(loads["after"]):
        after = offline_vllm(cfg, plan_rows)
    assert [r.key for r in result.plan.requests] == [r.key for r in plan_rows]
    s = result.stats
    n = s["rows"]
    rows = Store(work).read(columns=["key", "mode", "prediction", "logprobs", "error", "correct"]).to_pylist()
    errors = sum(r["error"] is not None for r in rows)

    base = after
    # Both sides scored the same: ll scores within 1e-3, the same number of tokens generated.
    by_key = {r["key"]: r for r in rows}
    worst, same_text, ll_correct, base_correct = 0.0, 0, 0, 0
    for i, req in enumerate(plan_rows):
        mine, theirs = by_key[req.key], base["results"][i]
        if req.mode == "ll":
            worst = max(worst, *(abs(a - b) for a, b in zip(mine["logprobs"], theirs["logprobs"])))
            ll_correct += bool(mine["correct"])
            base_correct += score_row("ll", req.answer, req.gold, len(req.choices), None, theirs["logprobs"])[1]
        else:
            same_text += mine["prediction"] == theirs["text"]
    n_gen = sum(r.mode == "gen" for r in plan_rows)

    steady = s["rows_per_s"]
    rates = [b["rows"] / b["run_s"] for b in (before, after)]
    base_rate = statistics.mean(rates)

    def mean_load(xs):
        return f"{statistics.mean(xs):.1f}" if xs else "-"

    print(f"rows: {n} (MMLU ll + GSM8K gen, 32 new tokens); raveval rows with errors: {errors}; "
          f"vLLM requests on each side: {base['vllm_requests']}")
    print(f"machine: {os.cpu_count()} CPUs; mean 1-min load average during each phase: vLLM before "
          f"{mean_load(loads['before'])}, raveval {mean_load(loads['raveval'])}, vLLM after {mean_load(loads['after'])}")
    print(f"{'':28}{'raveval':>12}{'vLLM before':>13}{'vLLM after':>12}")
    print(f"{'wall time (s)':28}{t_run:12.1f}{before['load_s'] + before['run_s']:13.1f}{after['load_s'] + after['run_s']:12.1f}")
    print(f"{'start-up (s)':28}{s['ready_s']:12.1f}{before['load_s']:13.1f}{after['load_s']:12.1f}   "
          f"(raveval: ray init + deploy until the replica serves; vLLM: LLM(...))")
    print(f"{'rows/s after start-up':28}{steady:12.1f}{rates[0]:13.1f}{rates[1]:12.1f}")
    print(f"{'ratio raveval / vLLM':28}{steady / base_rate:12.2f}   (vs the mean of the two vLLM runs; target >= 0.95)")
    print(f"same results: ll max |diff| {worst:.2e}, ll correct {ll_correct} vs {base_correct}; "
          f"identical generations {same_text}/{n_gen}")
    for d in result.summary.to_pylist():
        if d["metric"] == "accuracy":
            print(f"accuracy {d['dataset']}: {100 * d['value']:.2f}% over {d['n']} rows, {d['errors']} errors")


if __name__ == "__main__":
    main()
