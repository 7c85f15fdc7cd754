"""Loader registry and the one entry point, `load_dataset`.

A loader takes the DatasetConfig and returns `Parsed` (all rows in file order, few-shot
rows by subject, category groups); `load_dataset` then applies the options every
loader shares. New loaders register by adding to LOADERS.
"""
from __future__ import annotations

from typing import Callable

from raveval.config.schema import DatasetConfig

from . import alignbench, alpacaeval, ceval, generic, gsm8k, mmlu, mt_bench
from .common import DatasetError, LoadedDataset, Parsed, finalize

LOADERS: dict[str, Callable[[DatasetConfig], Parsed]] = {
    "mmlu": mmlu.load,
    "ceval": ceval.load,
    "gsm8k": gsm8k.load,
    "generic": generic.load,
    # Subjective benchmarks (judged by an LLM judge: see raveval/judge/).
    "mt_bench": mt_bench.load,
    "alignbench": alignbench.load,
    "alpacaeval": alpacaeval.load,
}


def load_dataset(name: str, cfg: DatasetConfig) -> LoadedDataset:
    loader = LOADERS.get(cfg.loader)
    if loader is None:
        raise DatasetError(f"dataset {name!r}: unknown loader {cfg.loader!r}; known: {sorted(LOADERS)}")
    return finalize(name, cfg.subjects, cfg.limit, cfg.seed, loader(cfg))
