"""Hugging Face transformers engine (engine: hf).

Two layers: synchronous batch methods (`generate_batch`, `loglikelihood_batch`)
that a benchmark can call in a plain loop, and the async `Engine` interface,
whose concurrent calls a `MicroBatcher` groups into those batch calls.

torch and transformers are imported inside the methods: the registry imports
this module (for `HFModelConfig`) whenever a config is validated.
"""
from __future__ import annotations

import copy
import inspect
import os
import threading
from contextlib import nullcontext
from dataclasses import replace
from typing import Literal

from pydantic import Field

from raveval.engines.base import Engine, GenOutput, GenParams, LLOutput, ModelConfig, Prompt
from raveval.engines.batcher import MicroBatcher
from raveval.engines.hf_gqa import use_on_cpu as use_grouped_attention_on_cpu
from raveval.engines.prefix_cache import MIN_PREFIX, PrefixCache, batches, common_prefix
from raveval.engines.tokens import Tokens, first_stop, plan_ll, resolve_model_path


class HFModelConfig(ModelConfig):
    engine: Literal["hf"] = "hf"
    # On CPU, the niceness of the thread that runs the model (and of the torch threads it
    # starts): the run's coordination (driver, Ray Data, judge callers) goes first on a
    # shared machine, and the model takes every CPU cycle they leave. 0: compete as equals.
    cpu_nice: int = Field(10, ge=0, le=19)
    # Prompt prefixes (few-shot examples) shared by a batch's rows are computed once per
    # batch, and the last `prefix_cache` of them are kept for the next batches; 0: off.
    prefix_cache: int = Field(8, ge=0)
    # On CPU, batches that run at once (at most; as many as divide num_cpus evenly),
    # each on an equal share of the torch threads.
    # torch's threads wait for each other at every op, so when another process takes
    # one core for a moment the whole batch waits; separate streams wait only for
    # themselves (on 2 cores beside a 30% load: 19% slower instead of 34%).
    cpu_streams: int = Field(2, ge=1)

    def build_engine(self, api_key=None) -> HFEngine:  # no API, no key
        return HFEngine(self)


def _load_kwargs(cfg: ModelConfig) -> dict:
    """from_pretrained keyword arguments: the dtype, then model.engine_args."""
    import torch
    import transformers
    from packaging import version

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}
    # transformers < 4.56 calls the argument torch_dtype (and ignores `dtype`).
    key = "dtype" if version.parse(transformers.__version__) >= version.parse("4.56") else "torch_dtype"
    return {key: dtypes[cfg.dtype], **cfg.engine_args}


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
        import torch

        mask = torch.full_like(scores, float("-inf"))
        for r in range(input_ids.shape[0]):
            gen = input_ids[r, self.start :].tolist()
            allowed = {s[len(gen)] for s in self.seqs if len(s) > len(gen) and s[: len(gen)] == gen}
            if not allowed or any(s == gen for s in self.seqs):
                allowed.add(self.eos)
            mask[r, sorted(allowed)] = 0.0
        return scores + mask


class _StopAt:
    """Stopping criterion: a row is done once the text it generated holds a stop
    string. A stop string can only be complete after a token that holds its last
    character (or part of one: "\ufffd"), so only rows whose newest token is such
    a trigger are decoded. (transformers' `stop_strings` cost 1.7 ms a step and
    70 ms a call on GSM8K here; this costs a lookup a step.) Made once per stop
    strings, then `at(start)` for each batch."""

    def __init__(self, tokenizer, stops: tuple[str, ...]):
        import torch

        self.tok, self.stops, self.start = tokenizer, stops, 0
        ends = {s[-1] for s in stops}
        if " " in ends:  # sentencepiece drops a token's leading space when decoded alone
            self.trigger = None
        else:
            texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
            self.trigger = torch.tensor([any(c in t for c in ends) or "\ufffd" in t for t in texts])

    def at(self, start: int) -> _StopAt:
        """This criterion for a batch whose generated tokens start at column `start`."""
        out = copy.copy(self)
        out.start = start
        return out

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        last = input_ids[:, -1].cpu()
        check = torch.ones(len(last), dtype=torch.bool)  # ids the tokenizer does not know: check
        if self.trigger is not None:
            known = last < len(self.trigger)
            check[known] = self.trigger[last[known]]
        done = torch.zeros(len(last), dtype=torch.bool)
        for r in torch.nonzero(check).flatten().tolist():
            text = self.tok.decode(input_ids[r, self.start :].tolist(), skip_special_tokens=True)
            done[r] = first_stop(text, self.stops) >= 0
        return done.to(input_ids.device)


class HFEngine(Engine):
    supports_choices = True

    def __init__(self, cfg: ModelConfig):
        import torch
        from transformers import AutoModelForCausalLM

        self.cfg = cfg
        path = resolve_model_path(cfg.path)
        if cfg.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(cfg.device)
        self._threads = max(1, int(cfg.num_cpus)) if self.device.type == "cpu" else None
        if self._threads:  # the batch methods called directly (a plain loop) use them all
            torch.set_num_threads(self._threads)
        # torch's thread count is one for the whole process, so the streams share the
        # threads evenly: as many streams as divide them, at most cpu_streams (3 CPUs: 1).
        threads = self._threads or 1
        streams = max(s for s in range(1, min(getattr(cfg, "cpu_streams", 1), threads) + 1) if threads % s == 0)
        self._stream_threads = threads // streams if self._threads else None
        self._seeded = threading.Lock()  # a seed is torch's global state: one seeded batch at a time

        self.tokens = Tokens(path)  # the token rules every engine shares
        self.tokenizer = self.tokens.tok
        kwargs = _load_kwargs(cfg)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if "device_map" not in kwargs:
            model = model.to(self.device)
        self.model = model.eval()
        if "attn_implementation" not in cfg.engine_args:
            use_grouped_attention_on_cpu(self.model)

        self.batch_size = cfg.batch_size
        limit = getattr(self.model.config, "max_position_embeddings", None)
        self.max_len = min(cfg.max_model_len, limit) if limit else cfg.max_model_len
        self._eos_ids = self.tokens.eos_ids
        self.pad_id = self.tokens.pad_id
        # Ask the model for the needed logit positions only: full [B, L, vocab]
        # logits of a large-vocab model would be gigabytes.
        self._keep_ok = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self._stops: dict[tuple[str, ...], _StopAt] = {}  # stop strings -> their criterion
        self.prefixes = PrefixCache(self.model, self.device, cfg.prefix_cache) if getattr(cfg, "prefix_cache", 0) else None

        self.batcher = MicroBatcher(self._run, cfg.batch_size, thread_init=self._batch_thread_init, workers=streams)

    def _batch_thread_init(self) -> None:
        if self._stream_threads:
            import torch

            torch.set_num_threads(self._stream_threads)
        nice = getattr(self.cfg, "cpu_nice", 0)
        if self.device.type == "cpu" and nice:
            os.nice(nice)  # this thread only (Linux); the threads it starts inherit it

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
        return gc

    def _gen_ids(self, prompt: Prompt, params: GenParams) -> list[int]:
        """A prompt's ids, truncated on the left to leave room for the new tokens."""
        return self.tokens.prompt(prompt)[-max(1, self.max_len - params.max_new_tokens):]

    def _ll_ids(self, context: Prompt, conts: list[str]) -> tuple[list[int], list[list[int]]]:
        ctx, ws = self.tokens.context(context)
        return ctx, self.tokens.continuations(ws, conts)

    def generate_batch(self, prompts: list[Prompt], params: GenParams) -> list[GenOutput]:
        params = _norm(params)
        return self._generate([self._gen_ids(p, params) for p in prompts], params)

    def _generate(self, encs: list[list[int]], params: GenParams) -> list[GenOutput]:
        with self._seeded if params.seed is not None else nullcontext():
            return self._generate_seeded(encs, params)

    def _generate_seeded(self, encs: list[list[int]], params: GenParams) -> list[GenOutput]:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        gc = self._gen_config(params)
        if params.seed is not None:
            torch.manual_seed(params.seed)
        outs: list[GenOutput | None] = [None] * len(encs)
        for idx in batches(encs, self.batch_size, by_prefix=self.prefixes is not None):
            # A shared prefix comes from the cache; each row keeps at least one token of its own.
            p, past = self._prefix([encs[i] for i in idx], min(len(encs[i]) for i in idx) - 1)
            width = p + max(len(encs[i]) - p for i in idx)
            ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            ids[:, :p] = torch.tensor(encs[idx[0]][:p])
            mask[:, :p] = 1
            for r, i in enumerate(idx):  # the rest left-padded: all prompts end at the same column
                ids[r, width - len(encs[i]) + p :] = torch.tensor(encs[i][p:])
                mask[r, width - len(encs[i]) + p :] = 1
            extra = {} if past is None else {"past_key_values": past}
            if params.choices:  # guided choice: the output is one of the given strings
                seqs = [self.tokenizer(c, add_special_tokens=False).input_ids for c in params.choices]
                eos = min(self._eos_ids) if self._eos_ids else self.pad_id
                extra["logits_processor"] = LogitsProcessorList([_ChoiceConstraint(seqs, width, eos)])
            if params.stop:
                if params.stop not in self._stops:
                    self._stops[params.stop] = _StopAt(self.tokenizer, params.stop)
                extra["stopping_criteria"] = StoppingCriteriaList([self._stops[params.stop].at(width)])
            with torch.inference_mode():
                gen = self.model.generate(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    generation_config=gc,
                    **extra,
                )
            for r, i in enumerate(idx):
                text, n = self.tokens.finish(gen[r, width:].tolist(), params, drop_pad=True)
                outs[i] = GenOutput(text=text, prompt_tokens=len(encs[i]), output_tokens=n)
        return outs

    def _prefix(self, seqs: list[list[int]], limit: int):
        """(p, cache): the first p tokens shared by all of seqs (at most `limit`), and
        their keys and values for len(seqs) rows; (0, None) when none worth reusing."""
        if self.prefixes is None:
            return 0, None
        # One row: only a kept prefix helps (computing its own tokens twice would not).
        p = min(common_prefix(seqs) if len(seqs) > 1 else self.prefixes.longest(seqs[0]), limit)
        if p < MIN_PREFIX:
            return 0, None
        return p, self.prefixes.get(seqs[0][:p], len(seqs))

    def _forward(self, seqs: list[list[int]], positions: set[int]):
        """Right-padded forward (in inference mode) of the tokens after a shared
        prefix, if any; returns (logits, column of each position)."""
        import torch

        p, past = self._prefix(seqs, min(positions))  # the logits needed come after the prefix
        width = max(len(s) for s in seqs) - p
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), p + width), dtype=torch.long)
        mask[:, :p] = 1
        for r, s in enumerate(seqs):
            ids[r, : len(s) - p] = torch.tensor(s[p:])
            mask[r, p : len(s)] = 1
        kw = {} if past is None else {"past_key_values": past}
        if self._keep_ok:
            keep = sorted(positions)
            kw["logits_to_keep"] = torch.tensor([k - p for k in keep], device=self.device)
            col = {k: c for c, k in enumerate(keep)}
        else:
            col = {k: k - p for k in positions}
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **kw)
        return out.logits, col

    def loglikelihood_batch(
        self, items: list[tuple[Prompt, list[str]]], *, fast: bool = True
    ) -> list[LLOutput]:
        """Sum of log-probs of each continuation given its context.

        The one-token continuations of a context are scored by one forward of
        that context (its last position), shared across items with the same
        context; `fast=False` turns that off (for tests and benchmarks).
        """
        return self._loglikelihood([self._ll_ids(c, conts) for c, conts in items], fast)

    def _loglikelihood(self, items: list[tuple[list[int], list[list[int]]]], fast: bool = True) -> list[LLOutput]:
        import torch

        logprobs = [[0.0] * len(cids) for _, cids in items]
        counts = [[0] * len(cids) for _, cids in items]
        nexts: dict[tuple[int, ...], list[tuple[int, int, int]]] = {}  # context -> (item, continuation, token)
        spans: list[tuple[int, int, list[int], int]] = []  # (item, continuation, sequence, tokens scored)
        for i, (ctx, cids) in enumerate(items):
            counts[i] = [len(c) for c in cids]
            for req in plan_ll(ctx, cids, self.max_len, share=fast):
                if req.n:
                    spans.append((i, req.slots[0][0], req.ids, req.n))
                else:
                    nexts.setdefault(tuple(req.ids), []).extend((i, j, tok) for j, tok in req.slots)

        with torch.inference_mode():
            ctxs = list(nexts)
            by_prefix = self.prefixes is not None
            for chunk in ([ctxs[k] for k in b] for b in batches(ctxs, self.batch_size, by_prefix)):
                logits, col = self._forward([list(c) for c in chunk], {len(c) - 1 for c in chunk})
                for r, c in enumerate(chunk):
                    lp = torch.log_softmax(logits[r, col[len(c) - 1]].float(), -1)
                    for i, j, tok in nexts[c]:
                        logprobs[i][j] = lp[tok].item()

            seqs = [m[2] for m in spans]
            for chunk in ([spans[k] for k in b] for b in batches(seqs, self.batch_size, by_prefix)):
                # Position p predicts token p+1: the last n tokens come from L-n-1 .. L-2.
                cols = [range(len(seq) - n - 1, len(seq) - 1) for _, _, seq, n in chunk]
                logits, col = self._forward([m[2] for m in chunk], {p for s in cols for p in s})
                for r, ((i, j, seq, n), span) in enumerate(zip(chunk, cols)):
                    rows = logits[r, [col[p] for p in span]].float()
                    target = torch.tensor(seq[len(seq) - n :], device=rows.device)
                    logprobs[i][j] = torch.log_softmax(rows, -1).gather(-1, target[:, None]).sum().item()

        return [LLOutput(logprobs=lp, num_tokens=n) for lp, n in zip(logprobs, counts)]

    # ---- async interface ----------------------------------------------
    # Rows are tokenized as they arrive (on the event loop, while a batch runs), so
    # the batcher groups them by their length in tokens: a length in characters
    # left 15% of MMLU's batch tokens as padding, tokens 2-3%. Rows that share
    # their first MIN_PREFIX tokens (few-shot examples) are one group.
    def _run(self, key: tuple, items: list):
        if key[0] == "gen":
            return self._generate(items, key[1])
        return self._loglikelihood(items)

    async def generate(self, prompt: Prompt, params: GenParams) -> GenOutput:
        params = _norm(params)
        ids = self._gen_ids(prompt, params)
        return await self.batcher.submit(("gen", params), ids, len(ids), tuple(ids[:MIN_PREFIX]))

    async def loglikelihood(self, context: Prompt, continuations: list[str]) -> LLOutput:
        ctx, cids = self._ll_ids(context, list(continuations))
        size = len(ctx) + max(map(len, cids), default=0)
        return await self.batcher.submit(("ll",), (ctx, cids), size, tuple(ctx[:MIN_PREFIX]))

    async def close(self) -> None:
        await self.batcher.aclose()
        self.model = None
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
