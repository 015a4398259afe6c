"""Plot styling shared by every ctxext plot."""


def test_every_curve_of_a_plot_has_its_own_look():
    from ctxext.plots import PALETTE, line_style

    looks = [tuple(sorted(line_style(k).items())) for k in range(3 * len(PALETTE))]
    assert len(set(looks)) == len(looks) and line_style(0) == {"color": PALETTE[0], "ls": "-"}
    assert line_style(len(PALETTE)) == {"color": PALETTE[0], "ls": "--"}
