"""The tiny model builder: deterministic, cached, atomic, loadable."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from raveval.engines import tiny_model
from raveval.engines.tiny_model import NAME, build_tiny_model

ROOT = Path(__file__).resolve().parents[1]


def _digests(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import torch

    # Two builds under different thread counts must still give the same bytes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = build_tiny_model(tmp_path_factory.mktemp("a"))
    finally:
        torch.set_num_threads(threads)
    b = build_tiny_model(tmp_path_factory.mktemp("b"))
    return a, b


def test_build_is_deterministic(built):
    a, b = built
    assert a.name == NAME and a.parent != b.parent
    da, db = _digests(a), _digests(b)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(da)
    assert da == db
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_second_call_uses_cache(built):
    a, _ = built
    before = (a / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(a.parent) == a
    assert (a / "model.safetensors").stat().st_mtime_ns == before
    # No temp folders left beside the target.
    assert [p.name for p in a.parent.iterdir()] == [NAME]


def test_lost_race_keeps_existing_target(tmp_path, monkeypatch):
    # Another process finishes first while we build: keep its folder, drop ours.
    def racing_build(out: Path):
        (out / "ours").write_text("x")
        (tmp_path / NAME).mkdir()
        (tmp_path / NAME / "theirs").write_text("y")

    monkeypatch.setattr(tiny_model, "_build", racing_build)
    target = build_tiny_model(tmp_path)
    assert sorted(p.name for p in target.iterdir()) == ["theirs"]
    assert [p.name for p in tmp_path.iterdir()] == [NAME]


def test_config_and_tokenizer(built):
    from transformers import AutoConfig, AutoTokenizer

    a, _ = built
    cfg = AutoConfig.from_pretrained(a)
    assert cfg.model_type == "llama"
    assert cfg.hidden_size // cfg.num_attention_heads == cfg.head_dim == 64
    assert not cfg.tie_word_embeddings
    tok = AutoTokenizer.from_pretrained(a)
    assert 3000 < len(tok) <= 4096 and len(tok) == cfg.vocab_size
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    text = "Answer: 42. 中国的首都是北京。 ∑ émoji 🙂"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text  # byte-level: lossless
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert chat == "<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    # Readable by older transformers (and vLLM) too: template inline, generic class.
    tc = json.loads((a / "tokenizer_config.json").read_text())
    assert tc["tokenizer_class"] == "PreTrainedTokenizerFast" and "chat_template" in tc


def test_cli_prints_path(built):
    a, _ = built
    out = subprocess.run(
        [sys.executable, "-m", "raveval.engines.tiny_model", "--cache-dir", str(a.parent)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == str(a)
