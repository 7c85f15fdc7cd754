"""The token rules every engine shares, so HF, vLLM and LMDeploy agree token
for token: where the model's files are, the context/continuation boundary
(lm-eval's rule: trailing whitespace of a plain context moves to the
continuation), which requests score a choice's log-likelihood, and where a
generation ends (first eos, first stop string)."""
from __future__ import annotations

from dataclasses import dataclass, field

from raveval.engines.base import GenParams, Prompt


def resolve_model_path(path: str) -> str:
    """The folder to load: `builtin:tiny-llama` is built (once, cached) here."""
    from raveval.engines.tiny_model import BUILTIN_TINY, build_tiny_model

    return str(build_tiny_model()) if path == BUILTIN_TINY else path


def split_context(context: str) -> tuple[str, str]:
    """A plain context without its trailing whitespace, and that whitespace,
    which is put in front of each continuation."""
    body = context.rstrip()
    return body, context[len(body):]


def first_stop(text: str, stops, start: int = 0) -> int:
    """Index of the earliest stop string in text[start:] onwards, or -1."""
    cuts = [c for c in (text.find(s, start) for s in stops if s) if c >= 0]
    return min(cuts) if cuts else -1


def cut_at_stop(text: str, stops) -> str:
    """The text before its first stop string (the stop string is not kept)."""
    cut = first_stop(text, stops)
    return text[:cut] if cut >= 0 else text


@dataclass
class LLRequest:
    """One scoring request of a log-likelihood call. With n > 0: score the last
    n tokens of `ids` (one continuation, slots [(j, None)]). With n == 0: score
    each of `targets` as the token after `ids`; the one-token continuations of
    a context share this request (one prefill for MMLU's " A".." D"), and slot
    (j, token) says which continuation gets which target."""
    ids: list[int]
    n: int = 0
    targets: list[int] = field(default_factory=list)
    slots: list[tuple[int, int | None]] = field(default_factory=list)


def plan_ll(ctx: list[int], conts: list[list[int]], max_len: int, share: bool = True) -> list[LLRequest]:
    """The requests that score `conts` after `ctx`: each sequence context +
    continuation keeps its last max_len tokens (truncated on the left), and of
    those, the continuation's tokens are scored (all but the first kept token
    when the continuation alone is longer). An empty continuation scores 0 and
    needs no request. With `share`, one-token continuations share one request."""
    reqs: list[LLRequest] = []
    shared: LLRequest | None = None
    for j, cids in enumerate(conts):
        seq = (ctx + cids)[-max_len:]
        n = min(len(cids), len(seq) - 1)
        if n <= 0:
            continue
        if share and n == 1:
            if shared is None:
                shared = LLRequest(seq[:-1])
                reqs.append(shared)
            if seq[-1] not in shared.targets:
                shared.targets.append(seq[-1])
            shared.slots.append((j, seq[-1]))
        else:
            reqs.append(LLRequest(seq, n=n, slots=[(j, None)]))
    return reqs


class Tokens:
    """Prompt, context and continuation token ids with the model's Hugging Face
    tokenizer, and the end of a generation."""

    def __init__(self, path: str):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path)
        gen_eos = None
        try:
            from transformers import GenerationConfig

            gen_eos = GenerationConfig.from_pretrained(path).eos_token_id
        except Exception:  # no generation_config.json
            pass
        if gen_eos is None:
            gen_eos = self.tok.eos_token_id
        self.eos_ids = set(gen_eos if isinstance(gen_eos, list) else [gen_eos]) - {None}
        pad = self.tok.pad_token_id
        if pad is None:
            pad = min(self.eos_ids) if self.eos_ids else 0
        self.pad_id = pad
        bos = self.tok.bos_token_id
        self.prefix_id = bos if bos is not None else (min(self.eos_ids) if self.eos_ids else pad)

    def prompt(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tok(prompt).input_ids
        text = self.tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        return self.tok(text, add_special_tokens=False).input_ids

    def context(self, context: Prompt) -> tuple[list[int], str]:
        """Context ids (never empty), and the whitespace that moves to the continuations;
        a chat context ends with the generation prompt, which is the boundary."""
        if not isinstance(context, str):
            return self.prompt(context), ""
        body, ws = split_context(context)
        return (self.tok(body).input_ids or [self.prefix_id]), ws

    def continuations(self, ws: str, conts: list[str]) -> list[list[int]]:
        return [self.tok(ws + c, add_special_tokens=False).input_ids for c in conts]

    def finish(self, token_ids, params: GenParams, drop_pad: bool = False) -> tuple[str, int]:
        """Text and token count of a generation: up to the first eos (with
        `drop_pad`, also without the pad filler a batch puts after a row that
        stopped early), cut at the first stop string."""
        toks = list(token_ids)
        n = len(toks)
        for k, t in enumerate(toks):
            if t in self.eos_ids:
                n = k
                break
        while drop_pad and n and toks[n - 1] == self.pad_id:
            n -= 1
        return cut_at_stop(self.tok.decode(toks[:n], skip_special_tokens=True), params.stop), n
