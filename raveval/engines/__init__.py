"""Inference engines: the async `Engine` interface, and per engine its module
with its model config class (settings, checks, resources, identity,
construction), all found through `registry` by the `engine:` name.

Importing this package does not import torch, transformers, vllm or
lmdeploy; `ModelConfig.build_engine` imports the chosen backend."""
from __future__ import annotations

from raveval.engines.base import Engine, GenOutput, GenParams, LLOutput, ModelConfig, Prompt, ReplicaResources
from raveval.engines.registry import AnyModelConfig, parse_model

__all__ = ["AnyModelConfig", "Engine", "GenOutput", "GenParams", "LLOutput", "ModelConfig", "Prompt",
           "ReplicaResources", "parse_model"]

