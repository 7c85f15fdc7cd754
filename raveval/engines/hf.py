"""Hugging Face transformers engine.

Two layers: synchronous batch methods (`generate_batch`, `loglikelihood_batch`)
that a benchmark can call in a plain loop, and the async `Engine` interface,
whose concurrent calls a `MicroBatcher` groups into those batch calls.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import replace

import torch
import transformers
from packaging import version as _version
from transformers import AutoModelForCausalLM

from raveval.engines.base import Engine, GenOutput, GenParams, LLOutput, Prompt
from raveval.engines.batcher import MicroBatcher
from raveval.engines.tokens import Tokens
from raveval.config.schema import ModelConfig

BUILTIN_TINY = "builtin:tiny-llama"
# transformers < 4.56 calls the argument torch_dtype (and ignores `dtype`).
_DTYPE_KW = "dtype" if _version.parse(transformers.__version__) >= _version.parse("4.56") else "torch_dtype"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def _chunks(seq: list, n: int):
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _norm(params: GenParams) -> GenParams:
    # The batcher groups requests by params, so they must hash: stop as a tuple.
    return params if isinstance(params.stop, tuple) else replace(params, stop=tuple(params.stop))


class _ChoiceConstraint:
    """Logits processor for guided choice: after the prompt (`start` columns),
    only tokens that continue one of the choices' token sequences are allowed,
    and end-of-sequence once a whole choice is written."""

    def __init__(self, seqs: list[list[int]], start: int, eos: int):
        self.seqs, self.start, self.eos = seqs, start, eos

    def __call__(self, input_ids, scores):
        mask = torch.full_like(scores, float("-inf"))
        for r in range(input_ids.shape[0]):
            gen = input_ids[r, self.start :].tolist()
            allowed = {s[len(gen)] for s in self.seqs if len(s) > len(gen) and s[: len(gen)] == gen}
            if not allowed or any(s == gen for s in self.seqs):
                allowed.add(self.eos)
            mask[r, sorted(allowed)] = 0.0
        return scores + mask


class HFEngine(Engine):
    supports_choices = True

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        if cfg.path == BUILTIN_TINY:
            from raveval.engines.tiny_model import build_tiny_model

            path = str(build_tiny_model())
        else:
            path = cfg.path
        if cfg.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(cfg.device)
        self._threads = max(1, int(cfg.num_cpus)) if self.device.type == "cpu" else None
        self._set_threads()

        self.tokens = Tokens(path)  # the token rules every engine shares
        self.tokenizer = self.tokens.tok
        kwargs = {_DTYPE_KW: _DTYPES[cfg.dtype], **cfg.engine_args}
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if "device_map" not in kwargs:
            model = model.to(self.device)
        self.model = model.eval()

        self.batch_size = cfg.batch_size
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.max_len = min(cfg.max_model_len, limit) if limit else cfg.max_model_len
        self._eos_ids = self.tokens.eos_ids
        self.pad_id = self.tokens.pad_id
        # Ask the model for the needed logit positions only: full [B, L, vocab]
        # logits of a large-vocab model would be gigabytes.
        self._keep_ok = "logits_to_keep" in inspect.signature(self.model.forward).parameters

        self.batcher = MicroBatcher(self._run, cfg.batch_size, thread_init=self._set_threads)

    def _set_threads(self) -> None:
        # Applied in the worker thread too: OpenMP thread counts are per thread.
        if self._threads:
            torch.set_num_threads(self._threads)

    @property
    def batches_run(self) -> int:
        return self.batcher.batches_run

    # ---- synchronous batch methods ------------------------------------
    def _gen_config(self, params: GenParams):
        gc = copy.deepcopy(self.model.generation_config)
        sample = params.temperature > 0
        gc.max_new_tokens = params.max_new_tokens
        gc.max_length = None
        gc.do_sample = sample
        gc.num_beams = 1
        gc.temperature = params.temperature if sample else None
        gc.top_p = params.top_p if sample else None
        gc.top_k = params.top_k if sample else None  # 0 disables top-k
        gc.pad_token_id = self.pad_id
        gc.stop_strings = list(params.stop) or None
        return gc

    @torch.inference_mode()
    def generate_batch(self, prompts: list[Prompt], params: GenParams) -> list[GenOutput]:
        params = _norm(params)
        keep = max(1, self.max_len - params.max_new_tokens)
        encs = [self.tokens.prompt(p)[-keep:] for p in prompts]  # truncate on the left
        gc = self._gen_config(params)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        # Similar lengths together: less padding.
        order = sorted(range(len(encs)), key=lambda i: -len(encs[i]))
        outs: list[GenOutput | None] = [None] * len(encs)
        for idx in _chunks(order, self.batch_size):
            width = max(len(encs[i]) for i in idx)
            ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, i in enumerate(idx):  # left padding: all prompts end at the same column
                ids[r, width - len(encs[i]) :] = torch.tensor(encs[i])
                mask[r, width - len(encs[i]) :] = 1
            extra = {}
            if params.choices:  # guided choice: the output is one of the given strings
                seqs = [self.tokenizer(c, add_special_tokens=False).input_ids for c in params.choices]
                eos = min(self._eos_ids) if self._eos_ids else self.pad_id
                extra["logits_processor"] = transformers.LogitsProcessorList([_ChoiceConstraint(seqs, width, eos)])
            gen = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                generation_config=gc,
                tokenizer=self.tokenizer if params.stop else None,
                **extra,
            )
            for r, i in enumerate(idx):
                outs[i] = self._finish(gen[r, width:].tolist(), params, len(encs[i]))
        return outs

    def _finish(self, new: list[int], params: GenParams, n_prompt: int) -> GenOutput:
        n = len(new)
        for k, t in enumerate(new):
            if t in self._eos_ids:
                n = k
                break
        while n and new[n - 1] == self.pad_id:  # filler after a stop-string finish
            n -= 1
        text = self.tokenizer.decode(new[:n], skip_special_tokens=True)
        cuts = [c for c in (text.find(s) for s in params.stop if s) if c >= 0]
        if cuts:
            text = text[: min(cuts)]
        return GenOutput(text=text, prompt_tokens=n_prompt, output_tokens=n)

    def _forward(self, seqs: list[list[int]], positions: set[int]):
        """Right-padded forward; returns (logits, column of each position)."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
        kw = {}
        if self._keep_ok:
            keep = sorted(positions)
            kw["logits_to_keep"] = torch.tensor(keep, device=self.device)
            col = {p: k for k, p in enumerate(keep)}
        else:
            col = {p: p for p in positions}
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kw)
        return out.logits, col

    @torch.inference_mode()
    def loglikelihood_batch(
        self, items: list[tuple[Prompt, list[str]]], *, fast: bool = True
    ) -> list[LLOutput]:
        """Sum of log-probs of each continuation given its context.

        `fast=False` turns off the single-token path (for tests and benchmarks).
        """
        logprobs = [[0.0] * len(conts) for _, conts in items]
        counts = [[0] * len(conts) for _, conts in items]
        singles: dict[tuple[int, ...], list[tuple[int, int, int]]] = {}
        multi: list[tuple[int, int, list[int], int]] = []
        for i, (context, conts) in enumerate(items):
            ctx, ws = self.tokens.context(context)
            for j, cont in enumerate(conts):
                cids = self.tokenizer(ws + cont, add_special_tokens=False).input_ids
                counts[i][j] = len(cids)
                if not cids:
                    continue
                if fast and len(cids) == 1:
                    # One token: the context's last position scores it, so one
                    # forward of the context serves every such continuation.
                    singles.setdefault(tuple(ctx[-(self.max_len - 1) :]), []).append((i, j, cids[0]))
                else:
                    seq = (ctx + cids)[-self.max_len :]  # truncate on the left
                    multi.append((i, j, seq, min(len(cids), len(seq) - 1)))

        ctxs = sorted(singles, key=len, reverse=True)
        for chunk in _chunks(ctxs, self.batch_size):
            logits, col = self._forward([list(c) for c in chunk], {len(c) - 1 for c in chunk})
            for r, c in enumerate(chunk):
                lp = torch.log_softmax(logits[r, col[len(c) - 1]].float(), -1)
                for i, j, tok in singles[c]:
                    logprobs[i][j] = lp[tok].item()

        multi.sort(key=lambda m: len(m[2]), reverse=True)
        for chunk in _chunks(multi, self.batch_size):
            # Position p predicts token p+1: the last n tokens come from L-n-1 .. L-2.
            spans = [range(len(seq) - n - 1, len(seq) - 1) for _, _, seq, n in chunk]
            logits, col = self._forward([m[2] for m in chunk], {p for s in spans for p in s})
            for r, ((i, j, seq, n), span) in enumerate(zip(chunk, spans)):
                rows = logits[r, [col[p] for p in span]].float()
                target = torch.tensor(seq[len(seq) - n :], device=rows.device)
                lp = torch.log_softmax(rows, -1).gather(-1, target[:, None]).sum()
                logprobs[i][j] = lp.item()

        return [LLOutput(logprobs=lp, num_tokens=n) for lp, n in zip(logprobs, counts)]

    # ---- async interface ----------------------------------------------
    def _run(self, key: tuple, items: list):
        if key[0] == "gen":
            return self.generate_batch(items, key[1])
        return self.loglikelihood_batch(items)

    async def generate(self, prompt: Prompt, params: GenParams) -> GenOutput:
        return await self.batcher.submit(("gen", _norm(params)), prompt)

    async def loglikelihood(self, context: Prompt, continuations: list[str]) -> LLOutput:
        return await self.batcher.submit(("ll",), (context, list(continuations)))

    async def close(self) -> None:
        await self.batcher.aclose()
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
