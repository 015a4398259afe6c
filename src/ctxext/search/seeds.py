"""Seeds of the search (LongRoPE: PI, NTK and YaRN vectors; LongRoPE2: NTK-like below the critical pair, s from
it on) and the initial population built from them. Seeds are projected into the space, so they are valid."""

from __future__ import annotations

import numpy as np

from ..scaling import RopeShape, factors_of, parse_spec, resolve_rope
from .space import Candidate, Space, candidate, mutate, ntk_like


def _fmt(x: float) -> str:
    return f"{x:g}"


SEEDS = ("pi", "ntk", "yarn", "longrope2")  # seed_candidates' names, in the order the population takes them


def seed_candidates(space: Space, shape: RopeShape) -> dict[str, Candidate]:
    """name -> seed. YaRN keeps its own attention factor when m is searched; otherwise every candidate uses the
    space's m (METHODS.md: LongRoPE's sqrt(1 + ln s / ln L))."""
    s = space.scale
    out: dict[str, Candidate] = {}
    for name, text in (("pi", f"linear:factor={_fmt(s)}"), ("ntk", f"ntk:factor={_fmt(s)}"),
                       ("yarn", f"yarn:factor={_fmt(s)}")):
        spec = parse_spec(text)
        f = factors_of(spec, shape)
        out[name] = candidate(space, f, resolve_rope(spec, shape).attention_factor)
    lower = ntk_like(space.n_pairs, s, space.critical_pair)
    f = np.where(np.arange(space.n_pairs) >= space.critical_pair, s, lower)
    out["longrope2"] = candidate(space, f)
    return out


def initial_population(space: Space, seeds: dict[str, Candidate], size: int,
                       rng: np.random.Generator) -> list[tuple[str, Candidate]]:
    """The distinct seeds first, then mutants of random seeds (stronger steps, 2 tries per slot at most 50×)."""
    pop: list[tuple[str, Candidate]] = []
    keys: set[str] = set()
    for name, c in seeds.items():
        if c.key() not in keys and len(pop) < size:
            pop.append((f"seed:{name}", c))
            keys.add(c.key())
    names = list(seeds)
    tries = 0
    while len(pop) < size and tries < 50 * size:
        tries += 1
        name = names[int(rng.integers(len(names)))]
        child = mutate(space, seeds[name], rng, prob=0.5, sigma=0.15)
        if child.key() not in keys:
            pop.append((f"init:{name}", child))
            keys.add(child.key())
    return pop
