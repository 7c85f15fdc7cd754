"""Build the project's own tiny Llama model (random weights, trained tokenizer).

Nothing can be downloaded, so tests, demos and benchmarks use this model. It
is built from local text only, deterministically (same bytes every build), and
saved with `save_pretrained` so transformers and vLLM both load it.

Bump `NAME` whenever anything here (corpus, sizes, template) changes: the
cache is keyed by that name only.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

from raveval.config import default_cache_dir

# A model config's `path` that names this model (engines.tokens.resolve_model_path builds it).
BUILTIN_TINY = "builtin:tiny-llama"
NAME = "tiny-llama-v1"
VOCAB_SIZE = 4096
SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
# ChatML; the generation prompt ends with "assistant\n" so the reply follows.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_lock = threading.Lock()
_CORPUS = Path(__file__).with_name("tiny_corpus.txt")


def _corpus_lines() -> list[str]:
    lines = _CORPUS.read_text(encoding="utf-8").splitlines()
    # Generated arithmetic so digits, operators and numbers get merges too.
    for a in range(0, 120, 7):
        for b in range(1, 60, 11):
            lines.append(f"{a} + {b} = {a + b}. {a} - {b} = {a - b}. {a} * {b} = {a * b}.")
            lines.append(f"计算：{a} 加 {b} 等于 {a + b}，{a} 乘以 {b} 等于 {a * b}。")
    return lines


def _train_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Byte-level: every string (Chinese included) encodes, no unknown tokens.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(), trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
        padding_side="left",
    )


def _build(out: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _train_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    config = LlamaConfig(
        vocab_size=len(tokenizer),  # no ids the tokenizer cannot decode
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA, so engines exercise that path
        head_dim=64,  # vLLM kernels want 64 (or 32 etc.)
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
        # Wider init than 0.02: peakier logits, fewer near-ties in greedy decoding,
        # so batched and unbatched runs pick the same tokens.
        initializer_range=0.1,
    )
    with torch.random.fork_rng(devices=[]):  # don't disturb the caller's RNG
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).to(torch.float32).eval()
    # Chat replies end with <|im_end|>; plain text with </s>.
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<s>"],
        eos_token_id=[ids["</s>"], ids["<|im_end|>"]],
        pad_token_id=ids["<pad>"],
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # Rewrite the tokenizer config in the format transformers 4.x and 5.x (and
    # so vLLM, whatever transformers it pins) both read: generic fast class,
    # template inline rather than in chat_template.jinja.
    (out / "chat_template.jinja").unlink(missing_ok=True)
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    for f in out.iterdir():
        f.chmod(0o644)  # some writers create 0600 files; the cache may be shared


def build_tiny_model(cache_dir: str | Path | None = None) -> Path:
    """Return the folder of the tiny model, building it on first use."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / NAME
    if target.is_dir():
        return target
    with _lock:  # threads share torch's RNG: one build at a time per process
        if target.is_dir():
            return target
        root.mkdir(parents=True, exist_ok=True)
        _build_into(root, target)
    return target


def _build_into(root: Path, target: Path) -> None:
    # Build beside the target and rename: the rename is atomic, so a racing
    # process (another Ray replica) sees either nothing or a complete folder.
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}.", dir=root))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
        _build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # a real failure, not a lost race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Build the tiny test model and print its folder.")
    p.add_argument("--cache-dir", default=None, help="default: $RAVEVAL_CACHE or ~/.cache/raveval")
    args = p.parse_args(argv)
    print(build_tiny_model(args.cache_dir))


if __name__ == "__main__":
    main()
