"""An engine that answers at once, without a model (engine: instant): for measuring
raveval's own overhead (orchestration, Ray Data, Serve, scoring, writing) in
scripts/benchmarks, and for tests of the pipeline that need no weights.

Answers are deterministic functions of the prompt: a generation is the prompt's
last `max_new_tokens` characters reversed, log-likelihoods are minus the length
of each continuation. Replicas take no CPU unless asked (`num_cpus`);
`delay_s` makes each call take that long (a slow engine, for autoscaling);
`token_s` adds that much per word read and written, so rows finish at
different times as a model's do.
"""
from __future__ import annotations

import asyncio
import zlib
from typing import Literal, Optional

from pydantic import Field, SecretStr

from raveval.engines.base import Engine, GenOutput, GenParams, LLOutput, ModelConfig, Prompt


class InstantModelConfig(ModelConfig):
    engine: Literal["instant"] = "instant"
    path: str = "instant"     # a label: there are no weights
    num_cpus: float = 0
    # Seconds each call takes (0: none).
    delay_s: float = Field(0.0, ge=0)
    # Seconds per word of prompt and output (0: none).
    token_s: float = Field(0.0, ge=0)

    def missing_weights(self) -> None:
        return None

    def build_engine(self, api_key: Optional[SecretStr] = None) -> InstantEngine:
        return InstantEngine(self.delay_s, self.token_s)


def _text(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(str(m.get("content", "")) for m in prompt)


class InstantEngine(Engine):
    supports_choices = True

    def __init__(self, delay_s: float = 0.0, token_s: float = 0.0):
        self.delay_s, self.token_s = delay_s, token_s

    async def _wait(self, words: int) -> None:
        if self.delay_s or self.token_s:
            await asyncio.sleep(self.delay_s + self.token_s * words)

    async def generate(self, prompt: Prompt, params: GenParams) -> GenOutput:
        text = _text(prompt)
        if params.choices:  # constrained: one of the choices, picked by the prompt's hash
            out = params.choices[zlib.crc32(text.encode()) % len(params.choices)]
        else:
            out = text[-params.max_new_tokens:][::-1]
        await self._wait(len(text.split()) + len(out.split()))
        return GenOutput(out, len(text.split()), len(out.split()))

    async def loglikelihood(self, context: Prompt, continuations: list[str]) -> LLOutput:
        await self._wait(len(_text(context).split()) + sum(len(c.split()) for c in continuations))
        return LLOutput([-float(len(c)) for c in continuations], [len(c.split()) for c in continuations])
