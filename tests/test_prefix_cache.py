"""The HF engine's prefix caching, its stop check and its CPU attention, on the real tiny model:
the same numbers as without them, with less work."""
import asyncio
import math

import pytest

from raveval.engines.base import GenParams
from raveval.engines.hf import HFEngine, HFModelConfig
from raveval.engines.prefix_cache import MIN_PREFIX, batches, common_prefix, shared_len
from raveval.engines.tiny_model import build_tiny_model

# A few-shot prefix (well over MIN_PREFIX tokens) shared by the first two subjects' rows.
SHOTS = {
    "math": "".join(f"Question: What is {a} + {a * 3}?\nAnswer: {a * 4}\n\n" for a in range(1, 12)),
    "geo": "".join(f"问题：第 {a} 个城市在哪里？\n答案：在第 {a} 个省。\n\n" for a in range(1, 12)),
}
QUESTIONS = [f"Question: What is {q} + {q * 2}?\nAnswer:" for q in (5, 17, 123, 4567, 8, 99, 31, 1234)]


def _prompts():
    rows = [SHOTS["math"] + q for q in QUESTIONS] + [SHOTS["geo"] + q for q in QUESTIONS[:5]]
    return rows + ["A prompt that shares nothing:", "Another one, alone, 42"]


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("cache"))
    base = dict(name="tiny", path=str(path), batch_size=4, num_cpus=2, device="cpu")
    cached = HFEngine(HFModelConfig(**base))
    plain = HFEngine(HFModelConfig(**base, prefix_cache=0, engine_args={"attn_implementation": "sdpa"}))
    yield cached, plain
    cached.batcher.close()
    plain.batcher.close()


def test_batches_group_shared_prefixes_then_lengths():
    p, q = [7] * MIN_PREFIX, [8] * MIN_PREFIX
    seqs = [p + [1, 2], [5, 5], q + [1], p + [3], q + [2, 2, 2], [6], p + [4, 4, 4]]
    assert shared_len(p + [1], p + [2]) == MIN_PREFIX and common_prefix([p + [1], p + [2], p]) == MIN_PREFIX
    # Each group longest first, split at the batch size; rows that share nothing go last.
    assert batches(seqs, 2) == [[6, 0], [3], [4, 2], [1, 5]]
    assert batches(seqs, 8, by_prefix=False) == [[4, 6, 0, 2, 3, 1, 5]]


def test_ll_and_gen_equal_without_cache_and_compute_less(engines):
    cached, plain = engines
    prompts = _prompts()
    items = [(p, [" 1", " 22", " 333 and more", "中文"]) for p in prompts]
    params = GenParams(max_new_tokens=6)
    before = cached.prefixes.tokens_computed
    got_ll, want_ll = cached.loglikelihood_batch(items), plain.loglikelihood_batch(items)
    for g, w in zip(got_ll, want_ll):
        assert g.num_tokens == w.num_tokens
        assert all(math.isclose(x, y, abs_tol=1e-4) for x, y in zip(g.logprobs, w.logprobs))
    got, want = cached.generate_batch(prompts, params), plain.generate_batch(prompts, params)
    assert [o.text for o in got] == [o.text for o in want]
    assert [o.prompt_tokens for o in got] == [o.prompt_tokens for o in want]
    # Each subject's prefix is computed once per call at most, not once per row.
    shot_tokens = sum(len(cached.tokenizer(s).input_ids) for s in SHOTS.values())
    assert 0 < cached.prefixes.tokens_computed - before < 2 * shot_tokens
    assert cached.prefixes.hits > 0


def test_kept_prefix_serves_later_batches_and_single_rows(engines):
    cached, plain = engines
    cached.generate_batch(_prompts()[:4], GenParams(max_new_tokens=2))  # keeps the math prefix
    hits, computed = cached.prefixes.hits, cached.prefixes.tokens_computed
    one = SHOTS["math"] + "Question: What is 1000 + 1?\nAnswer:"
    got = cached.loglikelihood_batch([(one, [" 1001", " 7"])])[0]
    want = plain.loglikelihood_batch([(one, [" 1001", " 7"])])[0]
    assert all(math.isclose(x, y, abs_tol=1e-4) for x, y in zip(got.logprobs, want.logprobs))
    assert cached.prefixes.hits > hits
    assert cached.prefixes.tokens_computed - computed < 10  # at most the row's last tokens


def test_async_rows_of_one_prefix_batch_together(engines):
    """The micro-batcher puts rows with the same opening text in one batch, so one prefix serves them."""
    cached, plain = engines
    prompts = _prompts()
    params = GenParams(max_new_tokens=3)

    async def main():
        return await asyncio.gather(*(cached.generate(p, params) for p in prompts))

    before = cached.prefixes.tokens_computed
    got = asyncio.run(main())
    assert [o.text for o in got] == [o.text for o in plain.generate_batch(prompts, params)]
    assert cached.prefixes.tokens_computed - before < 2 * sum(len(cached.tokenizer(s).input_ids) for s in SHOTS.values())


def test_stop_strings_match_without_cache(engines):
    """The stop check decodes only rows whose newest token could end a stop string;
    a stop string ending in a space checks every row."""
    cached, plain = engines
    prompts = _prompts()
    full = plain.generate_batch(prompts, GenParams(max_new_tokens=16))
    for text in (o.text for o in full):
        if len(text) > 6:
            stop = text[3:6]
            break
    for stops in ((stop, "never"), (stop + " ", "x "), ("\n",)):
        p = GenParams(max_new_tokens=16, stop=stops)
        got = cached.generate_batch(prompts, p)
        assert [o.text for o in got] == [o.text for o in plain.generate_batch(prompts, p)]
    cut = cached.generate_batch(prompts, GenParams(max_new_tokens=16, stop=(stop,)))
    assert any(o.output_tokens < f.output_tokens for o, f in zip(cut, full))


def test_cpu_attention_takes_grouped_heads_as_they_are(engines):
    """The tiny model has 4 query heads on 2 K/V heads: on CPU the engine uses torch's
    grouped SDPA, with the logits of transformers' own SDPA."""
    import torch

    cached, plain = engines
    assert cached.model.config._attn_implementation == "raveval_sdpa_gqa"
    assert plain.model.config._attn_implementation == "sdpa"
    ids = torch.tensor([cached.tokenizer(p).input_ids[:20] for p in _prompts()[:3]])
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # a padded row: the masked path that used to copy K/V heads
    with torch.inference_mode():
        a = cached.model(input_ids=ids, attention_mask=mask).logits
        b = plain.model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(a, b, atol=1e-5)


def test_prefix_cache_reuses_the_shared_part_of_a_longer_kept_prefix(engines):
    """A kept prefix longer than the one asked for is cut to the shared part; only the rest is computed."""
    import torch

    from raveval.engines.prefix_cache import PrefixCache

    cached, _ = engines
    cache = PrefixCache(cached.model, cached.device, capacity=2)
    ids = cached.tokenizer(SHOTS["math"] + SHOTS["geo"]).input_ids
    assert len(ids) > 300
    a, b = ids[:100], ids[:80] + ids[200:230]  # b shares its first 80 tokens with a
    cache.get(a, 1)
    assert cache.tokens_computed == 100 and cache.hits == 0
    got = cache.get(b, 3)
    assert cache.tokens_computed == 100 + 30 and cache.hits == 1
    fresh = PrefixCache(cached.model, cached.device, capacity=1).get(b, 3)
    assert got.get_seq_length() == fresh.get_seq_length() == 110
    for x, y in zip(got.layers, fresh.layers):
        assert x.keys.shape[0] == 3 and torch.allclose(x.keys, y.keys, atol=1e-5)
        assert torch.allclose(x.values, y.values, atol=1e-5)
    cache.get(ids[:300], 1)  # a third prefix: the least recently used one goes
    assert len(cache._entries) == 2 and tuple(a) not in cache._entries
