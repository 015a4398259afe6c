"""LongRoPE2-style evolutionary search of per-pair RoPE rescale factors (`ctxext search`).

Public API:
    run_search(model, data, out, config, resume=...) -> dict     the whole command (best.json, history.jsonl, …)
    SearchConfig, Rung, config_from(target, **options)
    make_space, Space, Candidate, mutate, crossover, project     the space and its operators (pure, numpy)
    seed_candidates, initial_population                          PI / NTK / YaRN / LongRoPE2 seeds
    Evaluator, candidate_spec                                    fitness through the eval harness

Modules: space (bounds, validity, operators) · seeds · fitness · driver (successive halving, cache, history,
resume) · report (best.json, summary.md, plots) · run (validation, loading, outputs).
"""

from .driver import Rung, Search, SearchConfig
from .fitness import Evaluator, candidate_spec
from .run import config_from, run_search
from .seeds import initial_population, seed_candidates
from .space import Candidate, Space, crossover, make_space, mutate, project

__all__ = ["Candidate", "Evaluator", "Rung", "Search", "SearchConfig", "Space", "candidate_spec", "config_from",
           "crossover", "initial_population", "make_space", "mutate", "project", "run_search", "seed_candidates"]
