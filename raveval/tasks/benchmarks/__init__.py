"""Dataset loaders: every benchmark becomes a list of rows
{subject, row_id, question, choices, gold}, plus few-shot rows by subject (the same keys,
plus `explanation` for GSM8K / C-Eval dev shots) and category groups."""
from .common import DatasetError, LoadedDataset
from .registry import LOADERS, load_dataset

__all__ = ["load_dataset", "LoadedDataset", "DatasetError", "LOADERS"]
