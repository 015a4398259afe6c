"""Time estimates: the machine's matmul and attention rates are measured, cached for an hour, and the attention rate
weighs the attention FLOPs of the stated cost."""

from __future__ import annotations

import json
import re
import time

import pytest

from ctxext.evals import Settings, cost, get_task
from ctxext.evals.runner import run_eval
from ctxext.fixtures import HELD_OUT_BOOK, books_dir
from ctxext.models import model_info


@pytest.fixture
def rates(tmp_path, monkeypatch):
    """machine.json in tmp_path; fake measurements that count their calls."""
    calls = {"matmul": 0, "attention": 0}
    value = {"matmul": 100e9, "attention": 25e9}

    def fake(what):
        def measure(dtype, device):
            calls[what] += 1
            return value[what]
        return measure

    monkeypatch.setattr(cost, "cache_root", lambda: tmp_path)
    monkeypatch.setattr(cost, "measure_matmul_rate", fake("matmul"))
    monkeypatch.setattr(cost, "measure_attention_rate", fake("attention"))
    return calls, value, tmp_path / "machine.json"


def test_rates_are_cached_for_an_hour_then_measured_again(rates):
    calls, value, path = rates
    assert cost.attention_weight() == 4.0 and calls == {"matmul": 1, "attention": 1}
    value["attention"] = 50e9
    assert cost.attention_weight() == 4.0 and calls == {"matmul": 1, "attention": 1}  # from the cache
    known = json.loads(path.read_text())
    assert len(known) == 2 and all(abs(e["at"] - time.time()) < 60 for e in known.values())
    for k in known:  # an entry older than an hour, and one in the old format (a bare number), are measured again
        known[k] = {"flops": known[k]["flops"], "at": time.time() - cost.RATE_MAX_AGE_S - 1} if "attention" in k \
            else 1e9
    path.write_text(json.dumps(known))
    assert cost.attention_weight() == 2.0 and calls == {"matmul": 2, "attention": 2}
    assert cost.matmul_rate(refresh=True) == 100e9 and calls["matmul"] == 3


def test_estimate_weighs_attention_by_the_measured_rate(rates, tmp_path):
    """The stated time is the ppl task's FLOPs, attention weighted by matmul rate / attention rate, over the matmul
    rate: with attention at 1/4 of the matmul rate the estimate grows by 3x the attention FLOPs."""
    _, value, path = rates
    value["matmul"] = 1e7  # slow fake rates: minutes, so the printed estimate has digits to compare
    info = model_info("tiny-rope")
    book = str(books_dir() / HELD_OUT_BOOK)
    stated = {}
    for attn in (1e7, 0.25e7):
        value["attention"] = attn
        path.unlink(missing_ok=True)  # measure again with the new attention rate
        lines: list[str] = []
        res = run_eval("tiny-rope", ["default"], ["ppl"], [1024], samples=1, data=[book], out=tmp_path / "d",
                       dry_run=True, log=lines.append)
        assert res["meta"]["machine"]["attention_flops"] == attn
        text = "\n".join(lines)
        assert f"causal attention rate, {attn / 1e9:.0f} GFLOP/s" in text
        mc = cost.ModelCost.of(info, 4, attn_weight=1e7 / attn)
        expected = get_task("ppl").cost(mc, 1024, [], Settings(samples=1))[0] / 1e7
        stated[attn] = float(re.search(r"total ≈ ([\d.]+) min", text).group(1)) * 60
        assert stated[attn] == pytest.approx(expected, rel=0.05)
    attn_flops = cost.ModelCost.of(info, 4).flops(1024) - cost.ModelCost.of(info, 4, attn_weight=0.0).flops(1024)
    assert stated[0.25e7] - stated[1e7] == pytest.approx(3 * attn_flops / 1e7, rel=0.1)


def test_attention_rate_is_measured_on_this_machine():
    rate = cost.measure_attention_rate(seconds=0.05)
    assert 1e8 < rate < 1e16

