"""The engines there are, by the `engine:` name of a model config.

Each engine's module holds its `ModelConfig` subclass (`engine:
Literal["<name>"]`, its settings, checks, resources, identity and
`build_engine`); adding an engine is that module and one line in `MODELS`.
`AnyModelConfig` is the type of `RunConfig.model`: a union on `engine`
(missing means "hf"), so a config is validated by its engine's class.
Importing this imports every engine module, none of their backends.
"""
from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BeforeValidator, ConfigDict, Discriminator, Tag, TypeAdapter

from raveval.config.schema import Strict
from raveval.engines.base import ModelConfig
from raveval.engines.hf import HFModelConfig
from raveval.engines.instant import InstantModelConfig
from raveval.engines.lmdeploy_engine import LMDeployModelConfig
from raveval.engines.openai_api import OpenAIModelConfig
from raveval.engines.vllm_engine import VLLMModelConfig

MODELS: tuple[type[ModelConfig], ...] = (HFModelConfig, VLLMModelConfig, LMDeployModelConfig, OpenAIModelConfig,
                                         InstantModelConfig)
ENGINES: dict[str, type[ModelConfig]] = {cls.model_fields["engine"].default: cls for cls in MODELS}
DEFAULT_ENGINE = "hf"
# The keys each engine adds to the common ones (its settings block: `vllm:`, `lmdeploy:`, `api:`).
OWN_KEYS = {name: [k for k in cls.model_fields if k not in ModelConfig.model_fields] for name, cls in ENGINES.items()}


class UnknownEngine(Strict):
    """Where a config with an unknown `engine:` is sent: its one error names
    model.engine and the engines there are (the other keys are not looked at)."""
    model_config = ConfigDict(extra="ignore")
    engine: Literal[tuple(ENGINES)]


def _engine(data) -> str:
    engine = data.get("engine", DEFAULT_ENGINE) if isinstance(data, dict) else getattr(data, "engine", DEFAULT_ENGINE)
    return engine if isinstance(engine, str) and engine in ENGINES else "unknown"


def _settings_need_their_engine(data):
    """`vllm:` under engine hf is named as settings of another engine, not as an unknown key."""
    if isinstance(data, dict) and _engine(data) in ENGINES:
        engine = data.get("engine", DEFAULT_ENGINE)
        for name, keys in OWN_KEYS.items():
            for key in keys:
                if key in data and name != engine:
                    raise ValueError(f"`{key}` settings need engine: {name}")
    return data


AnyModelConfig = Annotated[
    Union[tuple(Annotated[cls, Tag(name)] for name, cls in ENGINES.items())
          + (Annotated[UnknownEngine, Tag("unknown")],)],
    Discriminator(_engine),
    BeforeValidator(_settings_need_their_engine),
]
_ADAPTER = TypeAdapter(AnyModelConfig)


def parse_model(data: dict) -> ModelConfig:
    """A `model:` config as its engine's class (raises pydantic's ValidationError)."""
    return _ADAPTER.validate_python(data)
