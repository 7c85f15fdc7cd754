"""Attention for grouped-query models on CPU, with the K/V heads as they are.

transformers' SDPA attention copies each K/V head once per query head it
serves whenever there is an attention mask (always, in a padded batch), then
calls torch's SDPA. On CPU, torch's SDPA takes the groups as they are
(`enable_gqa`): the same values, 3x faster at 16 rows x 700 cached tokens
here, and decoding spends most of its time in attention.
"""
from __future__ import annotations

NAME = "raveval_sdpa_gqa"


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if kwargs.get("position_bias") is not None or kwargs.get("cache") is not None:
        # A position bias or a paged cache: transformers' own SDPA handles those.
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    # As transformers' SDPA: causal only for a prefill without a mask; a single query
    # (decoding) attends to every cached key.
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = query.shape[2] > 1 and attention_mask is None and causal
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
        is_causal=causal, enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2).contiguous(), None


def use_on_cpu(model) -> bool:
    """Switch a CPU model that uses transformers' SDPA on grouped K/V heads to this
    attention; True if it did. Anything else (another attention, a GPU, a
    transformers without attention registries) is left as it is."""
    cfg = model.config
    heads, kv = getattr(cfg, "num_attention_heads", 0), getattr(cfg, "num_key_value_heads", None)
    if model.device.type != "cpu" or getattr(cfg, "_attn_implementation", None) != "sdpa" or not kv or kv == heads:
        return False
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:
        return False
    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the same masks as SDPA
    model.set_attn_implementation(NAME)
    return True
