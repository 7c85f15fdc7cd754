"""The benchmarks: one module per dataset family, each holding its `Benchmark`
spec (loader, prompt family, answer kind, judge modes; see spec.py), and this
registry, which finds a spec by the `loader:` name of a dataset config.

Adding a benchmark: write its module (a `load` and a `BENCHMARK`), then list it below.

Every loader turns a benchmark into rows {subject, row_id, question, choices, gold}
(subjective benchmarks add `turns`, `reference`, ...), few-shot rows by subject (the
same keys, plus `explanation` for GSM8K / C-Eval dev shots) and category groups;
`load_dataset` then applies the options every loader shares.
"""
from __future__ import annotations

from raveval.config.schema import DatasetConfig

from . import alignbench, alpacaeval, ceval, generic, gsm8k, mmlu, mt_bench
from .common import DatasetError, LoadedDataset, finalize
from .spec import Benchmark

BENCHMARKS: tuple[Benchmark, ...] = (
    mmlu.BENCHMARK,
    ceval.BENCHMARK,
    gsm8k.BENCHMARK,
    generic.BENCHMARK,
    mt_bench.BENCHMARK,
    alignbench.BENCHMARK,
    alpacaeval.BENCHMARK,
)
_BY_NAME = {b.name: b for b in BENCHMARKS}


def benchmark(loader: str) -> Benchmark:
    """The spec of a dataset config's `loader:`."""
    if loader not in _BY_NAME:
        raise DatasetError(f"unknown loader {loader!r}; known: {sorted(_BY_NAME)}")
    return _BY_NAME[loader]


def load_dataset(name: str, cfg: DatasetConfig) -> LoadedDataset:
    try:
        spec = benchmark(cfg.loader)
    except DatasetError as e:
        raise DatasetError(f"dataset {name!r}: {e}") from None
    return finalize(name, cfg.subjects, cfg.limit, cfg.seed, spec.load(cfg))


__all__ = ["BENCHMARKS", "Benchmark", "DatasetError", "LoadedDataset", "benchmark", "load_dataset"]
