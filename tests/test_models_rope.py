"""`rope.rotate` with half tables is transformers' rotation with full tables, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from ctxext.models.rope import TorchFreqs, cos_sin, half_tables, rotate
from ctxext.scaling import RopeFreqs, RopeShape


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rotary_dim,head_dim", [(64, 64), (16, 32)])
@pytest.mark.parametrize("attention_factor,start_tokens", [(1.0, 0), (1.2079, 0), (1.1547, 4)])
def test_rotate_is_transformers_rotation_bit_for_bit(dtype, rotary_dim, head_dim, attention_factor, start_tokens):
    theta = RopeShape(rotary_dim, 1e5, 8192).theta()
    f = TorchFreqs.of(RopeFreqs(theta / np.linspace(1, 8, theta.size), attention_factor, start_tokens), theta)
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, 300, head_dim, generator=g).mul(4).to(dtype) for _ in range(2))
    pos = torch.stack([torch.arange(300), torch.arange(300) * 37 + 11])  # past the window, two rows

    cos, sin = cos_sin(pos, f, dtype)
    q_rd, k_rd = q[..., :rotary_dim], k[..., :rotary_dim]  # transformers' partial-rotary split (Phi3)
    q_ref, k_ref = apply_rotary_pos_emb(q_rd, k_rd, cos, sin)
    q_ref, k_ref = (torch.cat([r, x[..., rotary_dim:]], -1) for r, x in ((q_ref, q), (k_ref, k)))

    ch, sh = half_tables(pos, f, dtype)
    assert ch.shape == (2, 300, rotary_dim // 2)
    assert torch.equal(rotate(q, ch, sh), q_ref) and torch.equal(rotate(k, ch, sh), k_ref)
    assert torch.equal(torch.cat((ch, ch), -1), cos) and torch.equal(torch.cat((sh, sh), -1), sin)
