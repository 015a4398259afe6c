"""ctxext's inv_freq and attention factor equal transformers' own ROPE_INIT_FUNCTIONS, full vectors, rtol 1e-6."""

import itertools

import numpy as np
import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from ctxext.scaling import RopeShape, parse_spec, resolve_rope

HEAD_DIMS = (32, 64, 96, 128)
BASES = (1e4, 1e5, 5e5, 1e6)
FACTORS = (1.5, 2, 4, 8, 16)
GRID = list(itertools.product(HEAD_DIMS, BASES, FACTORS))
L = 4096


def hf_freqs(rope_type: str, d: int, base: float, max_pos: int, params: dict, seq_len=None):
    cfg = LlamaConfig(hidden_size=2 * d, num_attention_heads=2, head_dim=d, num_key_value_heads=2,
                      max_position_embeddings=max_pos,
                      rope_parameters={"rope_type": rope_type, "rope_theta": base, **params})
    inv, m = ROPE_INIT_FUNCTIONS[rope_type](cfg, "cpu", seq_len=seq_len)
    return inv.double().numpy(), float(m)


def ours(spec: str, d: int, base: float, seq_len=None, original=L):
    f = resolve_rope(parse_spec(spec), RopeShape(d, base, original), seq_len)
    return f.inv_freq, f.attention_factor


def check(ref, got):
    (ri, rm), (gi, gm) = ref, got
    assert gi.shape == ri.shape
    np.testing.assert_allclose(gi, ri, rtol=1e-6, atol=0)
    assert gm == pytest.approx(rm, rel=1e-6)


@pytest.mark.parametrize("d,base,s", GRID)
def test_linear(d, base, s):
    check(hf_freqs("linear", d, base, L, {"factor": s}), ours(f"linear:factor={s}", d, base))


@pytest.mark.parametrize("d,base,s", GRID)
def test_dynamic_ntk_at_several_lengths(d, base, s):
    for t in (None, L // 2, L, L + 1, 3 * L, int(s * L) + 7):
        ref = hf_freqs("dynamic", d, base, L, {"factor": s}, seq_len=t)
        check(ref, ours(f"dynamic-ntk:factor={s}", d, base, seq_len=t))


YARN_VARIANTS = [
    ({}, ""),
    ({"beta_fast": 16.0, "beta_slow": 2.0}, ",beta_fast=16,beta_slow=2"),
    ({"attention_factor": 1.3}, ",attention_factor=1.3"),
    ({"mscale": 0.707, "mscale_all_dim": 1.0}, ",mscale=0.707,mscale_all_dim=1"),
    ({"truncate": False}, ",truncate=false"),
]


@pytest.mark.parametrize("d,base,s", GRID)
@pytest.mark.parametrize("variant", range(len(YARN_VARIANTS)))
def test_yarn(d, base, s, variant):
    extra, text = YARN_VARIANTS[variant]
    params = {"factor": s, "original_max_position_embeddings": L, **extra}
    ref = hf_freqs("yarn", d, base, int(L * s), params)
    check(ref, ours(f"yarn:factor={s}{text}", d, base))


@pytest.mark.parametrize("d,base,s", GRID)
def test_longrope_long_and_short(d, base, s):
    rng = np.random.default_rng(d + int(s * 10))
    n = d // 2
    long = np.sort(rng.uniform(1.0, 1.0 + s, n))
    short = np.sort(rng.uniform(1.0, 1.2, n))
    params = {"factor": s, "original_max_position_embeddings": L,
              "long_factor": long.tolist(), "short_factor": short.tolist()}
    spec = (f"longrope:factor={s},long_factor=[{','.join((repr(float(x)) for x in long))}],"
            f"short_factor=[{','.join((repr(float(x)) for x in short))}]")
    for t in (L + 1, 2 * L, L, 100):
        check(hf_freqs("longrope", d, base, int(L * s), params, seq_len=t), ours(spec, d, base, seq_len=t))


@pytest.mark.parametrize("d,base,s", GRID)
@pytest.mark.parametrize("low,high,orig", [(1.0, 4.0, 8192), (2.0, 8.0, 4096)])
def test_llama3(d, base, s, low, high, orig):
    params = {"factor": s, "low_freq_factor": low, "high_freq_factor": high,
              "original_max_position_embeddings": orig}
    ref = hf_freqs("llama3", d, base, int(orig * s), params)
    got = ours(f"llama3:factor={s},low_freq_factor={low},high_freq_factor={high}", d, base, original=orig)
    check(ref, got)


def test_default_is_the_rotary_embeddings_own_vector_bit_for_bit():
    """θ is computed as the models compute it (torch's float32 pow): a float64 pow rounded to float32 was an ulp
    off on some pairs for most shapes, and an ulp of a slow pair moved an ntk export's logits by 2e-3 at 16k."""
    from transformers import Phi3Config
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

    for d, base in itertools.product(HEAD_DIMS + (80, 256), BASES + (20221.3, 40890.7, 925387.3, 2815042.0)):
        cfg = LlamaConfig(hidden_size=2 * d, num_attention_heads=2, head_dim=d, max_position_embeddings=L,
                          rope_parameters={"rope_type": "default", "rope_theta": base})
        ref = LlamaRotaryEmbedding(cfg).inv_freq.double().numpy()
        np.testing.assert_array_equal(ours("default", d, base)[0], ref, err_msg=f"d={d} base={base}")
    for base in (1e4, 40890.7):  # partial rotary: 48 of 96 channels (Phi-3 style)
        cfg = Phi3Config(hidden_size=192, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=L,
                         rope_parameters={"rope_type": "default", "rope_theta": base, "partial_rotary_factor": 0.5})
        np.testing.assert_array_equal(ours("default", 48, base)[0], Phi3RotaryEmbedding(cfg).inv_freq.double().numpy())


def test_grid_really_covers_the_issue_list():
    assert {32, 64, 96, 128} <= set(HEAD_DIMS) and {1.5, 2, 4, 8, 16} <= set(FACTORS) and len(BASES) >= 3
    assert torch.float32 == torch.get_default_dtype()
