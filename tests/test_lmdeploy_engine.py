"""The LMDeploy engine (engine: lmdeploy) and a model behind an LMDeploy server (engine: openai).

LMDeploy needs CUDA to run a model, so the adapter is tested against the real
lmdeploy 0.18 package with only the inference backend replaced: LMDeploy's own
`AsyncEngine` is built by the adapter's real factory (`get_task`, chat
template, tokenizer, session manager, `preprocess` / `generate`), and only the
TurboMind / PyTorch engine object it would build on the GPU
(`AsyncEngine._build_turbomind` / `_build_pytorch`) is a fake that records each
request and streams LMDeploy's `EngineOutput`s the way those engines do
(TurboMind's logits slicing, PyTorch's input log-prob rows). Its "model" is a
deterministic toy: the logits after a prefix are a function of the prefix, so
log-likelihoods have exact expected values.

Config, placement and the conf examples need no lmdeploy; the adapter tests
skip, saying why, when lmdeploy is not importable.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import zlib

import pytest

from raveval.config.compose import ConfigError

from raveval.run.config import load_config
from raveval.engines import ModelConfig, parse_model
from raveval.engines.base import GenParams
from raveval.engines.lmdeploy_engine import backend_config_kwargs, gen_config_kwargs, lmdeploy_available

needs_lmdeploy = pytest.mark.skipif(
    not lmdeploy_available(),
    reason="lmdeploy is not importable: scripts/setup_env.sh installs lmdeploy==0.18.0 --no-deps "
           "plus mmengine-lite, psutil, pillow, pybase64 (what its import needs)")

DEMO = ["datasets.ceval_val_gen.path=${pkg:demo_data/ceval/val}",
        "datasets.ceval_val_gen.fewshot_path=${pkg:demo_data/ceval/dev}",
        "datasets.ceval_val_ll.path=${pkg:demo_data/ceval/val}",
        "datasets.ceval_val_ll.fewshot_path=${pkg:demo_data/ceval/dev}"]
GEN_ONLY = [*DEMO[:2], "datasets=[ceval_val_gen]"]


def lm_cfg(**kw) -> ModelConfig:
    base = dict(name="tiny-lmdeploy", engine="lmdeploy", path="builtin:tiny-llama", max_model_len=512)
    return parse_model(base | kw)


# ---- config, placement, conf examples: no lmdeploy needed -------------------
def test_conf_example_and_dry_run_show_placement(capsys):
    from raveval import cli
    from raveval.serving.deploy import deployment_options

    cfg = load_config("eval_internlm2_ceval_turbomind", DEMO)
    m = cfg.model
    assert m.engine == "lmdeploy" and m.lmdeploy.backend == "turbomind" and m.lmdeploy.tp == 1
    assert {d.mode for d in cfg.datasets.values()} == {"gen", "ll"}
    kw = backend_config_kwargs(m)
    assert kw["session_len"] == 4096 and kw["max_batch_size"] == 128 and kw["dtype"] == "auto"
    assert kw["cache_max_entry_count"] == 0.8 and kw["quant_policy"] == 0 and kw["enable_prefix_caching"] is False
    assert deployment_options(m, 8)["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0}
    # What the replica validates again (serve.deploy sends the keys that were set).
    assert parse_model(m.model_dump(exclude_unset=True)) == m

    assert cli.main(["run", "eval_internlm2_ceval_turbomind", *DEMO, "model.lmdeploy.tp=2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "engine=lmdeploy" in out and "replicas: 1 x (num_cpus=1.0, num_gpus=2.0)" in out
    assert "ceval_val_gen: ceval mode=gen" in out and "ceval_val_ll: ceval mode=ll" in out

    assert cli.main(["run", "eval_internlm2_ceval_turbomind", *DEMO, "model.lmdeploy.backend=pytorch",
                     "model.lmdeploy.tp=2", "--dry-run"]) == 0
    assert "placement group STRICT_PACK [{'CPU': 1.0, 'GPU': 1.0}, {'GPU': 1.0}] = 2 GPUs" in capsys.readouterr().out


def test_placement_turbomind_holds_its_gpus_pytorch_one_bundle_per_gpu():
    from raveval.serving.deploy import deployment_options

    tm = lm_cfg(num_cpus=2, lmdeploy={"tp": 4})
    assert tm.resources().num_gpus == 4.0 and not tm.resources().bundles
    assert deployment_options(tm, 8)["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 4.0}
    pt = lm_cfg(num_cpus=2, lmdeploy={"backend": "pytorch", "tp": 2, "placement_strategy": "PACK"})
    opts = deployment_options(pt, 8)
    assert opts["placement_group_bundles"] == [{"CPU": 2.0, "GPU": 1.0}, {"GPU": 1.0}]
    assert opts["placement_group_strategy"] == "PACK" and opts["ray_actor_options"]["num_gpus"] == 0.0
    assert backend_config_kwargs(pt)["distributed_executor_backend"] == "ray"
    one = lm_cfg(lmdeploy={"backend": "pytorch"})
    assert one.resources().num_gpus == 1.0 and "distributed_executor_backend" not in backend_config_kwargs(one)


@pytest.mark.parametrize("kw, words", [
    (dict(device="cpu"), "LMDeploy runs on CUDA GPUs only"),
    (dict(num_gpus=1, lmdeploy={"tp": 2}), "exactly lmdeploy.tp = 2"),
    (dict(dtype="float32"), "float16 or bfloat16"),
    (dict(max_model_len=1024, lmdeploy={"session_len": 2048}), "disagree"),
    (dict(lmdeploy={"quant_policy": 16}), "TurboMind takes [0, 4, 8, 42]"),
    (dict(lmdeploy={"backend": "pytorch", "model_format": "awq"}), "takes only fp8"),
    (dict(lmdeploy={"backend": "pytorch", "cache_max_entry_count": 2}), "(0, 1)"),
    (dict(engine="hf", lmdeploy={}), "need engine: lmdeploy"),
    (dict(lmdeploy={"tp": 0}), "greater than or equal to 1"),
    (dict(lmdeploy={"backend": "tensorrt"}), "'turbomind' or 'pytorch'"),
    (dict(engine_args={"session_len": 4096}), "set by model.lmdeploy.session_len"),
    (dict(engine_args={"logprobs_mode": "raw_logits"}), "set by raveval"),
])
def test_config_time_errors(kw, words):
    with pytest.raises(ValueError) as e:
        lm_cfg(**kw)
    assert words in str(e.value)


def test_run_config_errors_for_what_lmdeploy_cannot_serve():
    with pytest.raises(ConfigError) as e:
        load_config("eval_internlm2_ceval_turbomind", [*DEMO, "model.lmdeploy.enable_prefix_caching=true"])
    assert "datasets.ceval_val_ll.mode: 'll' on TurboMind" in str(e.value) and "enable_prefix_caching: false" in str(e.value)
    # Prefix caching is fine for generation only, and on the PyTorch backend for ll too.
    load_config("eval_internlm2_ceval_turbomind", [*GEN_ONLY, "model.lmdeploy.enable_prefix_caching=true"])
    load_config("eval_internlm2_ceval_turbomind", [*DEMO, "model.lmdeploy.enable_prefix_caching=true",
                                                  "model.lmdeploy.backend=pytorch"])
    with pytest.raises(ConfigError, match="LMDeploy takes at most 2"):
        load_config("eval_internlm2_ceval_turbomind", [*DEMO, "datasets.ceval_val_gen.generation.temperature=2.5"])
    with pytest.raises(ConfigError, match=r"model.lmdeploy.tp: .*override 'model.lmdeploy.tp=zero'"):
        load_config("eval_internlm2_ceval_turbomind", [*DEMO, "model.lmdeploy.tp=zero"])
    with pytest.raises(ConfigError, match=r"model.lmdeploy.max_batch_sise: unknown key"):  # a typo
        load_config("eval_internlm2_ceval_turbomind", [*DEMO, "model.lmdeploy.max_batch_sise=8"])


def test_generation_config_mapping_follows_hf_meaning():
    sample = gen_config_kwargs(GenParams(max_new_tokens=7, temperature=0.7, top_p=0.9, top_k=0, seed=11, stop=("\n",)))
    assert sample == {"max_new_tokens": 7, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0,
                      "random_seed": 11, "stop_words": None, "skip_special_tokens": True}
    greedy = gen_config_kwargs(GenParams(max_new_tokens=3, temperature=0.0, top_p=0.5, top_k=5))
    assert greedy | {"max_new_tokens": 0} == {"max_new_tokens": 0, "do_sample": False, "temperature": 1.0, "top_p": 1.0,
                                               "top_k": 1, "random_seed": None, "stop_words": None,
                                               "skip_special_tokens": True}


# ---- the server way (point 3): engine openai on an LMDeploy api_server -------
def test_lmdeploy_server_config_composes_to_an_openai_model():
    cfg = load_config("eval_internlm2_ceval_turbomind", [*GEN_ONLY, "model=lmdeploy_server"])
    m = cfg.model
    assert m.engine == "openai" and m.api.base_url == "http://127.0.0.1:23333/v1"
    assert m.api.model == "internlm/internlm2-chat-1_8b" and m.api.api_key_env is None and m.num_cpus == 0
    assert m.resources().num_gpus == 0
    with pytest.raises(ConfigError, match="'ll' needs log-likelihoods"):
        load_config("eval_internlm2_ceval_turbomind", [*DEMO, "model=lmdeploy_server"])


def test_short_evaluation_against_a_local_openai_compatible_server(ray_local, tmp_path):
    """C-Eval (demo rows, chat, gen) through engine openai against a real HTTP
    server on 127.0.0.1 speaking the OpenAI chat protocol, as LMDeploy's api_server does."""
    from raveval.run import evaluate as pipeline
    from fake_judge import FakeChatServer
    from raveval.results.store import Store

    seen = []

    def responder(messages, body):
        seen.append((body["model"], messages))
        return "答案是 D"

    with FakeChatServer(latency_s=0.0, responder=responder) as srv:
        cfg = load_config("eval_internlm2_ceval_turbomind", [
            *GEN_ONLY, "model=lmdeploy_server", f"model.api.base_url={srv.base_url}",
            "datasets.ceval_val_gen.prompt.k_shot=1", "datasets.ceval_val_gen.limit=3", "model_stream.callers=1",
            f"work_dir={tmp_path}"])
        result = pipeline.run(cfg, log=lambda *_: None)
    assert not result.failed, result.failed
    preds = Store(tmp_path).read().to_pylist()
    assert preds and all(p["error"] is None and p["prediction"] == "答案是 D" for p in preds)
    assert {model for model, _ in seen} == {"internlm/internlm2-chat-1_8b"} and len(seen) == len(preds)
    assert seen[0][1][-1]["role"] == "user"
    acc = [r for r in result.summary.to_pylist() if r["metric"] == "accuracy" and r["dataset"] == "ceval_val_gen"]
    assert acc and acc[0]["n"] == len(preds)


# ---- the adapter on the real lmdeploy, backend replaced ----------------------
VOCAB = 4049  # the tiny model's


def toy_logits(prefix):
    """The fake model: next-token logits after `prefix`, a fixed function of it."""
    import torch

    g = torch.Generator().manual_seed(zlib.crc32(json.dumps(list(prefix)).encode()))
    return torch.randn(VOCAB, generator=g) * 3


def toy_ll(ids: list[int], n: int) -> float:
    import torch

    return sum(torch.log_softmax(toy_logits(ids[:k]), -1)[ids[k]].item() for k in range(len(ids) - n, len(ids)))


class FakeBackend:
    """Stands in for the TurboMind / PyTorch engine object that LMDeploy's
    AsyncEngine builds on the GPU: request handles whose async_stream_infer
    streams LMDeploy's EngineOutput as that backend does."""

    def __init__(self, kind: str, engine_config, eos: int):
        engine_config.max_batch_size = engine_config.max_batch_size or 8  # the real engines fill it in
        self.kind, self.engine_config, self.eos = kind, engine_config, eos
        self.requests: list[dict] = []
        self.cancelled = 0
        self.active = self.max_active = 0
        self.reply = lambda ids: []  # token ids the "model" writes after a prompt (eos added)
        self.fail = lambda ids: False
        self.loop_started = 0
        self.closed = False

    def create_instance(self, cuda_stream_id=0):
        return FakeHandle(self)

    def start_loop(self):  # the PyTorch engine has one; TurboMind has none
        self.loop_started += 1
        return True

    def close(self):
        self.closed = True


class FakeHandle:
    def __init__(self, be: FakeBackend):
        self.be = be

    async def async_cancel(self, session_id=None):
        self.be.cancelled += 1

    async def async_stream_infer(self, session_id, input_ids, gen_config=None, stream_output=False, **kw):
        from lmdeploy.messages import EngineOutput, ResponseType

        be, ids = self.be, list(input_ids)
        be.requests.append({"input_ids": ids, "gen_config": gen_config, "stream_output": stream_output,
                            "done": False})
        be.active += 1
        be.max_active = max(be.max_active, be.active)
        try:
            await asyncio.sleep(0.002)
            if be.fail(ids):
                raise RuntimeError("CUDA error: an illegal memory access")  # LMDeploy turns it into internal_error
            L = len(ids)
            if gen_config.logprob_start_len >= 0:  # PyTorch input scoring, max_new_tokens=0
                assert be.kind == "pytorch" and gen_config.max_new_tokens == 0
                import torch

                rows = [{ids[p + 1]: torch.log_softmax(toy_logits(ids[: p + 1]), -1)[ids[p + 1]].item()}
                        for p in range(gen_config.logprob_start_len, L - 1)]
                be.requests[-1]["done"] = True
                yield EngineOutput(ResponseType.FINISH, [], logprobs=rows)
                return
            if gen_config.output_logits:
                out = [int(toy_logits(ids).argmax())]  # greedy, ignore_eos: one token
            else:
                out = (list(be.reply(ids)) + [be.eos])[: gen_config.max_new_tokens]
            stops = set() if gen_config.ignore_eos else set(gen_config.stop_token_ids or [])
            for k, t in enumerate(out):
                if t in stops:
                    out = out[: k + 1]
                    break
            chunks = [[t] for t in out] if stream_output else [out]
            for i, chunk in enumerate(chunks):
                last = i == len(chunks) - 1
                seq_len = L + sum(len(c) for c in chunks[: i + 1])
                o = EngineOutput(ResponseType.FINISH if last else ResponseType.SUCCESS, chunk)
                if gen_config.output_logits:  # TurboMind: logits[:seq_len - offset - 1]
                    import torch

                    offset = 0 if gen_config.output_logits == "all" else L - 1
                    rows = torch.stack([toy_logits(ids[: p + 1]) for p in range(L)])
                    o.logits = rows[offset: seq_len - 1]
                yield o
                await asyncio.sleep(0)
            be.requests[-1]["done"] = True
        finally:
            be.active -= 1


@pytest.fixture(scope="module")
def loop():
    lp = asyncio.new_event_loop()  # one loop: LMDeploy's request-handle queue lives on it
    yield lp
    lp.close()


REAL_BUILDERS: dict = {}


def make_engine(monkeypatch_module, loop, backend="turbomind", **lm):
    """The adapter, through its real factory, on LMDeploy's real AsyncEngine;
    only the backend engine object is the fake."""
    from lmdeploy.serve.core import AsyncEngine

    from raveval.engines.lmdeploy_engine import LMDeployEngine

    built = {}
    for name in ("_build_turbomind", "_build_pytorch"):  # LMDeploy's own, for the test that needs them
        REAL_BUILDERS.setdefault(name, AsyncEngine.__dict__[name])

    def build(kind):
        def _build(self, model_path, backend_config=None, trust_remote_code=False, **kw):
            built.update(kind=kind, path=model_path, config=backend_config, kw=kw)
            built["backend"] = FakeBackend(kind, backend_config, eos=2)
            return built["backend"]
        return _build

    monkeypatch_module.setattr(AsyncEngine, "_build_turbomind", build("turbomind"))
    monkeypatch_module.setattr(AsyncEngine, "_build_pytorch", build("pytorch"))
    eng = LMDeployEngine(lm_cfg(lmdeploy={"backend": backend, **lm}))
    return eng, built


@pytest.fixture(scope="module")
def mp_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def tm(mp_module, loop):
    if not lmdeploy_available():
        pytest.skip("lmdeploy is not importable: scripts/setup_env.sh installs it (--no-deps) with its import-time packages")
    eng, built = make_engine(mp_module, loop, max_batch_size=8)
    yield eng, built["backend"], built
    loop.run_until_complete(eng.close())


@pytest.fixture(scope="module")
def pt(mp_module, loop):
    if not lmdeploy_available():
        pytest.skip("lmdeploy is not importable: scripts/setup_env.sh installs it (--no-deps) with its import-time packages")
    eng, built = make_engine(mp_module, loop, backend="pytorch", enable_prefix_caching=True)
    yield eng, built["backend"], built
    loop.run_until_complete(eng.close())


@pytest.fixture(scope="module")
def hf_tokens():
    from raveval.engines.tiny_model import build_tiny_model
    from raveval.engines.tokens import Tokens

    return Tokens(str(build_tiny_model()))  # HFEngine's tokenisation rules


@needs_lmdeploy
def test_backend_config_reaches_lmdeploy(tm, pt):
    from lmdeploy.messages import PytorchEngineConfig, TurbomindEngineConfig

    _, _, built = tm
    c = built["config"]
    assert built["kind"] == "turbomind" and isinstance(c, TurbomindEngineConfig)
    assert (c.tp, c.session_len, c.max_batch_size, c.cache_max_entry_count, c.quant_policy, c.model_format,
            c.enable_prefix_caching, c.dtype, c.enable_metrics) == (1, 512, 8, 0.8, 0, None, False, "auto", False)
    assert built["path"].endswith("tiny-llama-v1")
    eng, be, built = pt
    c = built["config"]
    assert isinstance(c, PytorchEngineConfig) and c.logprobs_mode == "raw_logprobs" and c.enable_prefix_caching
    assert eng.session_len == 512 and eng.max_len == 511


@needs_lmdeploy
def test_engine_args_pass_through_checked_against_lmdeploy():
    cfg = lm_cfg(engine_args={"max_prefill_token_num": 4096, "cache_block_seq_len": 128})
    from raveval.engines.lmdeploy_engine import backend_config

    bc = backend_config(cfg)
    assert bc.max_prefill_token_num == 4096 and bc.cache_block_seq_len == 128
    with pytest.raises(ValueError, match="did you mean 'max_prefill_token_num'"):
        lm_cfg(engine_args={"max_prefill_tokens": 4096})
    with pytest.raises(ValueError, match="not a field of LMDeploy's PytorchEngineConfig"):
        lm_cfg(lmdeploy={"backend": "pytorch"}, engine_args={"cache_block_seq_len": 128})
    with pytest.raises(ValueError, match="LMDeploy rejects this TurbomindEngineConfig"):
        lm_cfg(engine_args={"max_prefill_token_num": -1})


@needs_lmdeploy
def test_generate_maps_params_and_streams(tm, loop, hf_tokens):
    eng, be, _ = tm
    tok = eng.tokenizer
    be.reply = lambda ids: tok.encode("答案是 C。\n\nQuestion: 下一题", add_bos=False)
    be.requests.clear()
    params = GenParams(max_new_tokens=40, temperature=0.5, top_p=0.8, top_k=0, seed=7)
    out = loop.run_until_complete(eng.generate("Question: 1+1=?\nAnswer:", params))
    req = be.requests[-1]
    gc = req["gen_config"]
    assert (gc.max_new_tokens, gc.do_sample, gc.temperature, gc.top_p, gc.top_k, gc.random_seed) == (40, True, 0.5, 0.8, 0, 7)
    assert gc.stop_words is None and 2 in gc.stop_token_ids and req["stream_output"] is False
    # A plain prompt is only tokenised, bos added: HFEngine's ids.
    assert req["input_ids"] == hf_tokens.prompt("Question: 1+1=?\nAnswer:")
    assert out.text == "答案是 C。\n\nQuestion: 下一题" and out.prompt_tokens == len(req["input_ids"])
    assert out.output_tokens == len(tok.encode(out.text, add_bos=False))  # eos not counted

    # Stop strings: streamed, cut where HFEngine cuts, the request aborted there.
    cancelled = be.cancelled
    out = loop.run_until_complete(eng.generate("Q", GenParams(max_new_tokens=40, stop=("\n\n", "Question:"))))
    assert out.text == "答案是 C。" and be.requests[-1]["stream_output"] is True
    assert not be.requests[-1]["done"] and be.cancelled == cancelled + 1
    # Greedy: LMDeploy's spelling (top_k=1); max_new_tokens ends it ("length").
    out = loop.run_until_complete(eng.generate("Q", GenParams(max_new_tokens=3)))
    gc = be.requests[-1]["gen_config"]
    assert (gc.do_sample, gc.top_k, gc.max_new_tokens) == (False, 1, 3) and out.output_tokens == 3
    assert out.text == tok.decode(tok.encode("答案是 C。\n\nQuestion: 下一题", add_bos=False)[:3])
    assert not eng.engine.session_mgr.sessions  # every request's session was removed


@needs_lmdeploy
def test_chat_template_as_lmdeploy_applies_it(tm, loop, hf_tokens, mp_module):
    eng, be, _ = tm
    be.reply = lambda ids: eng.tokenizer.encode("B", add_bos=False)
    msgs = [{"role": "system", "content": "You are an exam taker."}, {"role": "user", "content": "1+1=? A. 1 B. 2"}]
    out = loop.run_until_complete(eng.generate(msgs, GenParams(max_new_tokens=8)))
    ids = be.requests[-1]["input_ids"]
    # LMDeploy's template for the model (its HF chat template here), bos once: HFEngine's ids too.
    text = eng.engine.chat_template.messages2prompt(msgs)
    assert text.endswith("<|im_start|>assistant\n") and ids == eng.tokenizer.encode(text, add_bos=True)
    assert ids == hf_tokens.prompt(msgs) and out.text == "B"

    # A named LMDeploy template (model.lmdeploy.chat_template) replaces the model's.
    other, built = make_engine(mp_module, loop, chat_template="vicuna")
    built["backend"].reply = be.reply
    loop.run_until_complete(other.generate(msgs, GenParams(max_new_tokens=4)))
    rendered = other.tokenizer.decode(built["backend"].requests[-1]["input_ids"], skip_special_tokens=False)
    from lmdeploy.model import MODELS

    assert type(other.engine.chat_template) is MODELS.get("vicuna") and "USER: " in rendered
    assert rendered == other.tokenizer.decode(other.tokenizer.encode(
        other.engine.chat_template.messages2prompt(msgs), add_bos=True), skip_special_tokens=False)
    loop.run_until_complete(other.close())
    assert built["backend"].closed


@needs_lmdeploy
def test_long_prompt_truncated_on_the_left(tm, loop):
    eng, be, _ = tm
    be.reply = lambda ids: []
    prompt = "数字 " * 400
    loop.run_until_complete(eng.generate(prompt, GenParams(max_new_tokens=100)))
    full = eng.tokenizer.encode(prompt, add_bos=True)
    assert len(full) > 412 and be.requests[-1]["input_ids"] == full[-(512 - 100):]


@needs_lmdeploy
def test_many_requests_in_flight_and_errors_stay_per_request(tm, loop):
    eng, be, _ = tm
    tok = eng.tokenizer
    bad = tok.encode(" BOOM", add_bos=False)[-1]
    be.fail = lambda ids: bad in ids
    be.reply = lambda ids: tok.encode(f"echo {len(ids)}", add_bos=False)
    be.active = be.max_active = 0
    prompts = [f"question {i}" + (" BOOM" if i % 17 == 5 else "") for i in range(64)]

    async def main():
        return await asyncio.gather(*(eng.generate(p, GenParams(max_new_tokens=8)) for p in prompts),
                                    return_exceptions=True)
    try:
        outs = loop.run_until_complete(main())
    finally:
        be.fail = lambda ids: False
    errors = [i for i, o in enumerate(outs) if isinstance(o, Exception)]
    assert errors == [i for i in range(64) if i % 17 == 5]
    assert all("LMDeploy internal_error" in str(outs[i]) for i in errors)
    ok = [o for o in outs if not isinstance(o, Exception)]
    assert len(ok) == 60 and all(o.text == f"echo {o.prompt_tokens}" for o in ok)
    # All 64 in flight at once; LMDeploy ran them max_batch_size (8) at a time.
    assert be.max_active == 8
    assert not eng.engine.session_mgr.sessions


@needs_lmdeploy
def test_replica_turns_a_failing_row_into_an_error_row(tm, loop, mp_module):
    from raveval.tasks.request import encode_prompt
    from raveval.serving.replica import ModelReplica

    eng, be, _ = tm
    replica = ModelReplica.__new__(ModelReplica)  # the replica's request path, on this process's loop
    replica.cfg, replica.engine = eng.cfg, eng
    tok = eng.tokenizer
    be.reply = lambda ids: tok.encode("B", add_bos=False)
    be.fail = lambda ids: ids[-1] == tok.encode(" BOOM", add_bos=False)[-1]

    def row(prompt, mode="gen"):
        text, chat = encode_prompt(prompt)
        r = {"prompt": text, "chat": chat, "mode": mode}
        if mode == "ll":
            r["continuations"] = [" A", " B"]
        else:
            r["params"] = json.dumps({"max_new_tokens": 4, "stop": []})
        return r
    try:
        async def collect(requests):
            return {i: res async for done in replica.stream_batch(requests) for i, res in done}
        got = loop.run_until_complete(collect([row("Answer:"), row("x BOOM"), row("Answer:", "ll")]))
        outs = [got[i] for i in range(3)]
    finally:
        be.fail = lambda ids: False
    assert outs[0]["text"] == "B" and outs[0]["error"] is None
    assert outs[1]["error"].startswith("RuntimeError: LMDeploy internal_error")
    assert len(outs[2]["logprobs"]) == 2 and outs[2]["error"] is None


def _expected(hf_tokens, context, conts, max_len=511):
    ctx, ws = hf_tokens.context(context)
    out = []
    for c in hf_tokens.continuations(ws, conts):
        seq = (ctx + c)[-max_len:]
        out.append(toy_ll(seq, min(len(c), len(seq) - 1)))
    return out


@needs_lmdeploy
def test_ll_turbomind_logits_with_the_boundary_rule(tm, loop, hf_tokens):
    eng, be, _ = tm
    be.requests.clear()
    context = "以下是中国关于高中物理考试的单项选择题。\n功率的国际单位是什么？\n答案: "
    conts = ["A", "B", "C", "D"]
    res = loop.run_until_complete(eng.loglikelihood(context, conts))
    # " A".." D" are one token each: one request, next-token logits (output_logits="generation").
    assert len(be.requests) == 1 and be.requests[0]["gen_config"].output_logits == "generation"
    ctx, ws = hf_tokens.context(context)
    assert ws == " " and be.requests[0]["input_ids"] == ctx
    assert res.num_tokens == [1, 1, 1, 1]
    assert res.logprobs == pytest.approx(_expected(hf_tokens, context, conts), abs=1e-5)

    be.requests.clear()
    conts = [" two apples", "three", " 4"]
    res = loop.run_until_complete(eng.loglikelihood("Question: how many?\nAnswer:", conts))
    want = _expected(hf_tokens, "Question: how many?\nAnswer:", conts)
    assert res.logprobs == pytest.approx(want, abs=1e-5) and len(set(res.logprobs)) == 3
    # One-token continuations from next-token logits, longer ones from all-position logits.
    n_single = sum(len(c) == 1 for c in hf_tokens.continuations("", conts))
    kinds = sorted(r["gen_config"].output_logits for r in be.requests)
    assert kinds == ["all"] * (3 - n_single) + ["generation"] * (n_single > 0) and n_single < 3
    for r in be.requests:  # one token generated and thrown away, never trimmed as a stop token
        gc = r["gen_config"]
        assert gc.max_new_tokens == 1 and gc.ignore_eos and not gc.do_sample and gc.top_k == 1


@needs_lmdeploy
def test_ll_chat_context_and_truncation(tm, loop, hf_tokens):
    eng, be, _ = tm
    msgs = [{"role": "user", "content": "1+1=? A. 1 B. 2"}]
    res = loop.run_until_complete(eng.loglikelihood(msgs, ["A", "B. 2"]))
    ctx = hf_tokens.prompt(msgs)  # the generation prompt is the boundary: no whitespace moves
    want = [toy_ll(ctx + c, len(c)) for c in hf_tokens.continuations("", ["A", "B. 2"])]
    assert res.logprobs == pytest.approx(want, abs=1e-5)
    long = "数字 " * 400 + "答案:"
    res = loop.run_until_complete(eng.loglikelihood(long, [" 12 34"]))
    assert res.logprobs == pytest.approx(_expected(hf_tokens, long, [" 12 34"]), abs=1e-5)
    assert len(be.requests[-1]["input_ids"]) == 511  # session_len - 1: room for the one generated token


@needs_lmdeploy
def test_ll_pytorch_input_logprobs(pt, loop, hf_tokens):
    eng, be, _ = pt
    assert be.loop_started == 0
    context, conts = "Question: 1+1=?\nAnswer: ", ["A", "B", " two apples"]
    res = loop.run_until_complete(eng.loglikelihood(context, conts))
    assert be.loop_started == 1  # started on the replica's running loop (use_async_api)
    assert res.logprobs == pytest.approx(_expected(hf_tokens, context, conts), abs=1e-5)
    assert len(be.requests) == 3  # no next-token logits on PyTorch: one request per continuation
    ctx, ws = hf_tokens.context(context)
    for r, c in zip(be.requests, hf_tokens.continuations(ws, conts)):
        gc = r["gen_config"]
        assert r["input_ids"] == ctx + c
        assert (gc.max_new_tokens, gc.logprobs, gc.logprob_start_len) == (0, 0, len(ctx) - 1)
    be.reply = lambda ids: eng.tokenizer.encode("42", add_bos=False)
    out = loop.run_until_complete(eng.generate("6*7=", GenParams(max_new_tokens=5)))
    assert out.text == "42" and be.loop_started == 1


@needs_lmdeploy
def test_adapter_says_what_is_missing_without_a_gpu(loop):
    """Unpatched, the real factory reaches LMDeploy's TurboMind, which has no native module here."""
    from lmdeploy import turbomind

    from raveval.engines.lmdeploy_engine import LMDeployEngine

    if turbomind.is_available():
        pytest.skip("TurboMind's native module loads here (a CUDA machine)")
    from lmdeploy.serve.core import AsyncEngine

    with pytest.MonkeyPatch.context() as mp:
        if "_build_turbomind" in REAL_BUILDERS:  # undo the module's fake backend for this test
            mp.setattr(AsyncEngine, "_build_turbomind", REAL_BUILDERS["_build_turbomind"])
        with pytest.raises(RuntimeError, match="TurboMind was requested but its native module is unavailable"):
            LMDeployEngine(lm_cfg())


def _gpu_script():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "gpu_check_lmdeploy", Path(__file__).parents[1] / "scripts" / "gpu_check_lmdeploy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_script_plans_its_ceval_rows(tmp_path):
    """The GPU check's C-Eval rows and config, planned here (its run needs CUDA)."""
    import argparse

    from raveval.run import evaluate as pipeline

    script = _gpu_script()
    data = script.write_ceval(tmp_path / "ceval", rows=7)
    args = argparse.Namespace(model="/models/m", dtype="auto", max_model_len=2048, backend="pytorch", tp=2,
                              max_batch_size=64, cache_max_entry_count=0.5, trust_remote_code=True,
                              batch_rows=128, set=["model_stream.callers=1"])
    cfg = load_config("eval_internlm2_ceval_turbomind", script.overrides(args, data, tmp_path / "work"))
    m = cfg.model
    assert (m.path, m.lmdeploy.backend, m.lmdeploy.tp, m.lmdeploy.trust_remote_code) == \
        ("/models/m", "pytorch", 2, True)
    plan = pipeline.make_plan(cfg)
    assert not any(d.error for d in plan.datasets)
    assert {d.name: len(d.requests) for d in plan.datasets} == {"ceval_val_gen": 14, "ceval_val_ll": 14}
    ll = next(r for r in plan.requests if r.mode == "ll")
    assert ll.prompt.count("计算：") == 6  # 5 dev shots and the question


def test_gpu_check_script_help():
    import runpy
    import sys

    buf = io.StringIO()
    argv = sys.argv
    sys.argv = ["gpu_check_lmdeploy.py", "--help"]
    try:
        with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as e:
            runpy.run_path(str(__import__("pathlib").Path(__file__).parents[1] / "scripts" / "gpu_check_lmdeploy.py"),
                           run_name="__main__")
    finally:
        sys.argv = argv
    assert e.value.code == 0 and "--model" in buf.getvalue() and "throughput" in buf.getvalue()
