"""What every engine shares: the async engine interface, and the model config
each engine's module subclasses.

A replica holds one engine and sends it many requests at once; the engine
batches them internally (continuous batching in vLLM, a micro-batcher for
Hugging Face), so callers never batch by hand.

`ModelConfig` holds the keys every engine takes; an engine's subclass (in
that engine's module, listed in `engines.registry`) adds its own settings,
checks, resource needs, row-key identity and construction, so nothing outside
the engine's module asks which engine it is.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional, Union

from pydantic import Field, SecretStr, model_validator

from raveval.config.schema import DatasetConfig, EndpointConfig, Strict

# A prompt is plain text, or chat messages the engine renders with the
# model's own chat template.
Messages = list[dict]
Prompt = Union[str, Messages]


@dataclass(frozen=True)
class GenParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means off
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Guided decoding: the output is exactly one of these strings (engines with
    # `supports_choices`; e.g. a judge's verdict "[[1]]".."[[10]]").
    choices: tuple[str, ...] = ()


@dataclass
class GenOutput:
    text: str
    prompt_tokens: int
    output_tokens: int


@dataclass
class LLOutput:
    # Sum of log-probabilities of each continuation's tokens given the context.
    logprobs: list[float]
    # Number of tokens of each continuation (for length-normalised scores).
    num_tokens: list[int] = field(default_factory=list)


class Engine(ABC):
    """Async engine: many concurrent calls, one model."""

    # Whether generate honours GenParams.choices (constrained decoding).
    supports_choices: bool = False

    @abstractmethod
    async def generate(self, prompt: Prompt, params: GenParams) -> GenOutput:
        """Continue `prompt`; chat messages get the model's chat template."""

    @abstractmethod
    async def loglikelihood(self, context: Prompt, continuations: list[str]) -> LLOutput:
        """Score each continuation after `context` (chat context is rendered
        with the generation prompt, so the continuation is the reply)."""

    async def close(self) -> None:
        """Release the model; the default has nothing to release."""


def machine_cpus() -> int:
    """The CPUs this process may use, as a local Ray counts them: the CPU affinity,
    capped by a cgroup (v2) quota such as a container's."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


@dataclass(frozen=True)
class ReplicaResources:
    """What one replica asks Ray for. With `bundles`, the replica gets a
    placement group: the replica actor (num_cpus, num_gpus) sits in the first
    bundle and the engine's GPU workers take one bundle each."""
    num_cpus: float
    num_gpus: float
    bundles: list[dict] = field(default_factory=list)
    strategy: str | None = None

    @property
    def total_gpus(self) -> float:
        return sum(b.get("GPU", 0) for b in self.bundles) if self.bundles else self.num_gpus

    def describe(self) -> str:
        text = f"num_cpus={self.num_cpus}, num_gpus={self.num_gpus}"
        if self.bundles:
            text += f"; placement group {self.strategy} {self.bundles} = {self.total_gpus:g} GPUs"
        return text


def gpu_bundles(cpus: float, n: int, strategy: str) -> ReplicaResources:
    """A placement group of n 1-GPU bundles, the replica actor in the first."""
    first = {"CPU": cpus, "GPU": 1.0} if cpus else {"GPU": 1.0}
    return ReplicaResources(cpus, 0.0, [first] + [{"GPU": 1.0} for _ in range(n - 1)], strategy)


PlacementStrategy = Literal["STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD"]


class AutoscalingConfig(Strict):
    """model.autoscaling: Serve's autoscaling of the replicas (instead of `replicas`)."""
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(ge=1)
    # Requests (Serve calls of `model_stream.batch_rows` rows) in flight per replica that Serve aims at.
    target_ongoing_requests: float = Field(2.0, gt=0)
    # How long the load must stay above / below the target before replicas are added / removed.
    upscale_delay_s: float = Field(30.0, ge=0)
    downscale_delay_s: float = Field(600.0, ge=0)

    @model_validator(mode="after")
    def _order(self):
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        return self

    def serve_config(self) -> dict:
        return {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": self.upscale_delay_s, "downscale_delay_s": self.downscale_delay_s}


class ModelConfig(Strict):
    """The `model:` keys every engine takes. Each engine subclasses it with
    `engine: Literal["<name>"] = "<name>"` and overrides what differs."""
    name: str
    engine: str
    # Local path, or `builtin:tiny-llama` for the model the project builds itself.
    path: str
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Requests the engine batches together (micro-batch for HF).
    batch_size: int = Field(16, ge=1)
    max_model_len: int = Field(2048, ge=16)
    replicas: int = Field(1, ge=1)
    # Let Serve add and remove replicas with the load (replaces `replicas`).
    autoscaling: Optional[AutoscalingConfig] = None
    num_gpus: float = Field(0, ge=0)
    # CPUs each replica reserves (the Hugging Face engine runs torch on as many
    # threads). `auto`: on a local Ray the machine's CPUs shared by the replicas
    # (one replica gets them all: the stream's callers reserve none), on a cluster 1.
    num_cpus: Union[Annotated[float, Field(ge=0)], Literal["auto"]] = 1
    # Extra keyword arguments for the backend's model loading (checked by the
    # engines that can check them when the config loads).
    engine_args: dict = {}
    # Serve an OpenAI-compatible /v1/chat/completions under this route prefix
    # (e.g. /judge), so this model can be a judge; needs Serve's HTTP proxy (http_port).
    http_route: Optional[str] = None

    @model_validator(mode="after")
    def _one_replica_count(self):
        if self.autoscaling is not None and "replicas" in self.model_fields_set and self.replicas != 1:
            raise ValueError("replicas and autoscaling both set: autoscaling decides the replica count "
                             "(autoscaling.min_replicas / max_replicas)")
        return self

    @model_validator(mode="after")
    def _http_route(self):
        if self.http_route is not None and not self.http_route.startswith("/"):
            raise ValueError("http_route must start with '/'")
        return self

    @property
    def min_replicas(self) -> int:
        return self.autoscaling.min_replicas if self.autoscaling else self.replicas

    @property
    def max_replicas(self) -> int:
        """The most replicas there may be: callers are sized for them."""
        return self.autoscaling.max_replicas if self.autoscaling else self.replicas

    def describe_replicas(self) -> str:
        if self.autoscaling:
            a = self.autoscaling
            return (f"autoscaling {a.min_replicas}..{a.max_replicas} (target {a.target_ongoing_requests:g} calls in "
                    f"flight per replica)")
        return str(self.replicas)

    def with_cpus(self, local: bool) -> "ModelConfig":
        """This config with `num_cpus: auto` made a number (see num_cpus)."""
        if self.num_cpus != "auto":
            return self
        have = machine_cpus() if local else 1
        return self.model_copy(update={"num_cpus": float(max(1, have // self.max_replicas))})

    def resources(self) -> ReplicaResources:
        """What one replica asks Ray for: the configured CPUs and GPUs."""
        return ReplicaResources(float(self.num_cpus), float(self.num_gpus))

    def identity(self) -> dict:
        """What makes two models' outputs differ (not replicas or batch size): part of every row key."""
        return {"name": self.name, "engine": self.engine, "path": self.path, "dtype": self.dtype,
                "max_model_len": self.max_model_len, "engine_args": self.engine_args}

    def check_dataset(self, name: str, d: DatasetConfig) -> None:
        """Raise ValueError, naming the key, for a dataset this model cannot run."""

    def describe(self) -> list[str]:
        """More lines for `--dry-run` about this engine's settings."""
        return []

    def endpoint(self) -> Optional[EndpointConfig]:
        """The API endpoint the engine calls, if any: the driver reads its key and
        hands it to the replicas (`build_engine(api_key)`), which may run on nodes without it."""
        return None

    def missing_weights(self) -> Optional[str]:
        """Why `path` cannot be loaded on this machine, for a path that is plainly a
        local one (absolute, ./, ../, ~) and is not there; None otherwise (a hub id,
        or the builtin model). Engines without local weights (API models) return None."""
        p = self.path
        if not p.startswith(("/", "./", "../", "~")):
            return None
        if not os.path.exists(os.path.expanduser(p)):
            return f"model.path {p} does not exist on this machine"
        return None

    @abstractmethod
    def build_engine(self, api_key: Optional[SecretStr] = None) -> Engine:
        """The engine (imports its backend: torch, vllm, lmdeploy, ...). `api_key`:
        the key of `endpoint()`, read by the driver (None for engines without one)."""
