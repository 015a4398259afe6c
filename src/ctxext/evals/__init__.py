"""Long-context evaluation: perplexity curves, passkey, needle in a haystack, needle-driven perplexity, and the
LLaMA 2 Long loss-law fit, swept over scaling specs × lengths × depths on one model load.

Public API:
    run_eval(model, specs, tasks, lengths, depths=..., samples=..., data=..., out=..., resume=...) -> dict
    get_task(name) -> Task, task_names()          the task registry (did-you-mean errors)
    token_nll(model, ids) -> np.ndarray            per-token NLL without full-vocabulary logits
    Scorer, Probe                                  teacher-forced needle scoring with exact greedy verdicts
    fit_law(c, y) -> {"alpha", "beta", "gamma", "rmse"}

Modules: runner (the sweep) · tasks (registry, context) · ppl · passkey · niah · needle_ppl · fit · needles (what
the needle tasks share) · scoring (chunked loss, probes, KV prefix reuse) · cost (FLOPs, memory, machine rate)
· results (results.json, summary.md) · plots · files (atomic writes).
"""

from .fit import fit_law
from .runner import run_eval
from .scoring import Probe, Scorer, token_nll
from .tasks import Settings, Task, get_task, task_names

__all__ = ["Probe", "Scorer", "Settings", "Task", "fit_law", "get_task", "run_eval", "task_names", "token_nll"]
