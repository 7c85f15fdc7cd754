"""Typed schema of a run config's parts: datasets, judge endpoints, streams.
Every key is declared; unknown keys fail. (The `model:` keys are declared by
each engine's config class, in raveval.engines, which builds on `Strict`.)

`compose.py` composes YAML into a plain dict and validates it against these
models; the error messages name the key and the file it came from.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from raveval.config.secrets import Url


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
    # Credentials in it (user:password@, ?key=) are left out wherever the config is saved or printed.
    base_url: Url
    model: str
    # Name of the environment variable that holds the API key, sent as `Authorization: Bearer`
    # (the key itself is never in a config).
    api_key_env: Optional[str] = None
    # More HTTP headers, every value a secret (e.g. {api-key: ${oc.env:AZURE_OPENAI_KEY}} for
    # Azure, {x-api-key: ...}): sent as given, shown as ********** wherever saved or printed.
    headers: dict[str, SecretStr] = {}
    # One budget per endpoint, shared by every caller in the cluster; None: no limit.
    requests_per_minute: Optional[float] = Field(None, gt=0)
    tokens_per_minute: Optional[float] = Field(None, gt=0)
    # Requests that may go at once after an idle spell (1: evenly spaced).
    burst: int = Field(1, ge=1)
    # Pace this fraction under the limits, so arrival jitter never exceeds them.
    rate_headroom: float = Field(0.02, ge=0, lt=1)
    # Requests in flight to this endpoint over the whole cluster (all jobs): the cap
    # halves on a 429 and grows back while the endpoint keeps up, never above this.
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
    # The judge prompts the benchmark publishes (without one, AlignBench and
    # AlpacaEval use raveval's own wording; MT-Bench needs it): MT-Bench,
    # FastChat's judge_prompts.jsonl; AlpacaEval, an annotator's prompt file
    # (evaluators_configs/<annotator>/*.txt) or its folder (configs.yaml);
    # AlignBench, its judge.py (the prompt is read from it, never run) or a text
    # file with the same template.
    prompts_path: Optional[str] = None
    # AlignBench: its config/multi-dimension.json (or that config/ folder), which
    # names the dimension set, definition and subcategory mapping files.
    config_path: Optional[str] = None
    # MT-Bench: GPT-4 reference answers (FastChat's reference_answer/gpt-4.jsonl).
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


class StreamConfig(Strict):
    """One Ray Data stage of CPU-free caller actors (model calls or judge calls)."""
    # Rows per call (one Serve call, or one batch of judge requests run concurrently).
    batch_rows: int = Field(256, ge=1)
    # Caller actors (they take no CPU: they only wait) and calls in flight per caller.
    callers: int = Field(2, ge=1)
    calls_per_caller: int = Field(4, ge=1)


class NotifyTarget(Strict):
    """One place run events are posted to: a Lark (Feishu) custom bot, a Slack
    incoming webhook, or any URL that takes a JSON body (`webhook`)."""
    kind: Literal["lark", "slack", "webhook"]
    # The webhook URL. Its path holds the bot's token, so the whole URL is a secret:
    # shown as ********** wherever the config is saved or printed (give it as ${oc.env:VAR}).
    url: SecretStr
    # Lark: the bot's signing secret ("signature verification"); the posts carry timestamp and sign.
    secret: Optional[SecretStr] = None
    # Which run events go here.
    events: list[Literal["start", "finish", "failure"]] = ["start", "finish", "failure"]

    @model_validator(mode="after")
    def _url(self):
        if not self.url.get_secret_value().startswith(("http://", "https://")):
            raise ValueError("url: must start with http:// or https://")
        if self.secret is not None and self.kind != "lark":
            raise ValueError(f"secret: only a lark bot signs its posts (this target is {self.kind})")
        return self


class NotifyConfig(Strict):
    """Run start, finish (with the headline table) and failure posted to chat bots or webhooks.
    A notification that fails is one warning line: it never fails the run."""
    targets: list[NotifyTarget] = []
    # Seconds all the posts of one event may take together.
    timeout_s: float = Field(10.0, gt=0)
