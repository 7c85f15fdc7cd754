"""HFEngine on the real tiny model: generation, log-likelihood, micro-batching."""
import asyncio
import math

import pytest

from raveval.engines.base import GenParams
from raveval.engines.batcher import MicroBatcher
from raveval.engines.hf import HFEngine, HFModelConfig
from raveval.engines.tiny_model import build_tiny_model

from engine_prompts import PROMPTS



@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("cache"))


def _engine(path, **kw) -> HFEngine:
    cfg = dict(name="tiny", path=str(path), batch_size=8, num_cpus=2, device="cpu")
    return HFEngine(HFModelConfig(**(cfg | kw)))


@pytest.fixture(scope="module")
def engine(tiny_dir):
    e = _engine(tiny_dir)
    yield e
    e.batcher.close()


def _manual_ll(engine, ctx_ids, cont_ids):
    """Sum of continuation log-probs from one forward of the full sequence."""
    import torch

    ids = torch.tensor([ctx_ids + cont_ids])
    with torch.inference_mode():
        lp = torch.log_softmax(engine.model(input_ids=ids).logits[0].float(), -1)
    n = len(ctx_ids)
    return sum(lp[n - 1 + k, t].item() for k, t in enumerate(cont_ids))


# ---- loading ------------------------------------------------------------
def test_build_engine_builtin_uses_cache(tiny_dir, monkeypatch):
    monkeypatch.setenv("RAVEVAL_CACHE", str(tiny_dir.parent))
    e = HFModelConfig(name="t", path="builtin:tiny-llama", num_cpus=2).build_engine()
    assert isinstance(e, HFEngine) and e.device.type == "cpu"
    assert not e.model.training
    out = e.generate_batch(["hi"], GenParams(max_new_tokens=3))[0]
    assert out.output_tokens <= 3
    assert out.prompt_tokens == len(e.tokenizer("hi").input_ids)
    e.batcher.close()


# ---- generation -----------------------------------------------------------
def test_greedy_deterministic_and_batch_equals_single(engine):
    params = GenParams(max_new_tokens=12)
    batched = engine.generate_batch(PROMPTS, params)
    again = engine.generate_batch(PROMPTS, params)
    single = [engine.generate_batch([p], params)[0] for p in PROMPTS]
    assert [o.text for o in batched] == [o.text for o in again] == [o.text for o in single]
    assert all(o.text for o in batched)
    assert [o.prompt_tokens for o in batched] == [len(engine.tokenizer(p).input_ids) for p in PROMPTS]


def test_max_new_tokens(engine):
    for n in (1, 5):
        for o in engine.generate_batch(PROMPTS, GenParams(max_new_tokens=n)):
            assert 0 <= o.output_tokens <= n


def test_stop_string_cuts_and_stops_early(engine):
    prompt = PROMPTS[0]
    full = engine.generate_batch([prompt], GenParams(max_new_tokens=24))[0]
    stop = full.text[len(full.text) // 3 :][:3]  # some text from the middle
    cut = engine.generate_batch([prompt], GenParams(max_new_tokens=24, stop=(stop, "never-seen")))[0]
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.output_tokens < full.output_tokens
    # Lists are accepted too (hashable after normalisation) and mixed batches cut per row.
    mixed = engine.generate_batch([prompt, PROMPTS[1]], GenParams(max_new_tokens=24, stop=[stop]))
    assert mixed[0].text == cut.text


def test_sampling_with_seed_is_reproducible(engine):
    p = GenParams(max_new_tokens=8, temperature=1.0, top_p=0.9, top_k=50, seed=123)
    a = engine.generate_batch(PROMPTS[:3], p)
    b = engine.generate_batch(PROMPTS[:3], p)
    assert [o.text for o in a] == [o.text for o in b]


def test_chat_prompt(engine):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好, 2+2=?"}]
    out = engine.generate_batch([msgs], GenParams(max_new_tokens=6))[0]
    text = engine.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    ids = engine.tokenizer(text, add_special_tokens=False).input_ids
    assert ids.count(engine.tokenizer.bos_token_id) == 1  # the template's bos only
    assert out.prompt_tokens == len(ids) and 0 < out.output_tokens <= 6
    assert isinstance(out.text, str)


def test_long_prompt_truncated_from_left(tiny_dir):
    e = _engine(tiny_dir, max_model_len=32)
    try:
        long = " ".join(str(i) for i in range(200))
        out = e.generate_batch([long], GenParams(max_new_tokens=8))[0]
        assert out.prompt_tokens == 32 - 8
        # ll: the sequence keeps its last 32 tokens; score equals that sequence's forward.
        ctx = e.tokenizer(long).input_ids
        cont = e.tokenizer(" 200 201", add_special_tokens=False).input_ids
        seq = (ctx + cont)[-32:]
        got = e.loglikelihood_batch([(long, [" 200 201"])])[0].logprobs[0]
        assert math.isclose(got, _manual_ll(e, seq[: -len(cont)], cont), abs_tol=1e-4)
    finally:
        e.batcher.close()


# ---- log-likelihood -------------------------------------------------------
def _items():
    return [
        ("Question: What is 2 + 3?\nAnswer:", [" A", " B", " C", " D"]),
        ("中国的首都是", ["北京", "上海"]),
        ("The capital of France is", [" Paris", " Berlin is a city", " Rome"]),
        ("Let x = 4. Then 2x + 1 =", [" 9", " nine, since 2 * 4 = 8"]),
        ("", ["Hello world"]),
        ([{"role": "user", "content": "2+2?"}], ["4", "four"]),
    ]


def test_single_token_fast_path_equals_general(engine):
    items = _items()
    fast = engine.loglikelihood_batch(items)
    slow = engine.loglikelihood_batch(items, fast=False)
    for f, s in zip(fast, slow):
        assert f.num_tokens == s.num_tokens
        for a, b in zip(f.logprobs, s.logprobs):
            assert math.isclose(a, b, abs_tol=1e-4)
    assert fast[0].num_tokens == [1, 1, 1, 1]
    assert all(lp < 0 for o in fast for lp in o.logprobs)


def test_ll_batched_equals_unbatched(engine):
    items = _items() * 3  # more sequences than batch_size: several chunks
    batched = engine.loglikelihood_batch(items)
    for item, b in zip(items, batched):
        one = engine.loglikelihood_batch([item])[0]
        assert one.num_tokens == b.num_tokens
        for x, y in zip(one.logprobs, b.logprobs):
            assert math.isclose(x, y, abs_tol=1e-4)


def test_ll_matches_manual_forward(engine):
    tok = engine.tokenizer
    ctx, cont = "Question: 12 + 30 =", " 42, because 12 + 30 is 42"
    ctx_ids = tok(ctx).input_ids
    cont_ids = tok(cont, add_special_tokens=False).input_ids
    assert len(cont_ids) > 3
    out = engine.loglikelihood_batch([(ctx, [cont])])[0]
    assert out.num_tokens == [len(cont_ids)]
    expected = _manual_ll(engine, ctx_ids, cont_ids)
    assert math.isclose(out.logprobs[0], expected, abs_tol=1e-4)
    # An off-by-one boundary would be visibly different.
    shifted = _manual_ll(engine, ctx_ids[:-1], ctx_ids[-1:] + cont_ids[:-1])
    assert abs(shifted - expected) > 1e-2


def test_context_trailing_space_moves_to_continuation(engine):
    a = engine.loglikelihood_batch([("Answer: ", ["B", "C is right"])])[0]
    b = engine.loglikelihood_batch([("Answer:", [" B", " C is right"])])[0]
    assert a.num_tokens == b.num_tokens
    for x, y in zip(a.logprobs, b.logprobs):
        assert math.isclose(x, y, abs_tol=1e-6)


# ---- async micro-batching -------------------------------------------------
def test_async_generate_batches_and_matches_sync(engine):
    prompts = [f"Question {i}: what is {i} + {i * 3}? Answer:" for i in range(50)]
    params = GenParams(max_new_tokens=8)
    expected = engine.generate_batch(prompts, params)

    async def main():
        before = engine.batches_run
        outs = await asyncio.gather(*(engine.generate(p, params) for p in prompts))
        return outs, engine.batches_run - before

    outs, batches = asyncio.run(main())
    assert [o.text for o in outs] == [o.text for o in expected]
    assert batches <= math.ceil(50 / engine.batch_size) + 1 < 50


def test_async_ll_and_gen_mixed(engine):
    items = _items()
    expected = engine.loglikelihood_batch(items)
    gen_expected = engine.generate_batch(PROMPTS, GenParams(max_new_tokens=4))

    async def main():
        lls = [engine.loglikelihood(c, conts) for c, conts in items]
        gens = [engine.generate(p, GenParams(max_new_tokens=4)) for p in PROMPTS]
        return await asyncio.gather(*lls, *gens)

    res = asyncio.run(main())
    for got, exp in zip(res[: len(items)], expected):
        assert got.num_tokens == exp.num_tokens
        assert all(math.isclose(x, y, abs_tol=1e-4) for x, y in zip(got.logprobs, exp.logprobs))
    assert [o.text for o in res[len(items) :]] == [o.text for o in gen_expected]


def test_async_error_fails_only_its_batch(engine):
    async def main():
        good = [engine.generate(p, GenParams(max_new_tokens=3)) for p in PROMPTS]
        bad = [engine.generate(p, GenParams(max_new_tokens=0)) for p in PROMPTS[:2]]
        res = await asyncio.gather(*good, *bad, return_exceptions=True)
        after = await engine.generate("still alive?", GenParams(max_new_tokens=2))
        return res, after

    res, after = asyncio.run(main())
    assert all(not isinstance(r, Exception) for r in res[: len(PROMPTS)])
    assert all(isinstance(r, ValueError) for r in res[len(PROMPTS) :])
    assert after.output_tokens <= 2


def test_batcher_groups_by_key_and_respects_max_batch():
    calls = []

    def run(key, items):
        calls.append((key, list(items)))
        if key == "boom":
            raise RuntimeError("boom")
        return [f"{key}:{x}" for x in items]

    b = MicroBatcher(run, max_batch=3)

    async def main():
        jobs = [b.submit("a", i) for i in range(5)] + [b.submit("boom", 9)] + [b.submit("c", 7)]
        return await asyncio.gather(*jobs, return_exceptions=True)

    res = asyncio.run(main())
    b.close()
    assert res[:5] == [f"a:{i}" for i in range(5)] and res[6] == "c:7"
    assert isinstance(res[5], RuntimeError)
    assert all(len(items) <= 3 for _, items in calls)
    assert [k for k, _ in calls] == ["a", "a", "boom", "c"]  # oldest request's key first
    assert b.batches_run == 4 and b.items_run == 7


def test_batcher_groups_rows_in_flight_by_length():
    """All rows waiting are candidates: a batch takes the oldest and those closest to it in size."""
    calls = []

    def run(key, items):
        calls.append(sorted(items))
        return items

    b = MicroBatcher(run, max_batch=4)
    sizes = [50, 7, 300, 52, 9, 301, 48, 8, 299, 51, 6, 302]

    async def main():
        return await asyncio.gather(*(b.submit("k", s, size=s) for s in sizes))

    assert asyncio.run(main()) == sizes
    b.close()
    # Each batch: the oldest row waiting and its neighbours in size, not the next four to arrive.
    assert calls == [[48, 50, 51, 52], [6, 7, 8, 9], [299, 300, 301, 302]]


# ---- the shared token rules ------------------------------------------------
def test_shared_token_rules():
    from raveval.engines.tokens import cut_at_stop, first_stop, plan_ll, split_context

    assert split_context("Answer: \n") == ("Answer:", " \n") and split_context("x") == ("x", "")
    assert cut_at_stop("a\n\nQ: b", ("Q:", "\n\n", "")) == "a" and cut_at_stop("abc", ()) == "abc"
    assert first_stop("xQ: yQ:", ("Q:",), start=2) == 5 and first_stop("abc", ("z",)) == -1
    # Each sequence keeps its last max_len tokens; one-token continuations share one request.
    shared, span = plan_ll([9, 8, 7], [[1], [2, 3], [], [1]], max_len=4)
    assert (shared.ids, shared.n, shared.targets, shared.slots) == ([9, 8, 7], 0, [1], [(0, 1), (3, 1)])
    assert (span.ids, span.n, span.slots) == ([8, 7, 2, 3], 2, [(1, None)])
    assert [(r.ids, r.n) for r in plan_ll([9, 8, 7], [[1], [2, 3]], max_len=4, share=False)] == \
        [([9, 8, 7, 1], 1), ([8, 7, 2, 3], 2)]


# ---- the engine registry -----------------------------------------------------
def test_registry_default_engine_and_unknown_engine():
    from raveval.config.compose import ConfigError
    from raveval.engines import parse_model
    from raveval.engines.registry import ENGINES
    from raveval.run.config import load_config

    m = parse_model({"name": "t", "path": "p"})  # no engine: hf
    assert type(m) is HFModelConfig and m.engine == "hf" and m.model_fields_set == {"name", "path"}
    assert parse_model(m.model_dump(exclude_unset=True)) == m
    with pytest.raises(ConfigError) as e:
        load_config("demo", ["model.engine=tgi", "model.vllm.tensor_parallel_size=2"])
    lines = str(e.value).splitlines()[1:]
    assert len(lines) == 1 and lines[0].strip().startswith("model.engine: ") and "model.engine=tgi" in lines[0]
    assert all(repr(name) in lines[0] for name in ENGINES)


def test_loading_configs_imports_no_backend():
    import subprocess
    import sys

    code = ("import sys\nfrom raveval.run.config import load_config\n"
            "load_config('demo'); load_config('demo_vllm', ['~model.engine_args'])\n"
            "load_config('eval_internlm2_ceval_turbomind'); load_config('demo', ['model=gpt4o_mini_api', 'datasets=[gsm8k_gen]'])\n"
            "print('HEAVY', [m for m in ('torch', 'transformers', 'vllm', 'lmdeploy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out


def test_batcher_prefers_the_oldest_rows_group():
    """Rows of the oldest row's group (the same prompt opening) go first, then the closest in size."""
    calls = []

    def run(key, items):
        calls.append(sorted(items))
        return items

    b = MicroBatcher(run, max_batch=3)
    rows = [(10, "a"), (11, "b"), (90, "a"), (12, "b"), (91, "a"), (13, "c")]

    async def main():
        return await asyncio.gather(*(b.submit("k", s, size=s, group=g) for s, g in rows))

    assert asyncio.run(main()) == [s for s, _ in rows]
    b.close()
    assert calls == [[10, 90, 91], [11, 12, 13]]


def test_batcher_workers_run_batches_at_once():
    """With two workers, two batches run at the same time (each waits for the other
    at a barrier; one worker would break it), and every row still gets its result."""
    import threading

    both = threading.Barrier(2, timeout=10)
    threads = set()

    def run(key, items):
        threads.add(threading.current_thread().name)
        if items[0] < 2:  # the first two batches (rows 0 and 1) meet at the barrier
            both.wait()
        return [x * 10 for x in items]

    b = MicroBatcher(run, max_batch=1, workers=2)

    async def main():
        return await asyncio.gather(*(b.submit("k", i) for i in range(6)))

    assert asyncio.run(main()) == [i * 10 for i in range(6)]
    b.close()
    assert not both.broken and len(threads) == 2


def _stream_threads(e: HFEngine) -> list[int]:
    """torch's thread count in each of the engine's batch threads (all of them at once)."""
    import threading

    import torch

    meet = threading.Barrier(e.batcher.workers, timeout=10)

    def count():
        meet.wait()
        return torch.get_num_threads()

    return sorted(f.result() for f in [e.batcher._executor.submit(count) for _ in range(e.batcher.workers)])


def test_cpu_streams_split_the_threads(engine, tiny_dir):
    """On 2 CPUs the engine runs 2 batches at once on 1 torch thread each (the async
    tests above go through both); cpu_streams: 1 gives one batch every thread, and so do
    3 CPUs (torch's thread count is the process's: streams split the threads evenly)."""
    assert _stream_threads(engine) == [1, 1]
    for kw, want in (({"cpu_streams": 1}, [2]), ({"num_cpus": 3}, [3]), ({"num_cpus": 4, "cpu_streams": 4}, [1, 1, 1, 1])):
        e = _engine(tiny_dir, **kw)
        try:
            assert _stream_threads(e) == want, kw
        finally:
            e.batcher.close()
