"""The evolutionary search loop with successive halving, a cache of every evaluation, history.jsonl and resume.

Per generation (LongRoPE's scheme, METHODS.md): children from mutations and crossovers of the top parents; an
invalid child is never made (see `space`). Successive halving (Jamieson & Talwalkar 2016,
https://arxiv.org/abs/1502.07943) spends the budget: every child is first scored on cheap proxy rungs (shorter
length, fewer samples); only the best 1/eta of a rung that also beat the population's worst member on that rung
go up to the next rung, and only the last rung (target length, full samples) decides the population.

Determinism and resume: all randomness comes from one `numpy.random.Generator(seed)`, and every evaluation is
appended to history.jsonl (flushed and fsynced) as soon as it finishes. `--resume` replays the search from the
start with the same seed; evaluations found in history.jsonl return their stored fitness and cost instead of
running, so the replay takes the same decisions and the search continues exactly where it stopped (a resumed
run ends with the result of an uninterrupted one; nothing already evaluated runs again).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, astuple, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import CtxextError
from ..evals.files import resume_jsonl
from .space import Candidate, Space, crossover, mutate
from .seeds import SEEDS as SEED_NAMES, initial_population

HISTORY = "history.jsonl"
STATE = "search.json"


@dataclass(frozen=True)
class Rung:
    length: int
    samples: int


@dataclass(frozen=True)
class SearchConfig:
    """Knobs that decide the result; a resumed search must use the same ones (budget may grow)."""

    target: int
    fitness: str = "needle-ppl"  # or "ppl", "both"
    budget: float = 130.0  # in full-length-evaluation equivalents
    population: int = 16
    mutations: int = 8  # children per generation from mutation
    crossovers: int = 8  # and from crossover
    parents: int = 8  # top-k of the population that breed
    mutation_prob: float = 0.3
    eta: int = 3  # successive halving: keep the best 1/eta of each rung
    rungs: tuple[Rung, ...] = ()  # proxy rungs then the full one; empty: derived from target and samples
    samples: int = 10  # full-cost samples at the target (needle trials or ppl passages)
    seed: int = 0
    search_critical: bool = True
    search_attention: bool = False
    start_tokens: bool = False
    short_tolerance: float | None = 0.01  # in-window guard on m (see guard.py); None: no guard

    def check(self, trained_len: int) -> None:
        if self.target <= trained_len:
            raise CtxextError(f"--target {self.target} is not past the trained window ({trained_len} tokens); "
                              f"search factors for a longer target, e.g. {2 * trained_len}")
        if self.population < len(SEED_NAMES):  # seeds were dropped silently (LongRoPE2's own at 3, YaRN's at 2)
            raise CtxextError(f"--population must be >= {len(SEED_NAMES)} (one member per seed: "
                              f"{', '.join(SEED_NAMES)}), got {self.population}")
        if not math.isfinite(self.budget):  # nan passed every comparison (the loop never stopped), inf too
            raise CtxextError(f"--budget must be a finite number of full-length evaluations, got {self.budget:g}")
        if self.short_tolerance is not None and not math.isfinite(self.short_tolerance):
            raise CtxextError(f"--short-tolerance must be a finite fraction, got {self.short_tolerance:g}")
        if self.budget < self.population:
            raise CtxextError(f"--budget {self.budget:g} is smaller than --population {self.population}: the first "
                              "generation alone costs one full-length evaluation per member; raise --budget")
        if self.samples < 1:
            raise CtxextError(f"--samples must be >= 1, got {self.samples}")
        if self.short_tolerance is not None and self.short_tolerance < 0:
            raise CtxextError(f"--short-tolerance must be >= 0, got {self.short_tolerance:g}")
        if self.eta < 2:
            raise CtxextError(f"eta must be >= 2, got {self.eta}")
        for r in self.rungs[:-1]:  # proxies: cheaper than the full rung and past the window, where factors act
            if r.samples < 1:
                raise CtxextError(f"--rung {r.length}:{r.samples}: a rung needs at least 1 sample")
            if not trained_len < r.length < self.target:
                raise CtxextError(f"--rung {r.length}:{r.samples}: a proxy rung's length must lie past the trained "
                                  f"window ({trained_len}) and below --target {self.target} (inside the window "
                                  "every candidate scores the same, and nothing is promoted)")
        lengths = [r.length for r in self.rungs]
        if lengths != sorted(set(lengths)):
            raise CtxextError(f"--rung lengths must rise, each once, to --target: got {', '.join(map(str, lengths))}")

    def check_first_generation(self, guard_cost: float, reference_cost: float, full_cost: float) -> None:
        """`check` can only see --population; once the in-window guard and the reference have spent their part, the
        rest must still cover a full-length evaluation of every first-generation member, or part of the initial
        population is never measured (the search would return the first seed, or nothing at all)."""
        spent = guard_cost + reference_cost
        need = self.population * full_cost
        if spent + need > self.budget + 1e-9:  # the tolerance Search.score allows
            least = math.ceil((spent + need) * 100 - 1e-7) / 100  # rounded up to 0.01: the value shown is enough
            raise CtxextError(
                f"--budget {self.budget:g} cannot measure the first generation: the in-window guard spent "
                f"{guard_cost:.3g} full-length evaluations and the reference {reference_cost:.3g}, and the "
                f"{self.population} members need {need:.3g} more ({full_cost:.3g} each); raise --budget to at least "
                f"{least:g} (--resume keeps the guard's measurements)")

    def resolved_rungs(self, trained_len: int) -> tuple[Rung, ...]:
        """Default proxies: half the target with half the samples, then the full rung. When half the target is not
        past the window (s <= 2) the proxy sits midway between window and target: one token past the window ranked
        candidates against the full rung (Spearman -0.52 over 24 candidates, tiny-rope 256 -> 512; +0.58 at 384),
        rewarding factors near 1 that lose at the target."""
        if self.rungs:
            return self.rungs
        full = Rung(self.target, self.samples)
        half = self.target // 2
        if half <= trained_len:
            half = trained_len + (self.target - trained_len) // 2
        if half <= trained_len or half >= self.target:
            return (full,)
        return (Rung(half, max(1, self.samples // 2)), full)

    def resume_keys(self) -> dict[str, Any]:
        from ..evals.needle_ppl import TASK as NEEDLE_PPL

        d = asdict(self)
        d.pop("budget")
        d["rungs"] = [list(asdict(r).values()) for r in self.rungs]
        if self.fitness in ("needle-ppl", "both"):  # its history's values are comparable only within a version
            d["needle_ppl_version"] = NEEDLE_PPL.version
        return d


@dataclass
class Member:
    cand: Candidate
    origin: str
    scores: dict[int, float] = field(default_factory=dict)  # rung index -> fitness
    parts: dict[int, dict[str, float]] = field(default_factory=dict)  # rung index -> {task: value}

    @property
    def key(self) -> str:
        return self.cand.key()


class BudgetSpent(Exception):
    pass


class History:
    """Every evaluation: loaded from DIR/history.jsonl on resume, appended (fsync) as evaluations finish."""

    def __init__(self, out: Path, resume: bool):
        self.path = out / HISTORY
        self.stored: dict[tuple[str, int], dict[str, Any]] = {}
        if resume and self.path.is_file():
            for rec in resume_jsonl(self.path):  # a line a kill cut short is dropped: evaluated again
                self.stored[(rec["key"], rec["rung"])] = rec
            self._rewrite()
        elif self.path.exists():
            self.path.unlink()

    def _rewrite(self) -> None:
        """Drop a partial last line (and keep the records in the order they were made)."""
        recs = sorted(self.stored.values(), key=lambda r: r["index"])
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in recs))
        os.replace(tmp, self.path)

    def append(self, rec: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.stored[(rec["key"], rec["rung"])] = rec


@dataclass
class Outcome:
    best: Member
    spent: float
    evaluations: int
    replayed: int
    generations: int
    curve: list[tuple[float, float]]  # (cost spent, best full fitness so far) after every full evaluation
    seeds: dict[str, float]  # seed name -> full fitness
    seed_parts: dict[str, dict[str, float]]  # seed name -> {task: value} at full cost
    population: list[Member]
    stopped: str


class Search:
    """One search. `evaluate(cand, length, samples) -> (fitness, seconds)`; `cost(length, samples)` in full-eval
    equivalents. `on_progress(spent, best)` is called after every evaluation (progress bar)."""

    def __init__(self, space: Space, config: SearchConfig, rungs: tuple[Rung, ...], seeds: dict[str, Candidate],
                 evaluate: Callable[[Candidate, int, int], tuple[float, float, dict[str, float]]],
                 cost: Callable[[int, int], float], out: Path, resume: bool = False,
                 on_progress: Callable[[float, Member | None, str], None] | None = None, spent: float = 0.0):
        self.space, self.cfg, self.rungs, self.seeds = space, config, rungs, seeds
        self._evaluate, self._cost = evaluate, cost
        self.out = out
        self.history = History(out, resume)
        self.on_progress = on_progress or (lambda spent, best, what: None)
        self.rng = np.random.default_rng(config.seed)
        self.spent = spent  # e.g. the in-window guard's evaluations, made before the search
        self.index = 0  # evaluations made or replayed in this run, in order
        self.evaluations = 0
        self.replayed = 0
        self.members: dict[str, Member] = {}
        self.curve: list[tuple[float, float]] = []
        self.best: Member | None = None
        self.generation = 0

    # ---- one evaluation (cached, replayed, or run)
    def score(self, m: Member, rung: int) -> float:
        if rung in m.scores:
            return m.scores[rung]
        r = self.rungs[rung]
        c = self._cost(r.length, r.samples)
        if self.spent + c > self.cfg.budget + 1e-9:
            raise BudgetSpent
        stored = self.history.stored.get((m.key, rung))
        if stored is not None:
            value, seconds, parts = float(stored["fitness"]), float(stored["seconds"]), stored.get("parts", {})
            self.replayed += 1
        else:
            value, seconds, parts = self._evaluate(m.cand, r.length, r.samples)
            if not math.isfinite(value):
                value = float("inf")
        self.spent += c
        self.evaluations += 1
        m.scores[rung] = value
        m.parts[rung] = parts
        if stored is None:
            self.history.append({"index": self.index, "generation": self.generation, "key": m.key,
                                 "origin": m.origin, "rung": rung, "length": r.length, "samples": r.samples,
                                 "fitness": value, "parts": parts, "cost": c, "cost_total": self.spent, "seconds": seconds,
                                 **m.cand.to_dict()})
        self.index += 1
        if rung == len(self.rungs) - 1:
            if self.best is None or value < self.best.scores[rung]:
                self.best = m
            self.curve.append((self.spent, self.best.scores[rung]))
        self.on_progress(self.spent, self.best, f"gen {self.generation}")
        return value

    def full(self, m: Member) -> float:
        return m.scores.get(len(self.rungs) - 1, float("inf"))

    # ---- the loop
    def run(self) -> Outcome:
        cfg, top = self.cfg, len(self.rungs) - 1
        seeds_by_key: dict[Any, list[str]] = {}  # seeds that project to one candidate (--fixed-critical) share it
        for n, c in self.seeds.items():
            seeds_by_key.setdefault(c.key(), []).append(n)
        init = initial_population(self.space, self.seeds, cfg.population, self.rng)
        pop = [self._member(c, origin) for origin, c in init]
        stopped = "budget"
        try:
            for r in reversed(range(len(self.rungs))):  # full rung first: check_first_generation covers it
                for m in pop:  # the first generation is scored on every rung (the proxies' reference values)
                    self.score(m, r)
            while True:
                self.generation += 1
                pop.sort(key=self.full)
                parents = pop[:max(2, min(cfg.parents, len(pop)))]
                children = self._children(parents)
                if not children:
                    stopped = "no new children (space exhausted)"
                    break
                alive = children
                for r in range(top):
                    for m in alive:
                        self.score(m, r)
                    worst = max(p.scores.get(r, float("inf")) for p in pop)
                    ranked = sorted(alive, key=lambda m: m.scores[r])
                    keep = max(1, math.ceil(len(ranked) / cfg.eta))
                    alive = [m for m in ranked[:keep] if m.scores[r] < worst]
                for m in alive:
                    self.score(m, top)
                pop = sorted(pop + alive, key=self.full)[:cfg.population]
        except BudgetSpent:
            pass
        # the population: the best of every member scored at full cost (the budget may stop a generation after
        # some children were scored in full, the best among them; they were left out)
        pop = sorted((m for m in self.members.values() if top in m.scores), key=self.full)[:cfg.population]
        seeds = {n: self.full(m) for k, m in self.members.items() if k in seeds_by_key and top in m.scores
                 for n in seeds_by_key[k]}
        parts = {n: m.parts[top] for k, m in self.members.items() if k in seeds_by_key and top in m.parts
                 for n in seeds_by_key[k]}
        if self.best is None:  # only when the caller skipped check_first_generation
            raise CtxextError(f"--budget {cfg.budget:g} left no full-length evaluation: {self.spent:.3g} was spent "
                              f"before the search and one costs {self._cost(*astuple(self.rungs[top])):.3g}; "
                              "raise --budget")
        return Outcome(self.best, self.spent, self.evaluations, self.replayed, self.generation, self.curve, seeds,
                       parts, pop, stopped)

    def _member(self, c: Candidate, origin: str) -> Member:
        if c.key() not in self.members:
            self.members[c.key()] = Member(c, origin)
        return self.members[c.key()]

    def _children(self, parents: list[Member]) -> list[Member]:
        """Mutants and crossovers never seen before (up to 20 draws per child)."""
        cfg, out, seen = self.cfg, [], set(self.members)
        for kind, n in (("mutation", cfg.mutations), ("crossover", cfg.crossovers)):
            for _ in range(n):
                for _ in range(20):
                    if kind == "mutation":
                        p = parents[int(self.rng.integers(len(parents)))]
                        c = mutate(self.space, p.cand, self.rng, cfg.mutation_prob)
                    else:
                        i, j = self.rng.choice(len(parents), size=2, replace=False)
                        c = crossover(self.space, parents[int(i)].cand, parents[int(j)].cand, self.rng)
                    if c.key() not in seen:
                        seen.add(c.key())
                        out.append(self._member(c, f"{kind}@{self.generation}"))
                        break
        return out


def write_state(out: Path, config: SearchConfig, info: dict[str, Any], resume: bool) -> None:
    """DIR/search.json: what decides the result. On resume it must match (the budget may change)."""
    path = out / STATE
    keys = {**config.resume_keys(), **info}
    if resume and path.is_file():
        old = json.loads(path.read_text()).get("resume_keys", {})
        # data_files (names and sizes) came later: a search written before it resumes on its paths alone
        diff = [k for k in sorted(set(old) | set(keys)) if old.get(k) != keys.get(k)
                and not (k == "data_files" and k not in old)]
        if diff:
            k = diff[0]
            raise CtxextError(f"cannot resume the search in {out}: {k} was {old.get(k)!r}, now {keys.get(k)!r}; "
                              "use the same settings or a new --out")
    elif not resume and (out / HISTORY).is_file() and (out / HISTORY).stat().st_size > 0:
        # a forgotten --resume must not throw away hours of evaluations (eval refuses the same way)
        raise CtxextError(f"{out} holds an earlier search ({out / HISTORY}); pass --resume to continue it, or "
                          "choose another --out")
    if not path.is_file() and any((out / f).is_file() for f in ("results.json", "summary.md")):
        # another command's run (an eval): search would rewrite its results.json and summary.md
        raise CtxextError(f"{out} holds another run's results.json / summary.md; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"resume_keys": keys, "budget": config.budget}, indent=2))
    os.replace(tmp, path)
