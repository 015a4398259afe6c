"""Plot styling shared by every ctxext plot."""


def test_every_curve_of_a_plot_has_its_own_look():
    from ctxext.plots import PALETTE, line_style

    looks = [tuple(sorted(line_style(k).items())) for k in range(3 * len(PALETTE))]
    assert len(set(looks)) == len(looks) and line_style(0) == {"color": PALETTE[0], "ls": "-"}
    assert line_style(len(PALETTE)) == {"color": PALETTE[0], "ls": "--"}


def _ppl_plot(tmp_path, monkeypatch, metric, curves):
    """Draw ppl_curves from saved curves {spec: array}; -> (path or None, the x-axis limits drawn)."""
    import numpy as np

    import ctxext.evals.plots as plots
    from ctxext.evals.files import curve_path, save_array

    seen = {}
    real = plots.save
    monkeypatch.setattr(plots, "save", lambda fig, p: seen.setdefault("xlim", fig.axes[0].get_xlim()) and real(fig, p))
    recs = []
    for spec, curve in curves.items():
        save_array(curve_path(tmp_path, metric, spec, 64), np.asarray(curve, dtype=float))
        recs.append({"task": "ppl", "metric": metric, "scaling": spec, "length": 64, "bucket": None, "value": 10.0})
    return plots.ppl_curves(tmp_path, recs, metric, 64, "m"), seen.get("xlim")


def test_sliding_curves_are_drawn_to_their_end(tmp_path, monkeypatch):
    """The sliding protocol scores 2L tokens: the axis runs to 2L (it stopped at L, hiding half the curve, and the
    trained-length marker at L)."""
    import numpy as np

    path, xlim = _ppl_plot(tmp_path, monkeypatch, "ppl_sliding", {"default": np.r_[np.nan, np.full(127, 2.0)]})
    assert path is not None and xlim[1] >= 127


def test_a_plot_of_only_nan_curves_is_skipped_not_raised(tmp_path, monkeypatch):
    import numpy as np

    path, _ = _ppl_plot(tmp_path, monkeypatch, "ppl", {"default": np.full(64, np.nan)})
    assert path is None
    path, _ = _ppl_plot(tmp_path, monkeypatch, "ppl", {"default": np.full(64, np.nan), "yarn": np.full(64, 2.0)})
    assert path is not None
