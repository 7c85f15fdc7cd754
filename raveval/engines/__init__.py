"""Inference engines. Importing this package does not import torch or
transformers; `build_engine` imports the chosen backend when it is called."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from raveval.engines.base import Engine, GenOutput, GenParams, LLOutput, Prompt

if TYPE_CHECKING:
    from raveval.config.schema import ModelConfig

__all__ = ["Engine", "GenOutput", "GenParams", "LLOutput", "Prompt", "ReplicaResources", "build_engine",
           "replica_resources"]


def build_engine(cfg: ModelConfig) -> Engine:
    if cfg.engine == "hf":
        from raveval.engines.hf import HFEngine

        return HFEngine(cfg)
    if cfg.engine == "openai":
        from raveval.engines.openai_api import OpenAIEngine

        return OpenAIEngine(cfg)
    if cfg.engine == "vllm":
        from raveval.engines.vllm_engine import VLLMEngine

        return VLLMEngine(cfg)
    if cfg.engine == "lmdeploy":
        from raveval.engines.lmdeploy_engine import LMDeployEngine

        return LMDeployEngine(cfg)
    raise ValueError(f"model.engine: unknown engine {cfg.engine!r}")


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


def replica_resources(cfg: ModelConfig) -> ReplicaResources:
    """Resources of one replica: an engine gets exactly the GPUs it uses.

    vLLM on GPUs uses tensor_parallel_size x pipeline_parallel_size GPUs: one
    GPU on the replica itself, or, when more, a placement group of one 1-GPU
    bundle per worker (STRICT_PACK by default: one node, never shared).
    LMDeploy uses tp GPUs: its PyTorch backend places like vLLM (Ray workers,
    one bundle each); TurboMind runs its tp GPUs from the replica's own
    process, so the replica itself holds all tp GPUs (one node by construction)."""
    cpus = float(cfg.num_cpus)
    if cfg.engine == "lmdeploy":
        lm = cfg.lmdeploy_settings
        if lm.tp == 1 or lm.backend == "turbomind":
            return ReplicaResources(cpus, float(lm.tp))
        return gpu_bundles(cpus, lm.tp, lm.placement_strategy)
    if cfg.engine != "vllm":
        return ReplicaResources(cpus, float(cfg.num_gpus))
    v = cfg.vllm_settings
    n = v.tensor_parallel_size * v.pipeline_parallel_size
    if cfg.device == "cpu":
        return ReplicaResources(cpus, 0.0)
    if n == 1:
        return ReplicaResources(cpus, 1.0)
    return gpu_bundles(cpus, n, v.placement_strategy)
