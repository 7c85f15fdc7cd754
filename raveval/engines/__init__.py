"""Inference engines. Importing this package does not import torch or
transformers; `build_engine` imports the chosen backend when it is called."""
from __future__ import annotations

from typing import TYPE_CHECKING

from raveval.engines.base import Engine, GenOutput, GenParams, LLOutput, Prompt

if TYPE_CHECKING:
    from raveval.schema import ModelConfig

__all__ = ["Engine", "GenOutput", "GenParams", "LLOutput", "Prompt", "build_engine"]


def build_engine(cfg: ModelConfig) -> Engine:
    if cfg.engine == "hf":
        from raveval.engines.hf import HFEngine

        return HFEngine(cfg)
    raise ValueError(f"model.engine: unknown engine {cfg.engine!r}")
