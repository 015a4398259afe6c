"""The eval progress bar moves during one long forward (attention-layer hooks, provisional work) and ends where the
tasks' own reports put it; results with the bar on equal results with it off."""

from __future__ import annotations

import numpy as np
import re

import pytest
import torch

from ctxext.evals import run_eval
from ctxext.evals.cost import ModelCost
from ctxext.evals.progress import WorkBar, layer_hooks
from ctxext.evals.scoring import extend, hidden_states, new_cache
from ctxext.models import load_model

pytestmark = pytest.mark.usefixtures("one_thread")


class FakeBar:
    def __init__(self, total: float):
        self.total, self.n, self.shown = total, 0.0, []

    def update(self, d: float) -> None:
        self.n += d
        self.shown.append(self.n)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_model("tiny-rope")


def test_layers_report_each_forward_with_its_cached_keys(tiny):
    seen = []
    ids = np.arange(10, 310)
    with torch.inference_mode(), layer_hooks(tiny.model, lambda *a: seen.append(a)) as n:
        assert n == tiny.info.n_layers
        hidden_states(tiny.model, ids)
        assert seen == [(1, 300, 0)] * n
        seen.clear()
        extend(tiny.model, new_cache(tiny.model), ids, chunk=200)  # two calls: 200 tokens, then 100 after them
        assert seen == [(1, 200, 0)] * n + [(1, 100, 200)] * n
    seen.clear()
    hidden_states(tiny.model, ids)  # hooks removed on exit
    assert seen == []


def test_work_bar_shows_a_forward_in_progress_and_the_tasks_figure_replaces_it(tiny):
    cost = ModelCost.of(tiny.info)
    rate = cost.flops(1000) / 10.0  # 1,000 tokens = 10 estimated seconds
    bar = FakeBar(total=30.0)
    work = WorkBar(bar, rate, cost, n_layers=tiny.info.n_layers)
    for _ in range(tiny.info.n_layers):  # one 1,000-token forward, layer by layer
        work.layer(1, 1000, 0)
    assert bar.n == pytest.approx(10.0) and len(bar.shown) == tiny.info.n_layers
    assert 0 < bar.shown[0] < bar.shown[-1]  # it moved before the forward was over
    work.done(cost.flops(1000, scored=1000))  # the task's report: the forward plus its LM head
    assert bar.n == pytest.approx(cost.flops(1000, scored=1000) / rate) and work.pending == 0
    for _ in range(10 * tiny.info.n_layers):  # provisional work never passes the total
        work.layer(1, 1000, 0)
    assert bar.n == pytest.approx(30.0)
    work.done(5 * cost.flops(1000))  # nor does committed work that overran its estimate
    assert bar.n == pytest.approx(30.0)
    work.layer(4, 100, 50)  # batched rows count once each
    assert work.pending == pytest.approx(4 * cost.flops(100, 50) / tiny.info.n_layers / rate)


def test_results_are_the_same_with_the_bar_on(tiny, tmp_path, monkeypatch):
    from ctxext.fixtures import HELD_OUT_BOOK, books_dir

    layers = []
    real = WorkBar.layer
    monkeypatch.setattr(WorkBar, "layer", lambda self, *a: layers.append(a) or real(self, *a))
    runs = {p: run_eval(tiny, ["default", "yarn:factor=4"], ["ppl", "passkey"], [512], depths=[0.5], samples=1,
                        data=[books_dir() / HELD_OUT_BOOK], out=tmp_path / str(p), progress=p, log=lambda m: None)
            for p in (True, False)}
    values = [[r["value"] for r in runs[p]["records"]] for p in (True, False)]
    assert values[0] == values[1] and len(values[0]) > 4
    assert (1, 512, 0) in layers  # the bar was fed layer by layer (with it off, no hooks: counted once per layer)
    assert len([x for x in layers if x == (1, 512, 0)]) % tiny.info.n_layers == 0
    assert not tiny.model._forward_pre_hooks and not any(m._forward_pre_hooks for m in tiny.model.modules())


def test_the_bar_names_the_last_cell_and_redraws_at_tqdms_pace_in_a_log(tiny, tmp_path, capsys):
    """The bar's format had no {postfix}: the last cell's figure set on it never showed; and each cell forced a
    redraw, several a second in a log file (progress.py promises one per 30 s there)."""
    from ctxext.fixtures import HELD_OUT_BOOK, books_dir

    run_eval(tiny, ["default"], ["ppl"], [256, 512], samples=1, data=[books_dir() / HELD_OUT_BOOK],
             out=tmp_path / "o", progress=True, log=lambda m: None)
    draws = [d for d in capsys.readouterr().err.replace("\r", "\n").splitlines() if "est. s" in d]
    assert re.search(r"default · ppl 100%.*, 256: ppl [\d.]+\]$", draws[-1]), draws[-1]
    assert len(draws) <= 3  # the first draw, at most one more, and the close
