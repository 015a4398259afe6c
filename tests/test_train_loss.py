"""The chunked loss equals transformers' own loss and gradients; packed documents do not see each other."""

import numpy as np
import pytest
import torch

from ctxext.models.tiny import tiny_model
from ctxext.train.data import IGNORE, model_inputs, pack
from ctxext.train.loss import LossModel


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("chunk", [7, 1024])
def test_chunked_loss_and_grads_equal_hf(checkpointing, chunk):
    model = tiny_model("llama").train()
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    ids = torch.randint(3, 96, (2, 50), generator=torch.Generator().manual_seed(0))
    ref = model(ids, labels=ids).loss
    ref.backward()
    want = _grads(model)
    model.zero_grad(set_to_none=True)

    batch = model_inputs(ids.numpy(), np.zeros(ids.shape, dtype=bool))
    total, n = LossModel(model, chunk=chunk)(**batch)
    (total / n).backward()
    got = _grads(model)
    assert int(n) == 2 * 49
    assert float((total / n).detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7, msg=k)


def test_packed_documents_are_independent():
    """Two documents packed in one row give the same summed loss as each document alone: positions restart
    and attention does not cross the boundary (transformers' packed-sequence mask from position_ids)."""
    model = tiny_model("llama").eval()
    rng = np.random.default_rng(0)
    a, b = rng.integers(3, 96, 30), rng.integers(3, 96, 33)
    rows = pack([a, b], seq_len=65, eos_id=2)  # a + EOS (31) then b + EOS (34) = 65 tokens
    assert rows.n_rows == 1 and rows.starts[0].nonzero()[0].tolist() == [0, 31]
    loss = LossModel(model, chunk=16)
    with torch.no_grad():
        packed, n_packed = loss(**model_inputs(rows.ids, rows.starts))
        alone = [loss(**model_inputs(np.append(d, 2)[None], np.eye(1, len(d) + 1, dtype=bool)))
                 for d in (a, b)]
    assert int(n_packed) == sum(int(n) for _, n in alone) == 30 + 33
    assert float(packed) == pytest.approx(sum(float(t) for t, _ in alone), rel=1e-5)


def test_flash_attention_gets_the_rows_of_a_forward_as_one_packed_row(monkeypatch):
    """Flash kernels split packed documents at position restarts only in a batch of one row (transformers'
    _flash_attention_forward), so LossModel hands them a forward's B rows as one row of B·T tokens: the decoder
    sees (1, 130) and 4 documents over 2 rows still score as each alone (shown on SDPA, which has no flash here)."""
    import ctxext.train.loss as loss_mod
    from ctxext.train.loss import splits_packed_rows_alone

    assert splits_packed_rows_alone(type("C", (), {"_attn_implementation": "flash_attention_2"})())
    assert not splits_packed_rows_alone(type("C", (), {"_attn_implementation": "sdpa"})())
    model = tiny_model("llama").eval()
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, 96, n) for n in (30, 33, 20, 43)]
    rows = pack(docs, seq_len=65, eos_id=2)
    assert rows.n_rows == 2 and rows.starts.sum() == 4
    loss = LossModel(model, chunk=16)
    shapes = []
    model.model.register_forward_pre_hook(lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)),
                                          with_kwargs=True)
    got = {}
    with torch.no_grad():
        alone = sum(float(loss(**model_inputs(np.append(d, 2)[None], np.eye(1, len(d) + 1, dtype=bool)))[0])
                    for d in docs)
        for flash in (True, False):
            monkeypatch.setattr(loss_mod, "splits_packed_rows_alone", lambda config, f=flash: f)
            got[flash] = float(loss(**model_inputs(rows.ids, rows.starts))[0])
    assert shapes[-2:] == [(1, 130), (2, 65)]
    assert got[True] == pytest.approx(alone, rel=1e-5) and got[False] == pytest.approx(alone, rel=1e-5)


def test_model_inputs_positions_and_labels():
    ids = np.arange(10, dtype=np.int32)[None]
    starts = np.zeros((1, 10), dtype=bool)
    starts[0, 4] = True
    b = model_inputs(ids, starts)
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5]
    assert b["labels"][0].tolist() == [1, 2, 3, IGNORE, 5, 6, 7, 8, 9, IGNORE]
    short = model_inputs(ids, starts, row_len=5)  # mixed window: rows re-cut, each starts at position 0
    assert short["input_ids"].shape == (2, 5)
    assert short["position_ids"].tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 3, 4]]
    assert short["labels"].tolist() == [[1, 2, 3, IGNORE, IGNORE], [6, 7, 8, 9, IGNORE]]
