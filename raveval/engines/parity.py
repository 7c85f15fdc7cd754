"""Parity of an engine with HFEngine, the reference: the test suite checks
vLLM on CPU with it, and scripts/gpu_check_vllm.py on CUDA."""
from __future__ import annotations

import asyncio
import json

from raveval.engines.base import Engine, GenParams
from raveval.engines.hf import HFEngine
from raveval.tasks.request import Request, decode_prompt
from raveval.tasks.scoring import score_row


def _gen_params(r: Request) -> GenParams:
    d = json.loads(r.params)
    return GenParams(**{**d, "stop": tuple(d["stop"])})


async def compare_with_hf(vllm_engine: Engine, hf_engine: HFEngine, requests: list[Request]) -> dict:
    """Run request rows (run.plan.make_plan) on both engines: greedy
    generations compared as text and token counts, choice log-likelihoods by
    their largest difference, and the ll accuracy of each engine."""
    ll = [r for r in requests if r.mode == "ll"]
    gen = [r for r in requests if r.mode == "gen"]
    items = [(decode_prompt(r.prompt, r.chat), list(r.continuations)) for r in ll]
    v_ll = await asyncio.gather(*(vllm_engine.loglikelihood(c, k) for c, k in items))
    v_gen = await asyncio.gather(*(vllm_engine.generate(decode_prompt(r.prompt, r.chat), _gen_params(r)) for r in gen))
    h_ll = await asyncio.to_thread(hf_engine.loglikelihood_batch, items)
    h_gen = []
    for r in gen:  # one at a time: no padding, the reference HF generation
        h_gen += await asyncio.to_thread(hf_engine.generate_batch, [decode_prompt(r.prompt, r.chat)], _gen_params(r))

    worst, token_counts_same = 0.0, True
    for a, b in zip(v_ll, h_ll):
        token_counts_same &= a.num_tokens == b.num_tokens
        worst = max([worst, *(abs(x - y) for x, y in zip(a.logprobs, b.logprobs))])

    def correct(outs):
        return sum(bool(score_row("ll", r.answer, r.gold, len(r.choices), None, o.logprobs)[1])
                   for r, o in zip(ll, outs))

    mismatches = [
        {"row_id": r.row_id, "vllm": (a.text, a.output_tokens, a.prompt_tokens),
         "hf": (b.text, b.output_tokens, b.prompt_tokens)}
        for r, a, b in zip(gen, v_gen, h_gen)
        if (a.text, a.output_tokens, a.prompt_tokens) != (b.text, b.output_tokens, b.prompt_tokens)
    ]
    return {
        "ll_rows": len(ll), "ll_max_abs_diff": worst, "ll_token_counts_same": token_counts_same,
        "ll_correct_vllm": correct(v_ll), "ll_correct_hf": correct(h_ll),
        "gen_rows": len(gen), "gen_identical": len(gen) - len(mismatches), "gen_mismatches": mismatches,
    }
