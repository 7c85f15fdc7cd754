"""Shared prompt prefixes computed once (the HF engine's prefix caching).

Few-shot prompts of one subject share most of their tokens: C-Eval's 5-shot
prompts about 80%, GSM8K's 8-shot ones more. vLLM and LMDeploy cache such
prefixes themselves. For the HF engine, `batches` puts rows that share a
prefix into the same batch, and `PrefixCache` computes a prefix's keys and
values once, keeps the last few for the next batches, and hands each batch its
own copy, so only the rows' own tokens run through the model.
"""
from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from typing import Sequence

# Tokens: a shorter shared prefix saves less than copying its cache costs.
MIN_PREFIX = 64


def shared_len(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens a and b have in common."""
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


def common_prefix(seqs: list[Sequence[int]]) -> int:
    """How many leading tokens all of seqs have in common."""
    first = seqs[0]
    return min((shared_len(first, s) for s in seqs[1:]), default=len(first))


def batches(seqs: list[Sequence[int]], size: int, by_prefix: bool = True) -> list[list[int]]:
    """Indexes of seqs in batches of at most `size`. With `by_prefix`, rows that
    share at least MIN_PREFIX leading tokens with a neighbour in token order go
    together first (so their batch can reuse one prefix); within a group, and
    for the rest, longest first (similar lengths together: less padding)."""
    groups: list[list[int]] = []
    if by_prefix:
        runs: list[list[int]] = []
        for i in sorted(range(len(seqs)), key=lambda i: seqs[i]):
            if runs and shared_len(seqs[runs[-1][-1]], seqs[i]) >= MIN_PREFIX:
                runs[-1].append(i)
            else:
                runs.append([i])
        groups = [r for r in runs if len(r) > 1]
        rest = [i for r in runs if len(r) == 1 for i in r]
    else:
        rest = list(range(len(seqs)))
    out = []
    for group in groups + [rest]:
        group.sort(key=lambda i: -len(seqs[i]))
        out += [group[k : k + size] for k in range(0, len(group), size)]
    return [b for b in out if b]


class PrefixCache:
    """The keys and values of the last `capacity` prefixes a model has seen,
    least recently used first out."""

    def __init__(self, model, device, capacity: int):
        import inspect

        self.model, self.device, self.capacity = model, device, capacity
        # Only the last position's logits (none are needed), where the model lets us say so.
        keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._kw = {"logits_to_keep": 1} if keep else {}
        self._entries: OrderedDict[tuple[int, ...], object] = OrderedDict()
        self._lock = threading.Lock()  # batches may run in several threads (HF cpu_streams)
        self.hits = self.tokens_computed = 0  # for tests and stats

    def longest(self, tokens: Sequence[int]) -> int:
        """How many leading tokens of `tokens` a kept prefix has."""
        with self._lock:
            return max((shared_len(k, tokens) for k in self._entries), default=0)

    def get(self, tokens: Sequence[int], batch: int):
        """A fresh DynamicCache holding `tokens`' keys and values for `batch` rows
        (the model appends the rows' own tokens to it). Computes only what no
        kept prefix already has."""
        import torch

        with self._lock, torch.inference_mode():
            return self._get(tuple(tokens), batch)

    def _get(self, key: tuple[int, ...], batch: int):
        best, have = None, 0
        for k in self._entries:
            n = shared_len(k, key)
            if n > have:
                best, have = k, n
        if have == len(key) and len(best) == len(key):
            self.hits += 1
            kv = self._entries[best]
            self._entries.move_to_end(best)
        else:
            kv = None
            if have >= MIN_PREFIX:
                self.hits += 1
                kv = copy.deepcopy(self._entries[best])
                if len(best) > have:
                    kv.crop(have - len(best))  # drop the tokens past the shared part
            if have < len(key):
                kv = self._compute(key[have:] if kv is not None else key, kv)
            self._entries[key] = kv
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        out = copy.deepcopy(kv)
        out.batch_repeat_interleave(batch)
        return out

    def _compute(self, tokens: Sequence[int], past):
        import torch

        self.tokens_computed += len(tokens)
        ids = torch.tensor([list(tokens)], device=self.device)
        return self.model(input_ids=ids, past_key_values=past, use_cache=True, **self._kw).past_key_values
