"""A short run really extends the context: 10 steps at 4x the fixture's window with YaRN lower the perplexity of
the last quarter of 1024-token windows on the held-out book well below the untrained extension's."""

import json

import pytest

from ctxext.data import strip_gutenberg
from ctxext.fixtures import HELD_OUT_BOOK, TRAIN_BOOKS, books_dir
from ctxext.train import TrainConfig, train


def held_out_windows(path, n: int, chars: int = 6000):
    """The held-out book as n JSONL documents of `chars` characters (> 1024 tokens each): n windows for ppl."""
    text = strip_gutenberg((books_dir() / HELD_OUT_BOOK).read_text(encoding="utf-8"))
    path.write_text("".join(json.dumps({"text": text[i * chars:(i + 1) * chars]}) + "\n" for i in range(n)))
    return str(path)


@pytest.mark.slow
def test_short_run_improves_the_long_context_loss(tmp_path):
    cfg = TrainConfig(model="tiny-rope", scaling="yarn:factor=4", seq_len=1024, steps=10, batch_tokens=2048,
                      lr=1e-3, warmup=3, grad_checkpointing=False, data=tuple(str(books_dir() / b) for b in TRAIN_BOOKS),
                      eval_data=(held_out_windows(tmp_path / "held_out.jsonl", 8),), eval_docs=8, passkey_trials=1,
                      out=str(tmp_path / "run"))
    train(cfg, progress=False)
    ev = json.loads((tmp_path / "run" / "results.json").read_text())["training"]["evaluations"]
    before, after = ev[0], ev[-1]
    assert (before["step"], after["step"]) == (0, 10)
    assert after["ppl_last_quarter"] < 0.9 * before["ppl_last_quarter"], ev
