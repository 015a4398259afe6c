"""The task registry and what a task sees while it runs.

A task is a `Task` entry: a generator `run(ctx, cells)` that yields `(cell, records)` as each cell finishes
(the runner writes results after every one), a `cost(model_cost, length, depths, settings)` that states FLOPs
per cell and peak bytes before anything runs, and a few facts (needs --data, sweeps depths). Adding a task is
one module with one `register(...)` call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import CtxextError, did_you_mean

Cell = tuple[int, "float | None"]  # (length, depth); depth None for tasks without depths


@dataclass(frozen=True)
class Settings:
    """Knobs that decide results; saved in results.json, and a resumed run must use the same ones."""

    seed: int = 0
    samples: int | None = None  # per cell: documents (ppl), trials (passkey, niah, needle-ppl); None: task default
    protocol: str = "window"  # ppl: window (first L tokens), sliding, or both
    windows: int | None = None  # ppl window protocol: consecutive L-token windows per document; None: 1
    stride: int | None = None  # sliding-window stride; None: L // 2
    bucket: int | None = None  # ppl curve bucket width in tokens; None: max length / 8 (a power of two)
    reuse_prefix: bool = True  # needle tasks: encode the haystack shared by several depths once
    max_new_tokens: int = 16  # greedy budget of a passkey / needle answer

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise CtxextError(f"unknown ppl protocol '{self.protocol}'{did_you_mean(self.protocol, list(PROTOCOLS))}; "
                              f"accepted: {', '.join(PROTOCOLS)}")
        if self.seed < 0:
            raise CtxextError(f"--seed must be >= 0, got {self.seed}")
        for name in ("samples", "windows", "stride", "bucket", "max_new_tokens"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise CtxextError(f"--{name.replace('_', '-')} must be >= 1, got {v}")

        if (self.windows or 1) > 1 and self.protocol == "sliding":
            raise CtxextError("--windows acts on the window protocol; the sliding one already reads 2L tokens of each "
                              "document: use --protocol window or both, or drop --windows")

    def samples_for(self, task: Task) -> int:
        return self.samples if self.samples is not None else task.default_samples


PROTOCOLS = ("window", "sliding", "both")


@dataclass
class TaskContext:
    """Everything a task needs for one spec: the loaded model (spec applied), data, settings, and the
    runner's callbacks (`tick(flops)` advances the progress bar, `log(line)` reports)."""

    lm: Any  # ctxext.models.LoadedModel
    spec: Any  # ctxext.scaling.Spec
    settings: Settings
    docs: list | None
    out: Path
    cost: Any  # ctxext.evals.cost.ModelCost
    same_freqs: Callable[[int, int], bool]  # do forwards of these two lengths rotate shared positions alike?
    tick: Callable[[float], None] = lambda flops: None
    log: Callable[[str], None] = print
    memo: dict[str, Any] = field(default_factory=dict)  # shared by the tasks of one spec (ppl curves for fit)
    bucket: int = 1024
    data: dict[str, Any] = field(default_factory=dict)  # task name -> what its read_data returned
    depths: list[float] = field(default_factory=list)  # every depth of the run (pending or not): sizes haystacks

    @property
    def model(self) -> Any:
        return self.lm.model

    @property
    def tokenizer(self) -> Any:
        return self.lm.tokenizer

    def record(self, task: str, length: int, depth: float | None, metric: str, value: float | None, n: int,
               bucket: tuple[int, int] | None = None) -> dict[str, Any]:
        return {"model": self.lm.name, "scaling": self.spec.text, "task": task, "length": int(length),
                "depth": depth, "bucket": list(bucket) if bucket is not None else None, "metric": metric,
                "value": None if value is None else float(value), "n": int(n)}


@dataclass(frozen=True)
class Task:
    name: str
    summary: str
    run: Callable[[TaskContext, list[Cell]], Iterator[tuple[Cell, list[dict[str, Any]]]]]
    cost: Callable[..., tuple[float, float]]  # (model_cost, length, depths, settings) -> (flops per cell, peak bytes)
    metric: str  # the headline metric of the summary table
    # the cost also depends on the spec (stream-ppl: streaming attends to a fixed window): cost gets `spec=` too
    spec_cost: bool = False
    needs_data: bool = False
    uses_depths: bool = False
    default_samples: int = 1
    requires: tuple[str, ...] = ()  # tasks whose results this one reads (run first, added when missing)
    higher_is_better: bool = False
    check: Callable[[list, list[int]], None] | None = None  # (documents, lengths): CtxextError if data cannot serve
    # reads --data itself instead of as token streams: (paths) -> anything, called before weights load (errors fail
    # early); the result is ctx.data[name]
    read_data: Callable[[list[str]], Any] | None = None
    # (tokenizer, settings, length, cells, own data): CtxextError when the prompt cannot fit `length` or its answer
    # the decoding budget; called before weights load (it failed mid-run, after earlier tasks' cells)
    check_prompt: Callable[[Any, Settings, int, list[Cell], Any], None] | None = None
    # the eval options (argparse dests) this task acts on: one given for tasks that all ignore it is refused
    options: tuple[str, ...] = ()
    version: int = 1  # raised when what the task measures changes: a resumed folder measures older cells again
    samples_are_documents: bool = False  # --samples counts --data documents (ppl): the estimate caps it by them
    # (model cost, the lengths a run measures, settings, same_freqs) -> {length: FLOPs run() reads from a longer
    # length's forward instead of computing}: the estimate leaves them out (ppl's shorter windows are slices)
    shared: Callable[[Any, list[int], Settings, Callable[[int, int], bool]], dict[int, float]] | None = None

    def cells(self, lengths: list[int], depths: list[float]) -> list[Cell]:
        return [(L, d) for L in lengths for d in depths] if self.uses_depths else [(L, None) for L in lengths]


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    TASKS[task.name] = task
    return task


BUILTIN_ORDER = ("ppl", "passkey", "niah", "needle-ppl", "stream-ppl", "fit", "longqa")  # how listings show them; others follow


def get_task(name: str) -> Task:
    names = task_names()
    if name not in TASKS:
        raise CtxextError(f"unknown task '{name}'{did_you_mean(name, names)}; accepted: {', '.join(names)}")
    return TASKS[name]


def task_names() -> list[str]:
    _load_all()
    return sorted(TASKS, key=lambda n: BUILTIN_ORDER.index(n) if n in BUILTIN_ORDER else len(BUILTIN_ORDER))


def _load_all() -> None:
    from . import fit, needle_ppl, niah, passkey, ppl, stream_ppl  # noqa: F401  (registration side effects)
    from . import longqa  # noqa: F401
