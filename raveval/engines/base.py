"""The one async engine interface every backend implements.

A replica holds one engine and sends it many requests at once; the engine
batches them internally (continuous batching in vLLM, a micro-batcher for
Hugging Face), so callers never batch by hand.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Union

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
