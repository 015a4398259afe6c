"""Training parts that need no training run: packing, row order, schedule, memory estimate, mixed-window spec,
LoRA, configuration errors."""

import importlib.util
import math

import numpy as np
import pytest
import torch

from ctxext.errors import CtxextError
from ctxext.models.tiny import tiny_model
from ctxext.scaling import RopeShape, factors_of, parse_spec, resolve_rope
from ctxext.train.config import TrainConfig
from ctxext.train.data import RowOrder, is_short_step, pack
from ctxext.train.lora import add_lora, count_trainable, merge_lora
from ctxext.train.memory import GIB, MemoryEstimate, check_fits, estimate
from ctxext.train.optim import lr_factor, warmup_warning
from ctxext.train.setup import lora_params, mixed_window_spec


def test_pack_rows_and_boundaries():
    docs = [np.arange(5), np.arange(100, 103), np.arange(200, 210)]
    rows = pack(docs, seq_len=6, eos_id=0)  # 6 + 4 + 11 = 21 tokens -> 3 rows, 3 tokens dropped
    assert rows.n_rows == 3 and rows.n_documents == 3
    assert rows.ids.ravel().tolist() == [0, 1, 2, 3, 4, 0, 100, 101, 102, 0, 200, 201, 202, 203, 204, 205, 206, 207]
    assert np.flatnonzero(rows.starts.ravel()).tolist() == [0, 6, 10]
    with pytest.raises(CtxextError, match="fewer than one sequence"):
        pack([np.arange(3)], seq_len=10, eos_id=None)


def test_row_order_is_a_seeded_permutation_per_epoch():
    order = RowOrder(7, seed=3)
    first = order.rows(0, 7)
    assert sorted(first.tolist()) == list(range(7))
    again = RowOrder(7, seed=3)
    assert again.rows(5, 6).tolist() == order.rows(5, 6).tolist()  # position alone decides (exact resume)
    assert sorted(order.rows(7, 7).tolist()) == list(range(7))  # next epoch: another permutation
    assert order.rows(7, 7).tolist() != first.tolist()


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
def test_short_steps_spread_evenly(fraction):
    flags = [is_short_step(i, fraction) for i in range(100)]
    assert sum(flags) == round(100 * fraction)
    assert sum(flags[:20]) == round(20 * fraction)


def test_schedule_warmup_then_decay():
    assert lr_factor(0, 100, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, 100, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 100, 10, "linear", 0.0) == pytest.approx(0.5)
    assert lr_factor(99, 100, 0, "constant", 0.1) == 1.0
    # Hugging Face's cosine schedule: min_ratio is reached at step == total, one step after the last one runs
    assert lr_factor(99, 100, 10, "cosine", 0.1) > 0.1


def test_warmup_covering_the_run_is_named():
    assert warmup_warning(100, 10, 2e-5) is None
    assert warmup_warning(6, 6, 1e-3) == ("--warmup 6 is not below --steps 6: the lr rises to 0.001 (--lr 0.001) "
                                          "at the last step and never decays")
    assert "rises to 0.0005 (--lr 0.001)" in warmup_warning(5, 10, 1e-3)


def test_memory_estimate_terms():
    kw = dict(n_params=135_000_000, n_trainable=135_000_000, n_layers=30, hidden=576, intermediate=1536, n_heads=9,
              vocab=49152, rows=1, seq_len=16384, bf16=False, attn="sdpa", loss_chunk=1024)
    full = estimate(grad_checkpointing=True, **kw)
    assert full.weights == 4 * 135_000_000 and full.optimizer == 8 * 135_000_000
    assert full.loss == 3 * 1024 * 49152 * 4 + 2 * 16384 * 576 * 4  # one chunk of logits, never 16k × 49k
    assert full.attention == 0  # SDPA trains per document (doc_attention): no T×T mask, no scores
    eager = estimate(grad_checkpointing=True, **{**kw, "attn": "eager"})
    # the probabilities, their gradient and the scores' gradient, plus the packed mask
    assert eager.attention == 9 * 16384**2 * 4 * 3 + 16384**2
    no_ckpt = estimate(grad_checkpointing=False, **kw)
    # 9H + 4I floats per token and layer: what autograd was measured to keep for SmolLM2 (43.8 KiB/token/layer)
    assert no_ckpt.activations == 31 * 16384 * (9 * 576 + 4 * 1536) * 4
    assert full.activations == 30 * 16384 * 576 * 4 + 2 * 16384 * (9 * 576 + 4 * 1536) * 4
    assert no_ckpt.activations > 8 * full.activations
    sharded = estimate(grad_checkpointing=True, shards=8, **kw)
    assert sharded.optimizer == full.optimizer // 8
    # CPU with ctxext's malloc setting: nothing retained, one recomputed layer, the smaller process overhead
    tuned = estimate(grad_checkpointing=True, malloc_tuned=True, **kw)
    assert tuned.allocator == 0 and full.allocator == (full.activations + full.loss) // 2
    assert tuned.activations == 30 * 16384 * 576 * 4 + 16384 * (9 * 576 + 4 * 1536) * 4
    assert tuned.overhead == 400 * 2**20 < full.overhead
    assert estimate(grad_checkpointing=True, malloc_tuned=True, **{**kw, "bf16": True}) == \
        estimate(grad_checkpointing=True, **{**kw, "bf16": True})  # a GPU run: the flag does not apply
    huge = MemoryEstimate(weights=10**15, gradients=0, optimizer=0, activations=0, attention=0, loss=0, allocator=0)
    with pytest.raises(CtxextError, match=r"needs about .* GiB .* free"):
        check_fits(huge, "cpu", "training")
    assert huge.total / GIB > 1e5


def test_lora_params_formula_matches_peft():
    model = tiny_model("llama")
    before = sum(p.numel() for p in model.parameters())
    add_lora(model, rank=4, alpha=8, targets=("q_proj", "k_proj", "v_proj", "o_proj"), seed=0)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert lora == lora_params(model.config.to_dict(), ("q_proj", "k_proj", "v_proj", "o_proj"), 4)
    trainable, total = count_trainable(model)
    assert total == before + lora
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("embed_tokens" in n for n in names) and any("norm" in n for n in names)  # LongLoRA
    assert not any(n.endswith("q_proj.base_layer.weight") for n in names)


def test_lora_merge_keeps_logits():
    model = tiny_model("llama")
    add_lora(model, rank=4, alpha=8, targets=("q_proj", "v_proj"), seed=0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)  # peft starts B at zero; make the adapters matter
    ids = torch.randint(3, 96, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids).logits
        merge_lora(model)
        after = model(ids).logits
    assert not any("lora_" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


SHAPE = RopeShape(32, 1e4, 256)


@pytest.mark.parametrize("text", ["linear:factor=4", "yarn:factor=4", "abf:base=313145"])
def test_mixed_window_spec_is_longrope_with_the_same_long_frequencies(text):
    spec = parse_spec(text)
    mixed = mixed_window_spec(spec, SHAPE, 1024)
    assert mixed.method == "longrope" and mixed.params.factor == 4
    long, short = resolve_rope(mixed, SHAPE, 1024), resolve_rope(mixed, SHAPE, 256)
    want = resolve_rope(spec, SHAPE)
    np.testing.assert_allclose(long.inv_freq, want.inv_freq, rtol=1e-12)
    assert long.attention_factor == pytest.approx(want.attention_factor)
    np.testing.assert_allclose(short.inv_freq, SHAPE.theta(), rtol=1e-12)  # original RoPE inside the window
    np.testing.assert_allclose(factors_of(mixed, SHAPE, 1024), factors_of(spec, SHAPE), rtol=1e-12)


def test_mixed_window_refusals():
    with pytest.raises(CtxextError, match="not longer than the original window"):
        mixed_window_spec(parse_spec("linear:factor=4"), SHAPE, 256)
    with pytest.raises(CtxextError, match="static method"):
        mixed_window_spec(parse_spec("dynamic-ntk:factor=4"), SHAPE, 1024)


def test_config_errors_name_the_option():
    base = dict(model="tiny-rope", scaling="linear:factor=4", data=("x",), seq_len=1024, steps=10, out="o")
    with pytest.raises(CtxextError, match="--batch-tokens must be a multiple of --seq-len"):
        TrainConfig(**base, batch_tokens=1500)
    with pytest.raises(CtxextError, match="--schedule must be one of"):
        TrainConfig(**base, schedule="step")
    with pytest.raises(CtxextError, match="not divisible by the 3 processes"):
        TrainConfig(**base, batch_tokens=4096).rows_per_step(3)
    if importlib.util.find_spec("flash_attn") is None:  # this machine: the refusal instead of an ImportError
        with pytest.raises(CtxextError, match="--attn flash_attention_2 needs the flash-attn package"):
            TrainConfig(**base, attn="flash_attention_2")
    assert TrainConfig(**base).peak_lr == 2e-5 and TrainConfig(**base, lora=True).peak_lr == 2e-4
    assert math.isclose(TrainConfig(**base, lr=1e-3).peak_lr, 1e-3)


def test_last_quarter_figure_for_lengths_not_divisible_by_four():
    """Evaluation buckets are a quarter rounded up, so the last one ends at --seq-len and is found (with L // 4 a
    1,026-token run got a fifth, 2-token bucket and no last-quarter figure)."""
    from ctxext.train.evaluate import headline, quarter

    for L in (1024, 1026, 1027):
        w = quarter(L)
        edges = list(range(0, L, w)) + [L]
        assert len(edges) == 5  # four buckets
        recs = [{"task": "ppl", "metric": "ppl", "value": float(i), "bucket": [a, b]}
                for i, (a, b) in enumerate(zip(edges[:-1], edges[1:]))]
        assert headline(recs, L)["ppl_last_quarter"] == 3.0


def test_summary_names_the_export_check_and_a_run_without_evaluation():
    """summary.md left the export verification out (a dict) and printed an empty table under --no-eval."""
    from ctxext.train.report import summary_markdown

    meta = {"config": {"model": "tiny-rope", "seq_len": 512}, "spec": "dynamic-ntk:factor=2", "command": "ctxext train"}
    v = {"tokens": 200, "max_abs_logit_diff": 0.0, "passed": True,
         "past_window": {"same": False, "max_abs_logit_diff": 2.5, "why": "per forward vs per position"}}
    text = summary_markdown(meta, [], [], {"final_loss": 3.2, "export_verification": v}, [])
    assert ("- final/ loaded by stock transformers: max |logit diff| 0 over 200 tokens (passed); past the window 2.5 "
            "(per forward vs per position)") in text
    assert "## Evaluation at the training length\n\nnone (--no-eval)" in text and "| step | passkey" not in text


@pytest.mark.parametrize("text,max_pos", [("abf:base=40000", 1024), ("default", 1024), ("yarn:factor=4", 1024),
                                          ("linear:factor=4", 256)])
def test_a_default_rope_trained_past_its_window_exports_the_trained_length(text, max_pos):
    """abf (or default) trained at 1,024 on a 256-token model: DIR/final says 1,024 (vLLM serves at most
    max_position_embeddings tokens of a default rope); ropes with a factor keep the length their stock form sets."""
    from ctxext.train.setup import plan_run

    cfg = TrainConfig(model="tiny-rope", scaling=text, data=("-",), seq_len=1024, steps=2, out="-")
    export = plan_run(cfg, 1, False, 1).export
    assert export.max_position_embeddings == max_pos and export.original_len == 256


def test_weight_decay_shrinks_matrices_only_and_skips_frozen_weights():
    """--weight-decay: every trainable matrix decays by lr·wd per step (AdamW's decoupled form), norms and other 1-D
    parameters never do, and LoRA's frozen base weights are not in the optimizer at all."""
    from ctxext.train.optim import make_optimizer, param_groups

    model = tiny_model("llama")
    groups = param_groups(model, 0.1)
    decayed = {id(p) for g in groups if g["weight_decay"] == 0.1 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.ndim >= 2), name
    norm = next(p for n, p in model.named_parameters() if "norm" in n)
    mat = model.model.layers[0].self_attn.q_proj.weight
    with torch.no_grad():
        norm.add_(0.5)  # away from 1, so a wrong decay of it would show
    before_norm, before_mat = norm.detach().clone(), mat.detach().clone()
    opt = make_optimizer(groups, lr=0.01)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # Adam's step is 0: only the decay moves anything
    opt.step()
    torch.testing.assert_close(mat.detach(), before_mat * (1 - 0.01 * 0.1), rtol=1e-6, atol=0)
    torch.testing.assert_close(norm.detach(), before_norm, rtol=0, atol=0)

    lora_model = add_lora(tiny_model("llama"), rank=4, alpha=8, targets=("q_proj",), seed=0)
    in_opt = {id(p) for g in param_groups(lora_model, 0.1) for p in g["params"]}
    frozen = [n for n, p in lora_model.named_parameters() if not p.requires_grad]
    assert frozen and all(id(p) not in in_opt for n, p in lora_model.named_parameters() if not p.requires_grad)
    assert any("lora_" in n for n, p in lora_model.named_parameters() if id(p) in in_opt)
