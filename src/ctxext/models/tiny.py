"""Tiny random models from configs (Llama, Mistral, Qwen2, Qwen3, Phi3, Cohere, GPT-NeoX, DeepSeek-V2/V3, BLOOM) for
tests and smoke runs.

hidden 64, 2 layers, 4 heads (2 KV heads), head_dim 16, vocab 96, window 64: "past the window" is cheap.
`init_std` is larger than transformers' 0.02 so attention is sharp enough for position changes to show.
"""

from __future__ import annotations

from typing import Any

import torch

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "phi3", "cohere", "gpt_neox", "deepseek_v2", "deepseek_v3", "bloom")
WINDOW = 64


def tiny_config(arch: str, **overrides: Any):
    """The tiny config of `arch`, `overrides` passed to its constructor (set afterwards, settings that derive others,
    such as Qwen2's use_sliding_window and its layer types, did not take effect)."""
    import transformers as tf

    rope = {"rope_type": "default", "rope_theta": 10000.0}
    common = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=WINDOW, tie_word_embeddings=False,
                  initializer_range=0.1, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "llama":
        cls, kw = tf.LlamaConfig, dict(common, head_dim=16, rope_parameters=rope)
    elif arch == "mistral":
        cls, kw = tf.MistralConfig, dict(common, head_dim=16, rope_parameters=rope, sliding_window=None)
    elif arch == "qwen2":
        cls, kw = tf.Qwen2Config, dict(common, rope_parameters=rope)
    elif arch == "qwen3":
        cls, kw = tf.Qwen3Config, dict(common, head_dim=16, rope_parameters=rope)
    elif arch == "phi3":  # partial rotary: 8 of 16 channels per head rotate
        cls, kw = tf.Phi3Config, dict(common, rope_parameters={**rope, "partial_rotary_factor": 0.5},
                                      original_max_position_embeddings=WINDOW)
    elif arch == "cohere":  # rotates adjacent channels: its cos/sin tables are interleaved, not two halves
        cls, kw = tf.CohereConfig, dict(common, rope_parameters=rope)
    elif arch == "gpt_neox":  # partial rotary; 4.x configs name it rotary_pct and the base rotary_emb_base
        cls, kw = tf.GPTNeoXConfig, dict({k: v for k, v in common.items() if k != "num_key_value_heads"},
                                         rope_parameters={**rope, "partial_rotary_factor": 0.5})
    elif arch in ("deepseek_v2", "deepseek_v3"):  # latent attention: 8 of each head's 24 query-key channels rotate
        mla = dict(common, num_key_value_heads=4, moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2,
                   n_shared_experts=1, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8,
                   qk_nope_head_dim=16, v_head_dim=16, rope_parameters=rope)
        if arch == "deepseek_v3":
            cls, kw = tf.DeepseekV3Config, dict(mla, n_group=1, topk_group=1)
        else:
            cls, kw = tf.DeepseekV2Config, mla
    elif arch == "bloom":
        cls, kw = tf.BloomConfig, dict(vocab_size=96, hidden_size=64, n_layer=2, n_head=4, initializer_range=0.1,
                                       seq_length=WINDOW, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    else:
        raise ValueError(f"unknown tiny arch {arch!r}; choose from {ARCHS}")
    return cls(**{**kw, **overrides})


def tiny_model(arch: str, seed: int = 0, attn: str = "sdpa", **overrides: Any):
    """A random float32 model in eval mode."""
    from transformers import AutoModelForCausalLM

    if arch == "bloom" and attn == "sdpa":
        attn = "eager"  # BLOOM has no SDPA path in transformers
    cfg = tiny_config(arch, **overrides)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation=attn).eval()
