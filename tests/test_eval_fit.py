"""The LLaMA 2 Long law fit recovers known parameters; cost estimates behave; the task registry names tasks."""

from __future__ import annotations

import numpy as np
import pytest

from ctxext.errors import CtxextError
from ctxext.evals import fit_law, get_task, task_names
from ctxext.evals.cost import ModelCost, fmt_bytes, fmt_seconds
from ctxext.evals.fit import binned, law


def test_llama2_long_7b_law_reference_value():
    assert law(32768, 25.4, 0.45, 1.56) == pytest.approx(1.600, abs=5e-4)  # METHODS.md


@pytest.mark.parametrize("alpha, beta, gamma", [(25.4, 0.45, 1.56), (17.9, 0.51, 1.35), (300.0, 1.2, 2.5)])
def test_fit_recovers_known_parameters(alpha, beta, gamma):
    c = np.geomspace(16, 32768, 80)
    res = fit_law(c, law(c, alpha, beta, gamma))
    assert res["alpha"] == pytest.approx(alpha, rel=1e-3)
    assert res["beta"] == pytest.approx(beta, rel=1e-3)
    assert res["gamma"] == pytest.approx(gamma, abs=1e-4)
    assert res["rmse"] < 1e-6


def test_fit_with_noise_and_from_a_per_position_curve():
    rng = np.random.default_rng(0)
    pos = np.arange(32768, dtype=np.float64)
    curve = law(np.maximum(pos, 1), 25.4, 0.45, 1.56) + rng.normal(0, 0.3, len(pos))  # per-token noise
    curve[0] = np.nan
    c, y, n = binned(curve)
    assert c[0] >= 16 and np.all(np.diff(c) > 0) and n.sum() == len(pos) - 16
    res = fit_law(c, y)
    assert res["beta"] == pytest.approx(0.45, rel=0.15) and res["gamma"] == pytest.approx(1.56, abs=0.05)
    assert law(32768, res["alpha"], res["beta"], res["gamma"]) == pytest.approx(1.600, abs=0.01)


def test_a_curve_that_does_not_fall_has_no_context_benefit():
    c = np.geomspace(16, 4096, 40)
    res = fit_law(c, 2.0 + 1e-4 * c)  # rising: past the window
    assert res["alpha"] == 0.0 and res["gamma"] == pytest.approx(np.mean(2.0 + 1e-4 * c))


def test_registry_and_did_you_mean():
    assert task_names() == ["ppl", "passkey", "niah", "needle-ppl", "stream-ppl", "fit", "longqa"]
    assert get_task("passkey").uses_depths and get_task("niah").needs_data and get_task("fit").requires == ("ppl",)
    with pytest.raises(CtxextError, match=r"unknown task 'paskey' \(did you mean 'passkey'\?\); accepted: ppl, passkey"):
        get_task("paskey")


def test_cost_model():
    from ctxext.models import model_info

    mc = ModelCost.of(model_info("smollm2-135m"))
    assert mc.body_params == mc.n_params - 49152 * 576  # tied embeddings counted once
    # FLOPs: linear in tokens for the weights, quadratic for attention; a cached continuation costs its own tokens
    assert mc.flops(2000) < 2 * mc.flops(1000) * 1.2 and mc.flops(16384) > 4 * mc.flops(4096)
    assert mc.flops(1000, past=1000) + mc.flops(1000) == pytest.approx(mc.flops(2000))
    # ppl at 16k stays under the 2 GB budget by the estimate; logits are never the full [T, vocab]
    assert mc.peak_forward(16384) < 2.0 * 2**30
    assert mc.peak_forward(16384) - mc.peak_forward(8192) < 16384 * 49152 * 4 / 8
    assert mc.peak_cached(16384) > mc.peak_forward(16384) - mc.logits()  # the KV cache adds
    assert fmt_bytes(3 * 2**30) == "3.0 GB" and fmt_bytes(5 * 2**20) == "5 MB"
    assert fmt_seconds(42) == "42 s" and fmt_seconds(150) == "2.5 min" and fmt_seconds(7200) == "2.0 h"


def test_branch_peak_covers_the_batch_of_branches():
    from ctxext.evals.cost import ModelCost
    from ctxext.evals.scoring import BRANCH_BYTES
    from ctxext.models import model_info

    mc = ModelCost.of(model_info("tiny-rope"))
    for n in (256, 2048, 16384):
        assert mc.peak_branches(n) >= mc.peak_cached(n, plain=True)
        assert mc.peak_branches(n) - mc.peak_cached(n, plain=True) <= 1.15 * (BRANCH_BYTES + mc.activations(4096))
    assert mc.peak_branches(2048) >= 1.15 * (mc.weights() + mc.kv_cache(2048) + BRANCH_BYTES)


def test_a_curve_that_keeps_falling_like_log_c_is_no_fit():
    """L = 5 − 0.3·ln c never levels off: least squares runs β to the bottom of its range with α ~ 1e50+ and γ < 0,
    which the fit task published as a result (α 2.6e222, γ −156 on tiny-rope at 256 tokens)."""
    from ctxext.evals.fit import no_fit_reason

    c = np.geomspace(16, 256, 40)
    res = fit_law(c, 5.0 - 0.3 * np.log(c))
    assert res["beta"] < 0.0102 and res["gamma"] < 0
    assert no_fit_reason(res).startswith("β ran to the edge of its range 0.01–3.0")
    assert no_fit_reason(fit_law(c, law(c, 25.4, 0.45, 1.56))) is None
    assert no_fit_reason(fit_law(c, 2.0 + 1e-4 * c)) is None  # no context benefit is a result (α = 0)
    assert no_fit_reason({"alpha": 3.0, "beta": 0.5, "gamma": -0.2, "rmse": 0.1}) == "γ = -0.2 < 0, a negative loss floor"


def test_the_fit_task_records_no_beta_when_the_loss_does_not_fall():
    """α = 0 (loss rising with context, as for default RoPE past its window): the β where the search stopped was
    recorded, and is the summary's headline metric."""
    from types import SimpleNamespace

    from ctxext.evals import fit

    curve = 2.0 + 1e-3 * np.arange(1024.0)
    logs: list[str] = []
    ctx = SimpleNamespace(memo={("ppl", 1024): (curve, 3)}, spec=SimpleNamespace(text="default"), log=logs.append,
                          record=lambda task, L, d, metric, value, n: {"metric": metric, "value": value, "n": n})
    ((cell, recs),) = list(fit.run(ctx, [(1024, None)]))
    got = {r["metric"]: r["value"] for r in recs}
    assert got["alpha"] == 0.0 and got["beta"] is None and got["gamma"] > 2.0 and got["rmse"] > 0
    assert "does not fall with context" in logs[0]
