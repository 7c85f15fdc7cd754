"""Token ids of prompts, contexts and continuations: the one set of rules every
engine uses, so engines agree token for token (lm-eval's boundary rule:
trailing whitespace of a plain context moves to the continuation)."""
from __future__ import annotations

from raveval.engines.base import GenParams, Prompt


class Tokens:
    """Prompt, context and continuation token ids, and the end of a generation."""

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
        if not isinstance(context, str):
            return self.prompt(context), ""
        n = len(context) - len(context.rstrip())
        ws = context[len(context) - n:] if n else ""
        ids = self.tok(context[: len(context) - n]).input_ids
        return (ids or [self.prefix_id]), ws

    def continuations(self, ws: str, conts: list[str]) -> list[list[int]]:
        return [self.tok(ws + c, add_special_tokens=False).input_ids for c in conts]

    def finish(self, token_ids, params: GenParams) -> tuple[str, int]:
        """Text and token count of a generation, as HFEngine._finish: up to the first eos."""
        toks = list(token_ids)
        n = len(toks)
        for k, t in enumerate(toks):
            if t in self.eos_ids:
                n = k
                break
        text = self.tok.decode(toks[:n], skip_special_tokens=True)
        cuts = [c for c in (text.find(s) for s in params.stop if s) if c >= 0]
        if cuts:
            text = text[: min(cuts)]
        return text, n


# ---- the engine ------------------------------------------------------------
