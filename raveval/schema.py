"""Typed schema of a run config. Every key is declared here; unknown keys fail.

`config.py` composes YAML into a plain dict and validates it against these
models; the error messages name the key and the file it came from.
"""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator


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


class ModelConfig(Strict):
    name: str
    engine: Literal["hf"] = "hf"
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
    # Extra keyword arguments for the backend's model loading.
    engine_args: dict = {}


class RunConfig(Strict):
    model: ModelConfig
    datasets: dict[str, DatasetConfig]
    work_dir: str
    # Root folder that dataset paths may interpolate as ${data_root}.
    data_root: str = "data"
    # Ray cluster: "local" starts one in-process; "auto" joins the running cluster.
    ray_address: str = "local"
    # Rows per Serve call; each call's rows run concurrently in the replica.
    batch_rows: int = Field(256, ge=1)
    # Data callers (CPU-free actors) and batches in flight per caller.
    callers: int = Field(2, ge=1)
    calls_per_caller: int = Field(4, ge=1)
    resume: bool = True

    @model_validator(mode="after")
    def _has_datasets(self):
        if not self.datasets:
            raise ValueError("datasets: at least one dataset is required")
        return self
