"""An API model under test: an OpenAI-compatible chat endpoint (engine: openai).

It uses the judges' HTTP client (aiohttp, retries with backoff, Retry-After)
and the endpoint's cluster-wide limiter, so an API model and a judge on the
same endpoint and key share one budget; the key comes from the driver (the
replica's node need not have it). Generation only: a chat API gives no
log-likelihoods of given continuations, so `mode: ll` is rejected when the
config is validated; `loglikelihood` raises if it is called anyway.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import SecretStr

from raveval.config.schema import DatasetConfig, EndpointConfig
from raveval.config.secrets import public_url
from raveval.engines.base import Engine, GenOutput, GenParams, LLOutput, ModelConfig, Prompt


class OpenAIModelConfig(ModelConfig):
    engine: Literal["openai"] = "openai"
    # The API model under test: its `model` is what is asked for; `path` is only a label.
    api: EndpointConfig

    def check_dataset(self, name: str, d: DatasetConfig) -> None:
        if d.mode == "ll":
            raise ValueError(f"datasets.{name}.mode: 'll' needs log-likelihoods, which engine 'openai' "
                             "(chat completions) cannot give; use mode: gen")

    def identity(self) -> dict:
        # The server and the model it is asked for decide every answer; so do provider options.
        ident = {**super().identity(), "base_url": public_url(self.api.base_url).rstrip("/"), "api_model": self.api.model}
        if self.api.extra_body:
            ident["extra_body"] = self.api.extra_body
        return ident

    def missing_weights(self) -> None:
        return None  # no weights: `path` is a label

    def endpoint(self) -> EndpointConfig:
        return self.api

    def build_engine(self, api_key: Optional[SecretStr] = None) -> OpenAIEngine:
        return OpenAIEngine(self, api_key)


class OpenAIEngine(Engine):
    supports_choices = True  # sent as structured_outputs.choice (vLLM-style servers)

    def __init__(self, cfg: OpenAIModelConfig, api_key: Optional[SecretStr] = None):
        from raveval.http.client import ChatClient
        from raveval.http.limiter import make_limiter

        self.cfg = cfg
        # Metrics tagged by the model (a replica serves rows of any run and dataset).
        self.client = ChatClient(cfg.api, make_limiter(cfg.api), api_key=api_key,
                                 metric_tags={"model": cfg.name, "stage": "model", "endpoint": cfg.api.model})

    async def generate(self, prompt: Prompt, params: GenParams) -> GenOutput:
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        extra = {"structured_outputs": {"choice": list(params.choices)}} if params.choices else None
        res = await self.client.chat(
            messages, max_tokens=params.max_new_tokens, temperature=params.temperature,
            top_p=params.top_p if params.temperature > 0 else None, stop=list(params.stop) or None,
            seed=params.seed, extra=extra)
        return GenOutput(text=res.text, prompt_tokens=res.prompt_tokens or 0, output_tokens=res.completion_tokens or 0)

    async def loglikelihood(self, context: Prompt, continuations: list[str]) -> LLOutput:
        raise NotImplementedError("engine openai cannot score log-likelihoods (chat completions give none); use mode: gen")

    async def close(self) -> None:
        await self.client.close()
