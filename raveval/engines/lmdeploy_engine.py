"""LMDeploy engine: an adapter on LMDeploy's async engine (`AsyncEngine` of
`lmdeploy.serve.core`, LMDeploy 0.18), TurboMind or PyTorch backend.

The only raveval module that imports lmdeploy, and only inside functions, so
`import raveval` works without it (LMDeploy needs CUDA to run a model). The
replica builds the engine as LMDeploy's own api_server does (`get_task` picks
AsyncEngine, or VLAsyncEngine for a vision model; `start_loop` on the
replica's event loop) and sends every request through LMDeploy's two steps:
`preprocess` (a single-use request) then `generate` (an async stream of
GenOut). Many requests are in flight at once; LMDeploy queues them on its
`max_batch_size` request handles and batches them continuously.

* Prompts: chat messages are rendered by LMDeploy's chat template for the
  model (`prompt_processor.get_prompt_input`, what `preprocess` itself calls),
  or the one named by `model.lmdeploy.chat_template`; a plain string is only
  tokenised (bos added). The ids are truncated on the left as HFEngine does
  and sent as `input_ids`.
* `generate`: GenParams -> GenerationConfig (`gen_config_kwargs`). Stop strings
  are matched here, on the streamed text, and the request is aborted at the
  first one, so the text ends where HFEngine's does. LMDeploy's own
  `stop_words` are not used: they take single-token words only, stop at any
  vocabulary token that contains the word and drop that token's text, and
  replace the chat template's stop tokens.
* `loglikelihood` (HFEngine's token boundary: the context's trailing
  whitespace moves to the continuation):
  - TurboMind returns logits: a request on the context with
    `output_logits="generation"` scores every one-token continuation at once
    (MMLU/C-Eval " A".." D": one prefill); a longer continuation is scored
    from `output_logits="all"` on context + continuation (rejected by LMDeploy
    with prefix caching on: a config-time error, see `check_dataset`).
  - PyTorch returns input log-probs: `logprob_start_len` at the continuation's
    boundary with `max_new_tokens=0` gives exactly the continuation tokens'
    log-probs (`logprobs_mode="raw_logprobs"` is set for this).
  LMDeploy's `get_ppl` is not used: it gives one mean over the whole sequence.

`LMDeployModelConfig` is the `model:` config of engine lmdeploy: the typed
`lmdeploy:` block, its checks (engine_args against LMDeploy's own config
classes, datasets LMDeploy cannot serve), resources and row-key identity.
The pure helpers (`backend_config_kwargs`, `gen_config_kwargs`) are also
used by `scripts/gpu_check_lmdeploy.py`.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
from typing import Any, Callable, Literal, Optional

from pydantic import Field, model_validator

from raveval.config.schema import DatasetConfig, Strict
from raveval.engines.base import (Engine, GenOutput, GenParams, LLOutput, ModelConfig, PlacementStrategy, Prompt,
                                  ReplicaResources, gpu_bundles)
from raveval.engines.tokens import LLRequest, cut_at_stop, first_stop, plan_ll, resolve_model_path, split_context

INSTALL_HINT = ("pip install 'raveval[lmdeploy]' on a CUDA machine; for the config checks and tests only: "
                "scripts/setup_env.sh (lmdeploy==0.18.0 --no-deps and the few packages its import needs)")
# Backend-config fields raveval sets from typed keys: the pass-through may not set them.
TYPED_ARGS = {
    "tp": "model.lmdeploy.tp",
    "session_len": "model.lmdeploy.session_len (or model.max_model_len)",
    "max_batch_size": "model.lmdeploy.max_batch_size",
    "cache_max_entry_count": "model.lmdeploy.cache_max_entry_count",
    "quant_policy": "model.lmdeploy.quant_policy",
    "model_format": "model.lmdeploy.model_format",
    "enable_prefix_caching": "model.lmdeploy.enable_prefix_caching",
    "dtype": "model.dtype",
    "logprobs_mode": "raveval (raw_logprobs: what loglikelihood reads)",
    "distributed_executor_backend": "raveval (ray when tp > 1: the workers use the replica's GPU bundles)",
}
TURBOMIND_KV_POLICIES = (0, 4, 8, 42)
PYTORCH_MODEL_FORMATS = (None, "fp8")
# LMDeploy's GenerationConfig asserts temperature <= 2.
MAX_TEMPERATURE = 2.0


# ---- configuration (no lmdeploy needed unless pass-through args must be checked) ----
def lmdeploy_available() -> bool:
    try:
        import lmdeploy.messages  # noqa: F401
    except Exception:  # ImportError, or an install that lacks one of its import-time packages
        return False
    return True


class LMDeploySettings(Strict):
    """model.lmdeploy: settings with the meaning of LMDeploy's TurbomindEngineConfig /
    PytorchEngineConfig fields of the same names (more fields: model.engine_args)."""
    backend: Literal["turbomind", "pytorch"] = "turbomind"
    # Tensor parallel: the GPUs of one replica.
    tp: int = Field(1, ge=1)
    # Longest sequence, prompt + output; None: model.max_model_len.
    session_len: Optional[int] = Field(None, ge=16)
    # Sequences one replica runs at once; None: LMDeploy's choice for the GPU.
    max_batch_size: Optional[int] = Field(None, ge=1)
    # Share of the free GPU memory for the k/v cache (TurboMind: an integer >= 1 is a block count).
    cache_max_entry_count: float = Field(0.8, gt=0)
    # k/v cache quantization: 0 off, 4 int4, 8 int8; 16/17 fp8 (PyTorch backend); 42 TurboQuant (TurboMind).
    quant_policy: Literal[0, 4, 8, 16, 17, 42] = 0
    # Weight layout; None: read from the checkpoint. The PyTorch backend takes only fp8.
    model_format: Optional[Literal["hf", "awq", "gptq", "compressed-tensors", "fp8", "mxfp4"]] = None
    enable_prefix_caching: bool = False
    # An LMDeploy chat template name (`lmdeploy list`); None: the one LMDeploy picks for the model.
    chat_template: Optional[str] = None
    trust_remote_code: bool = False
    # PyTorch backend with tp > 1: one 1-GPU bundle per worker, placed with this
    # strategy. (TurboMind drives its tp GPUs from the replica's own process.)
    placement_strategy: PlacementStrategy = "STRICT_PACK"


class LMDeployModelConfig(ModelConfig):
    engine: Literal["lmdeploy"] = "lmdeploy"
    # engine_args are more fields of the backend's config class, checked when the config loads.
    lmdeploy: LMDeploySettings = LMDeploySettings()

    @model_validator(mode="after")
    def _check(self):
        check_model(self)
        return self

    def resources(self) -> ReplicaResources:
        """LMDeploy uses tp GPUs: its PyTorch backend places like vLLM (Ray
        workers, one bundle each); TurboMind runs its tp GPUs from the
        replica's own process, so the replica itself holds all tp GPUs (one
        node by construction)."""
        cpus, lm = float(self.num_cpus), self.lmdeploy
        if lm.tp == 1 or lm.backend == "turbomind":
            return ReplicaResources(cpus, float(lm.tp))
        return gpu_bundles(cpus, lm.tp, lm.placement_strategy)

    def identity(self) -> dict:
        # Weight and cache quantization change outputs, and so does the backend.
        lm = self.lmdeploy
        ident = {**super().identity(), "backend": lm.backend, "quant_policy": lm.quant_policy,
                 "model_format": lm.model_format}
        # The chat template shapes every chat prompt. Added only when set (unset: the one
        # LMDeploy picks for the model), so earlier keys stay. (session_len must equal
        # max_model_len, which is in every key.)
        if lm.chat_template is not None:
            ident["chat_template"] = lm.chat_template
        return ident

    def check_dataset(self, name: str, d: DatasetConfig) -> None:
        """Config-time errors of a dataset that this LMDeploy model cannot serve."""
        lm = self.lmdeploy
        if d.mode == "ll" and lm.backend == "turbomind" and lm.enable_prefix_caching:
            raise ValueError(f"datasets.{name}.mode: 'll' on TurboMind reads all-position logits, which LMDeploy "
                             "refuses with prefix caching on; set model.lmdeploy.enable_prefix_caching: false, "
                             "or backend: pytorch")
        if d.generation.temperature > MAX_TEMPERATURE:
            raise ValueError(f"datasets.{name}.generation.temperature: LMDeploy takes at most {MAX_TEMPERATURE:g}")

    def build_engine(self, api_key=None) -> LMDeployEngine:  # no API, no key
        return LMDeployEngine(self)


def lmdeploy_dtype(cfg: ModelConfig) -> str:
    """LMDeploy runs float16 / bfloat16 ("auto": as the checkpoint, float32 as float16)."""
    return "auto" if cfg.dtype == "float32" else cfg.dtype


def backend_config_kwargs(cfg: LMDeployModelConfig) -> dict:
    """Keyword arguments of TurbomindEngineConfig / PytorchEngineConfig (the
    backend's) from the model config."""
    lm = cfg.lmdeploy
    kw: dict[str, Any] = {
        "dtype": lmdeploy_dtype(cfg),
        "tp": lm.tp,
        "session_len": lm.session_len or cfg.max_model_len,
        "max_batch_size": lm.max_batch_size,
        "cache_max_entry_count": lm.cache_max_entry_count,
        "quant_policy": lm.quant_policy,
        "model_format": lm.model_format,
        "enable_prefix_caching": lm.enable_prefix_caching,
        # No Prometheus loggers in an evaluation replica (engine_args may turn them on).
        "enable_metrics": False,
    }
    if lm.backend == "pytorch":
        kw["logprobs_mode"] = "raw_logprobs"  # input log-probs are log-softmax values, not raw logits
        if lm.tp > 1:
            kw["distributed_executor_backend"] = "ray"
    kw.update(cfg.engine_args)
    # None is "LMDeploy's default", which its pydantic fields (int = None) do not take as a value.
    return {k: v for k, v in kw.items() if v is not None}


def _config_class(backend: str):
    from lmdeploy.messages import PytorchEngineConfig, TurbomindEngineConfig

    return TurbomindEngineConfig if backend == "turbomind" else PytorchEngineConfig


def backend_config(cfg: LMDeployModelConfig):
    """The real TurbomindEngineConfig / PytorchEngineConfig (imports lmdeploy)."""
    cls = _config_class(cfg.lmdeploy.backend)
    try:
        return cls(**backend_config_kwargs(cfg))
    except (AssertionError, ValueError, TypeError) as e:  # LMDeploy's own checks (__post_init__, pydantic)
        errors = getattr(e, "errors", None)
        if callable(errors) and errors():
            first = errors()[0]
            detail = f"{'.'.join(str(x) for x in first['loc'])}: {first['msg']}"
        else:
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"LMDeploy rejects this {cls.__name__}: {detail}") from None


def check_engine_args(cfg: LMDeployModelConfig) -> None:
    """`model.engine_args` for engine lmdeploy: fields of the backend's config
    class not set by a typed key, with values LMDeploy accepts."""
    args = cfg.engine_args
    for key in args:
        if key in TYPED_ARGS:
            raise ValueError(f"engine_args.{key} is set by {TYPED_ARGS[key]}; set it there")
    if not args:
        return
    if not lmdeploy_available():
        raise ValueError(f"cannot check LMDeploy engine arguments {sorted(args)}: lmdeploy is not importable here "
                         f"({INSTALL_HINT})")
    cls = _config_class(cfg.lmdeploy.backend)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in args:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"engine_args.{key} is not a field of LMDeploy's {cls.__name__}{hint}")
    backend_config(cfg)


def check_model(cfg: LMDeployModelConfig) -> None:
    """Config-time errors of a model with engine lmdeploy (ValueError naming the key)."""
    lm = cfg.lmdeploy
    if cfg.device == "cpu":
        raise ValueError("device: LMDeploy runs on CUDA GPUs only (TurboMind and its PyTorch engine); "
                         "use device: auto or cuda, or engine hf / vllm on CPU")
    if "num_gpus" in cfg.model_fields_set and cfg.num_gpus != lm.tp:
        raise ValueError(f"num_gpus: an LMDeploy replica takes exactly lmdeploy.tp = {lm.tp} GPU(s); leave num_gpus out")
    if "dtype" in cfg.model_fields_set and cfg.dtype == "float32":
        raise ValueError("dtype: LMDeploy runs float16 or bfloat16; use auto (float32 checkpoints run as float16), "
                         "float16 or bfloat16")
    if (lm.session_len is not None and "max_model_len" in cfg.model_fields_set
            and lm.session_len != cfg.max_model_len):
        raise ValueError(f"lmdeploy.session_len ({lm.session_len}) and max_model_len ({cfg.max_model_len}) disagree; "
                         "set one of them")
    if lm.backend == "turbomind" and lm.quant_policy not in TURBOMIND_KV_POLICIES:
        raise ValueError(f"lmdeploy.quant_policy: TurboMind takes {list(TURBOMIND_KV_POLICIES)} "
                         f"(FP8 k/v cache, {lm.quant_policy}, is the PyTorch backend's)")
    if lm.backend == "pytorch":
        if lm.quant_policy == 42:
            raise ValueError("lmdeploy.quant_policy: 42 (TurboQuant) is TurboMind's; the PyTorch backend takes 0, 4, 8, 16, 17")
        if lm.model_format not in PYTORCH_MODEL_FORMATS:
            raise ValueError(f"lmdeploy.model_format: the PyTorch backend takes only fp8 (it reads AWQ/GPTQ from the "
                             f"checkpoint's quantization_config); {lm.model_format} needs backend: turbomind")
        if lm.cache_max_entry_count >= 1:
            raise ValueError("lmdeploy.cache_max_entry_count: the PyTorch backend takes a share of GPU memory in (0, 1)")
    check_engine_args(cfg)


# ---- requests -----------------------------------------------------------------
def gen_config_kwargs(params: GenParams) -> dict:
    """GenerationConfig keyword arguments with HFEngine's meaning of GenParams.
    Greedy is spelled as LMDeploy spells it (do_sample=False, top_k=1); top_k=0
    is "off" in both (LMDeploy's own default would be 50)."""
    sample = params.temperature > 0
    return {
        "max_new_tokens": params.max_new_tokens,
        "do_sample": sample,
        "temperature": params.temperature if sample else 1.0,
        "top_p": params.top_p if sample else 1.0,
        "top_k": params.top_k if sample else 1,
        "random_seed": params.seed,
        "stop_words": None,  # stop strings are matched on the streamed text (see the module docstring)
        "skip_special_tokens": True,
    }


def gen_config(params: GenParams):
    from lmdeploy.messages import GenerationConfig

    return GenerationConfig(**gen_config_kwargs(params))


def ll_config(kind: str, backend: str, start: int = -1):
    """GenerationConfig of one scoring request: "next" (logits of the next
    token, TurboMind), "span" on TurboMind (logits of every position), "span"
    on PyTorch (input log-probs after `start`)."""
    from lmdeploy.messages import GenerationConfig

    if backend == "pytorch":
        return GenerationConfig(max_new_tokens=0, do_sample=False, logprobs=0, logprob_start_len=start)
    # One token is generated and thrown away; ignore_eos keeps LMDeploy from
    # trimming the logits when that token happens to be a stop token.
    return GenerationConfig(max_new_tokens=1, do_sample=False, ignore_eos=True,
                            output_logits="generation" if kind == "next" else "all")


def score_next(logits, targets: list[int]) -> dict[int, float]:
    """Log-probs of `targets` at the next position, from its logits row."""
    import torch

    row = torch.as_tensor(logits)
    row = row.reshape(-1, row.shape[-1])[-1].float()
    lp = torch.log_softmax(row, -1)
    return {t: lp[t].item() for t in targets}


def score_span_logits(logits, ids: list[int], n: int) -> float:
    """Sum of the log-probs of the last n tokens of `ids` from all-position
    logits (row p predicts token p + 1)."""
    import torch

    logits = torch.as_tensor(logits)
    L = len(ids)
    if logits.shape[0] < L - 1:
        raise RuntimeError(f"LMDeploy returned logits for {logits.shape[0]} positions, {L - 1} needed")
    rows = logits[L - n - 1 : L - 1].float()
    target = torch.tensor(ids[L - n :], device=rows.device)
    return torch.log_softmax(rows, -1).gather(-1, target[:, None]).sum().item()


def score_span_logprobs(rows: list[dict], ids: list[int], n: int) -> float:
    """Sum of the input log-probs of the last n tokens of `ids` (one dict per
    scored position, token id -> log-prob)."""
    if rows is None or len(rows) != n:
        raise RuntimeError(f"LMDeploy returned {0 if rows is None else len(rows)} input log-prob rows, {n} needed")
    total = 0.0
    for tok, row in zip(ids[len(ids) - n :], rows):
        if tok not in row:
            raise RuntimeError(f"LMDeploy returned no input log-prob for token {tok}")
        total += row[tok]
    return total


@dataclasses.dataclass
class _Result:
    text: str = ""
    prompt_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str | None = None
    logits: Any = None
    logprobs: list | None = None


# ---- the engine ---------------------------------------------------------------
def create_async_engine(cfg: LMDeployModelConfig, path: str):
    """The LMDeploy engine of one replica, built as LMDeploy's api_server builds it."""
    import os

    os.environ.setdefault("TM_LOG_LEVEL", "WARNING")
    from lmdeploy.archs import get_task
    from lmdeploy.model import ChatTemplateConfig
    from lmdeploy.utils import get_logger

    get_logger("lmdeploy").setLevel("WARNING")  # as pipeline(): no log line per request
    lm = cfg.lmdeploy
    bc = backend_config(cfg)
    if not os.path.exists(path):  # a hub id (e.g. internlm/internlm2-chat-1_8b): download it, as pipeline() does
        from lmdeploy.utils import get_model

        path = get_model(path, getattr(bc, "download_dir", None), getattr(bc, "revision", None))
    _, engine_class = get_task(lm.backend, path, trust_remote_code=lm.trust_remote_code, backend_config=bc)
    template = ChatTemplateConfig(model_name=lm.chat_template) if lm.chat_template else None
    return engine_class(model_path=path, model_name=cfg.name, backend=lm.backend, backend_config=bc,
                        chat_template_config=template, trust_remote_code=lm.trust_remote_code)


class LMDeployEngine(Engine):
    def __init__(self, cfg: LMDeployModelConfig, create: Callable | None = None):
        """`create(cfg, path)` builds LMDeploy's engine (tests pass their own)."""
        try:
            from lmdeploy.serve.core import RequestError  # noqa: F401
        except Exception as e:
            raise RuntimeError(f"engine lmdeploy: cannot import lmdeploy ({type(e).__name__}: {e}); {INSTALL_HINT}") from e
        self.cfg = cfg
        self.backend = cfg.lmdeploy.backend
        self.engine = (create or create_async_engine)(cfg, resolve_model_path(cfg.path))
        self.tokenizer = self.engine.tokenizer
        self.session_len = self.engine.session_len
        # Room for the one token a TurboMind scoring request generates.
        self.max_len = self.session_len - 1
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        self._prefix_id = bos if bos is not None else eos
        self._started = False
        self.requests_sent = 0

    def _start(self) -> None:
        # The PyTorch backend binds to the event loop it starts on: the replica's.
        if not self._started:
            self.engine.start_loop(asyncio.get_running_loop(), use_async_api=True)
            self._started = True

    # ---- tokenisation ---------------------------------------------------
    async def _encode(self, prompt: Prompt) -> list[int]:
        """Prompt ids as LMDeploy makes them: chat messages through the model's
        chat template, a string as it is (bos added)."""
        got = await self.engine.prompt_processor.get_prompt_input(prompt=prompt, do_preprocess=not isinstance(prompt, str))
        return list(got["input_ids"])

    async def _context(self, context: Prompt) -> tuple[list[int], str]:
        """Context ids, and the whitespace that moves to the continuations (tokens.split_context)."""
        if not isinstance(context, str):
            return await self._encode(context), ""  # the chat template's generation prompt is the boundary
        body, ws = split_context(context)
        return (await self._encode(body) or [self._prefix_id]), ws

    # ---- one LMDeploy request --------------------------------------------
    async def _run(self, ids: list[int], gc, stream: bool = False, stops: tuple[str, ...] = ()) -> _Result:
        self._start()
        from lmdeploy.serve.core import RequestError

        self.requests_sent += 1
        res = _Result(prompt_tokens=len(ids))
        try:
            request = await self.engine.preprocess(messages=None, session_id=self.engine.session_mgr.get(),
                                                   gen_config=gc, input_ids=ids)
            async with contextlib.aclosing(self.engine.generate(request, stream_response=stream)) as outs:
                async for out in outs:
                    seen = len(res.text)
                    res.text += out.response or ""  # GenOut.response is the new text of this step
                    res.prompt_tokens = out.input_token_len
                    res.output_tokens = out.generate_token_len
                    res.finish_reason = out.finish_reason
                    if out.logits is not None:
                        res.logits = out.logits
                    if out.logprobs is not None:
                        res.logprobs = out.logprobs
                    if stops and first_stop(res.text, stops, max(0, seen - max(map(len, stops)))) >= 0:
                        res.finish_reason = "stop"
                        break  # leaving the stream aborts the request in LMDeploy
        except RequestError as e:
            raise RuntimeError(f"LMDeploy {e.code.value}: {e.message}") from None
        if res.finish_reason in ("error", "abort"):
            raise RuntimeError(f"LMDeploy ended the request: {res.finish_reason}")
        return res

    # ---- Engine interface --------------------------------------------------
    async def generate(self, prompt: Prompt, params: GenParams) -> GenOutput:
        stops = tuple(s for s in params.stop if s)
        keep = max(1, self.session_len - params.max_new_tokens)
        ids = (await self._encode(prompt))[-keep:]  # truncate on the left
        res = await self._run(ids, gen_config(params), stream=bool(stops), stops=stops)
        return GenOutput(text=cut_at_stop(res.text, stops), prompt_tokens=res.prompt_tokens,
                         output_tokens=res.output_tokens)

    async def loglikelihood(self, context: Prompt, continuations: list[str]) -> LLOutput:
        ctx, ws = await self._context(context)
        conts = [self.tokenizer.encode(ws + c, add_bos=False, add_special_tokens=False) for c in continuations]
        # One-token continuations share one request on TurboMind (next-token logits);
        # the PyTorch backend scores each continuation from its input log-probs.
        reqs = plan_ll(ctx, conts, self.max_len, share=self.backend == "turbomind")
        outs = await asyncio.gather(*(self._score(r) for r in reqs))
        scores = [0.0] * len(conts)
        for part in outs:
            for j, value in part.items():
                scores[j] = value
        return LLOutput(logprobs=scores, num_tokens=[len(c) for c in conts])

    async def _score(self, req: LLRequest) -> dict[int, float]:
        """Continuation index -> log-likelihood, for one planned request: a
        next-token request (n == 0) from next-token logits (TurboMind), a span
        from all-position logits (TurboMind) or input log-probs (PyTorch)."""
        ids, n = req.ids, req.n
        if not n:
            res = await self._run(ids, ll_config("next", self.backend))
            if res.logits is None:
                raise RuntimeError("LMDeploy returned no logits (output_logits='generation')")
            got = score_next(res.logits, req.targets)
            return {j: got[tok] for j, tok in req.slots}
        if self.backend == "pytorch":
            res = await self._run(ids, ll_config("span", "pytorch", start=len(ids) - n - 1))
            return {req.slots[0][0]: score_span_logprobs(res.logprobs, ids, n)}
        res = await self._run(ids, ll_config("span", "turbomind"))
        if res.logits is None:
            raise RuntimeError("LMDeploy returned no logits (output_logits='all')")
        return {req.slots[0][0]: score_span_logits(res.logits, ids, n)}

    async def close(self) -> None:
        engine, self.engine = getattr(self, "engine", None), None
        if engine is not None:
            await asyncio.to_thread(engine.close)
