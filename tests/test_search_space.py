"""The search space and its operators: LongRoPE2 bounds, seeds, and children that are always valid."""

import math

import numpy as np
import pytest

from ctxext.errors import CtxextError
from ctxext.scaling import RopeShape, factors_of, parse_spec
from ctxext.search import Candidate, crossover, initial_population, make_space, mutate, project, seed_candidates
from ctxext.search.space import grid_ceil, ntk_like, snap
from ctxext.theory import critical_dim

TINY = RopeShape(32, 1e4, 256)  # the tiny-rope fixture's shape
SMOL = RopeShape(64, 1e5, 8192)  # SmolLM2-135M


def space_of(shape: RopeShape, target: int, **kw):
    c = critical_dim(shape.rotary_dim, shape.base, shape.original_len) // 2
    return make_space(shape.n_pairs, target / shape.original_len, c, shape.original_len, **kw)


def test_bounds_follow_longrope2():
    sp = space_of(TINY, 1024)
    assert sp.critical_pair == 7  # d_extra = 2·ceil(16·log_1e4(256/2π)) = 14
    assert sp.lo == (1.0,) * 7 + (4.0,) * 9  # pairs at/above the critical pair: >= s
    assert sp.hi == (8.0,) * 16  # <= 2s
    assert sp.attention_factor == pytest.approx(math.sqrt(1 + math.log(4) / math.log(256)))  # 1.1180
    smol = space_of(SMOL, 16384)
    assert smol.critical_pair == 20 and smol.lo[19:21] == (1.0, 2.0)


def test_fixed_critical_pins_ntk_part():
    sp = space_of(TINY, 1024, search_critical=False)
    lower = snap(ntk_like(16, 4.0, 7))[:7]
    assert np.array_equal(sp.lo[:7], lower) and np.array_equal(sp.hi[:7], lower)
    assert lower[0] == 1.0 and lower[-1] < 4.0  # NTK-like: kept at pair 0, below s under the critical pair
    rng = np.random.default_rng(1)
    c = seed_candidates(sp, TINY)["yarn"]
    for _ in range(200):
        c = mutate(sp, c, rng)
        assert np.array_equal(c.factors[:7], lower)


def test_seeds_are_the_methods_projected():
    sp = space_of(TINY, 1024)
    seeds = seed_candidates(sp, TINY)
    assert set(seeds) == {"pi", "ntk", "yarn", "longrope2"}
    yarn = factors_of(parse_spec("yarn:factor=4"), TINY)
    assert np.max(np.abs(np.asarray(seeds["yarn"].factors) - yarn)) <= 0.005 + 1e-9  # on the 0.01 grid
    assert seeds["pi"].factors == (4.0,) * 16
    ntk = factors_of(parse_spec("ntk:factor=4"), TINY)
    assert np.allclose(seeds["ntk"].factors, np.maximum(snap(ntk), sp.lo))  # raised to s from the critical pair
    lr2 = seeds["longrope2"].factors
    assert lr2[0] == 1.0 and lr2[7:] == (4.0,) * 9 and all(a < b for a, b in zip(lr2[:7], lr2[1:8]))
    assert all(sp.is_valid(c) for c in seeds.values())


@pytest.mark.parametrize("shape,target,kw", [(TINY, 1024, {}), (TINY, 512, {"search_attention": True}),
                                             (SMOL, 16384, {"start_tokens": True}), (SMOL, 65536, {})])
def test_children_are_always_valid(shape, target, kw):
    sp = space_of(shape, target, **kw)
    rng = np.random.default_rng(0)
    pop = [c for _, c in initial_population(sp, seed_candidates(sp, shape), 16, rng)]
    assert len(pop) == 16 and len({c.key() for c in pop}) == 16
    changed = 0
    for i in range(3000):
        a, b = pop[rng.integers(len(pop))], pop[rng.integers(len(pop))]
        child = mutate(sp, a, rng) if i % 2 else crossover(sp, a, b, rng)
        assert sp.is_valid(child), child
        f = np.asarray(child.factors)
        assert np.all(np.diff(f) >= 0) and np.all(f >= 1) and np.all(f <= 2 * sp.scale + 1e-9)
        changed += child.key() != a.key()
        pop[rng.integers(len(pop))] = child
    assert changed > 2500  # operators really move


def test_mutation_moves_at_least_one_grid_step_and_is_seeded():
    sp = space_of(TINY, 1024)
    parent = seed_candidates(sp, TINY)["yarn"]
    a = mutate(sp, parent, np.random.default_rng(5))
    b = mutate(sp, parent, np.random.default_rng(5))
    assert a == b and a != parent
    diff = np.abs(np.asarray(a.factors) - np.asarray(parent.factors))
    assert diff.max() >= 0.01 - 1e-9


def test_crossover_mixes_parents():
    sp = space_of(TINY, 1024)
    lo = Candidate(tuple(project(sp, np.linspace(1, 4, 16))), sp.attention_factor)
    hi = Candidate(tuple(project(sp, np.linspace(1.5, 8, 16))), sp.attention_factor)
    rng = np.random.default_rng(0)
    kids = [crossover(sp, lo, hi, rng) for _ in range(50)]
    assert all(sp.is_valid(k) for k in kids)
    mixed = [k for k in kids if k not in (lo, hi)]
    assert mixed  # something new, made only of the parents' values or between them
    for k in mixed:
        f = np.asarray(k.factors)
        assert np.all(f >= np.minimum(lo.factors, hi.factors) - 1e-9)
        assert np.all(f <= np.maximum(lo.factors, hi.factors) + 1e-9)


def test_project_and_validity():
    sp = space_of(TINY, 1024)
    f = project(sp, [3, 2, 1, 9, 0.5] + [5.123] * 11)
    assert np.all(np.diff(f) >= 0) and f[3] == 8.0 and f[5] == 8.0 and f[0] == 3.0
    bad = Candidate((1.0,) * 16, sp.attention_factor)  # pairs >= critical below s
    assert not sp.is_valid(bad)
    assert not sp.is_valid(Candidate((1.0,) * 7 + (4.0,) * 8 + (3.999,), sp.attention_factor))
    with pytest.raises(CtxextError, match="scale must be > 1"):
        make_space(16, 1.0, 7, 256)


def test_candidate_key_is_stable():
    c = Candidate((1.0, 2.5), 1.1)
    assert c.key() == Candidate((1.0, 2.5), 1.1).key() != Candidate((1.0, 2.51), 1.1).key()
    assert Candidate.from_dict(c.to_dict()) == c


def test_grid_ceil_keeps_grid_values_and_rounds_others_up():
    assert [grid_ceil(x) for x in (1.07, 1.15, 2.0, 2.01, 4.0, 8.0)] == [1.07, 1.15, 2.0, 2.01, 4.0, 8.0]
    assert [grid_ceil(x) for x in (12000 / 8192, 1.0001, 3.001, 10 / 3)] == [1.47, 1.01, 3.01, 3.34]


@pytest.mark.parametrize("shape,target", [(SMOL, 12000), (SMOL, 20000), (SMOL, 8200), (TINY, 600), (TINY, 1025),
                                          (TINY, 750), (TINY, 854)])  # s nearest the grid step below it, then above
def test_off_grid_scale_keeps_pairs_at_or_above_critical_at_least_s(shape, target):
    """s = 12000/8192 = 1.4648 is off the grid: the lower bound is 1.47 (rounded up), not 1.46 (nearest), so no pair
    at or above the critical pair interpolates less than s, and the seeds' real critical pair is the critical pair."""
    s = target / shape.original_len
    assert grid_ceil(s) != s  # off the grid
    for kw in ({}, {"search_critical": False}):
        sp = space_of(shape, target, **kw)
        c = sp.critical_pair
        lo, hi = np.asarray(sp.lo), np.asarray(sp.hi)
        assert np.all(lo[c:] >= s) and lo[c] == grid_ceil(s) and np.all(hi >= lo) and hi[-1] == snap(2 * s)
        seeds = seed_candidates(sp, shape)
        assert all(sp.is_valid(x) for x in seeds.values())
        assert sp.real_critical_pair(seeds["longrope2"]) == c  # s from c on, NTK-like (below s) under it
        assert sp.real_critical_pair(seeds["pi"]) in (0, c)  # s everywhere: snapped below c, >= s from c on
        assert np.all(np.asarray(seeds["pi"].factors)[c:] >= s)
        rng = np.random.default_rng(0)
        x = seeds["yarn"]
        for _ in range(200):
            x = mutate(sp, x, rng)
            assert np.all(np.asarray(x.factors)[c:] >= s) and sp.real_critical_pair(x) <= c


def test_space_for_grid_scale_is_unchanged():
    """s on the grid (every committed benchmark: s = 2, 4, 8) keeps lo = s exactly from the critical pair."""
    for shape, target in ((TINY, 512), (TINY, 1024), (TINY, 2048), (SMOL, 16384), (SMOL, 32768), (SMOL, 65536)):
        s = target / shape.original_len
        sp = space_of(shape, target)
        c = sp.critical_pair
        assert sp.lo == (1.0,) * c + (s,) * (shape.n_pairs - c) and sp.hi == (2 * s,) * shape.n_pairs
        assert sp.real_critical_pair(seed_candidates(sp, shape)["longrope2"]) == c
