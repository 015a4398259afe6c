"""One run: every spec × task × length (× depth) on one model load.

Order of work: validate everything that needs no weights (tasks, specs against the model's config, lengths,
depths, data paths, memory per length) -> state the cost -> load the model once -> per spec: apply it in place,
run each task's pending cells, rewrite results.json after every finished cell -> summary.md and plots (also
when interrupted).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import CtxextError
from .attention import fast_attention
from .cost import (ModelCost, attention_rate, available_memory, fmt_bytes, fmt_seconds, matmul_rate,
                   plan_attention_weight)
from .progress import WorkBar, layer_hooks
from .results import RESUME_KEYS, Results, write_summary
from .scoring import device_of
from .tasks import Settings, Task, TaskContext, get_task, task_names

DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


def resolve_tasks(names: Iterable[str]) -> list[Task]:
    """Tasks by name, each after the tasks it reads (added when not asked for)."""
    names = list(dict.fromkeys(names))
    if not names:
        raise CtxextError(f"no task given; pass --task (accepted: {', '.join(task_names())})")
    out: list[Task] = []

    def add(name: str) -> None:
        t = get_task(name)
        for dep in t.requires:
            add(dep)
        if t not in out:
            out.append(t)

    for n in names:
        add(n)
    return out


def _items(x: Any) -> list:
    """A comma-separated string or an iterable -> list of items."""
    if isinstance(x, str):
        return [p for p in (s.strip() for s in x.split(",")) if p]
    return list(x)


def parse_lengths(lengths: Iterable[int | str] | str) -> list[int]:
    lengths, out = _items(lengths), []
    for x in lengths:
        try:
            v = int(str(x).replace("_", "").replace(",", ""))
        except ValueError:
            raise CtxextError(f"length '{x}' is not an integer number of tokens") from None
        if v < 2:
            raise CtxextError(f"length {v} is too short; lengths are token counts >= 2")
        out.append(v)
    if not out:
        raise CtxextError("no length given; pass --lengths, e.g. 4096,8192,16384")
    return sorted(set(out))


def parse_depths(depths: Iterable[float | str] | str | None) -> list[float]:
    if depths is None:
        return list(DEFAULT_DEPTHS)
    depths, out = _items(depths), []
    for x in depths:
        try:
            v = float(x)
        except ValueError:
            raise CtxextError(f"depth '{x}' is not a number; depths are fractions in [0, 1]") from None
        if not 0.0 <= v <= 1.0:
            raise CtxextError(f"depth {v:g} is outside [0, 1] (0 = needle at the start, 1 = just before the question)")
        out.append(v)
    if not out:
        raise CtxextError("no depth given; depths are fractions in [0, 1], e.g. 0,0.5,1")
    return sorted(set(out))


def default_bucket(lengths: list[int]) -> int:
    """A power of two giving ~8 buckets at the longest length."""
    target = max(1, max(lengths) // 8)
    return 1 << (target.bit_length() - 1)


def same_freqs_of(spec: Any, info: Any) -> Callable[[int, int], bool]:
    """Do forwards of lengths a and b rotate the positions they share alike? Always for static methods and the
    causal dynamic ones (a token's frequencies depend on its own position only); for longrope only when a and b
    are on the same side of the original length (short vs long factors). `default` is the checkpoint as loaded,
    whose own config may scale by length (Phi-3-128k, or a longrope / dynamic export): stock longrope switches
    like ctxext's; stock dynamic NTK rescales the whole forward for its own length past the window (ctxext resets
    its state before each forward), so forwards agree only when both are shorter than the window."""
    if info.encoding != "rope":
        return lambda a, b: True
    if spec.method == "default":
        from ..scaling.hf import config_rope_type

        L, kind = info.rope_shape.original_len, config_rope_type(info.config)
        if kind == "longrope":
            return lambda a, b: (a > L) == (b > L)
        if kind == "dynamic":
            return lambda a, b: a < L and b < L
        return lambda a, b: True
    if not spec.entry.length_dependent:
        return lambda a, b: True
    from ..models.apply import position_shape
    from ..models.attention import CausalLengthPlan, make_plan
    from ..scaling.attention import POSITION_METHODS

    # the shape apply_spec plans with: a position method keeps a self-scaled checkpoint's own window (Llama 3.1)
    plan = make_plan(spec, position_shape(info) if spec.method in POSITION_METHODS else info.rope_shape)
    if isinstance(plan, CausalLengthPlan):
        return lambda a, b: True
    return lambda a, b: plan.bucket(a) == plan.bucket(b)


@dataclasses.dataclass
class Plan:
    """What will run, and its stated cost."""

    tasks: list[Task]
    cells: dict[tuple[str, str], list[tuple[int, float | None]]]  # (spec, task) -> pending cells
    flops: dict[tuple[str, str, int], float]  # (spec, task, length) -> FLOPs per cell
    peak: dict[tuple[str, str, int], float]  # (spec, task, length) -> bytes
    rate: float  # matmul FLOP/s; flops count attention at its own rate in matmul-equivalent FLOPs
    attn_rate: float

    @property
    def seconds(self) -> float:
        return sum(self.flops[(s, t, L)] for (s, t), cs in self.cells.items() for L, _ in cs) / self.rate

    def describe(self) -> str:
        """One row per (task, length); a spec whose cost differs from the others' gets its own row."""
        rows: dict[tuple[str, int, float, float], list[str]] = {}
        for (s, t), cs in self.cells.items():
            for L in dict.fromkeys(L for L, _ in cs):
                rows.setdefault((t, L, self.flops[(s, t, L)], self.peak[(s, t, L)]), []).append(s)
        order = [t.name for t in self.tasks]
        n = sum(len(c) for c in self.cells.values())
        lines = [f"{n} cells to run; estimate per cell (peak memory, time from this machine's measured matmul rate, "
                 f"{self.rate / 1e9:.0f} GFLOP/s, and causal attention rate, {self.attn_rate / 1e9:.0f} GFLOP/s):"]
        for (t, L, f, m), specs in sorted(rows.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1], kv[0][2])):
            split = sum(1 for k in rows if k[:2] == (t, L)) > 1
            lines.append(f"  {t:<11} {L:>8,} tokens   {fmt_bytes(m):>8}   {fmt_seconds(f / self.rate):>8}"
                         + (f"   ({', '.join(specs)})" if split else ""))
        lines.append(f"  total ≈ {fmt_seconds(self.seconds)}")
        return "\n".join(lines)


def run_eval(model: Any, specs: Iterable[str], tasks: Iterable[str], lengths: Iterable[int | str],
             depths: Iterable[float | str] | None = None, samples: int | None = None,
             data: Iterable[str | Path] | None = None, out: str | Path = "runs/eval", resume: bool = False, *,
             dry_run: bool = False, **kw: Any) -> dict[str, Any]:
    """Run every spec × task × length (× depth) on one model load; -> the results dict written to out/results.json
    (see _run_eval for the options). A run holds out's lock from before it reads results.json to its last write:
    a second run into the same folder is refused (it rewrote the first's cells away)."""
    from ..lock import out_lock

    with contextlib.nullcontext() if dry_run else out_lock(out, "eval"):
        return _run_eval(model, specs, tasks, lengths, depths, samples, data, out, resume, dry_run=dry_run, **kw)


def _run_eval(model: Any, specs: Iterable[str], tasks: Iterable[str], lengths: Iterable[int | str],
             depths: Iterable[float | str] | None = None, samples: int | None = None,
             data: Iterable[str | Path] | None = None, out: str | Path = "runs/eval", resume: bool = False, *,
             seed: int = 0, protocol: str = "window", windows: int | None = None, stride: int | None = None,
             bucket: int | None = None, reuse_prefix: bool = True, max_new_tokens: int = 16, dtype: str | None = None,
             progress: bool = True, log: Callable[[str], None] | None = None, command: str | None = None,
             dry_run: bool = False, device: str = "auto") -> dict[str, Any]:
    """Run every spec × task × length (× depth) on one model load; -> the results dict written to out/results.json.

    `model`: a name for ctxext.models.load_model, or a LoadedModel already in memory. `specs`: spec strings as the
    user wrote them (results are keyed by them). `samples`: documents (ppl) or trials per cell (needle tasks);
    None keeps each task's default. With `resume`, cells already in out/results.json are skipped. `device`: where a
    model loaded by name runs (auto: the GPU when one is visible); a LoadedModel stays where it is. `dtype`: what a
    model loaded by name is loaded in (default float32); a LoadedModel runs, and is recorded, in its own.
    """
    import torch

    from .. import runinfo
    from ..data import data_files, document_count, files_key, load_documents
    from ..models import apply_spec, check_before_weights, load_model, model_info, resolve_device
    from ..models.load import require_tokenizer
    from ..scaling import parse_spec

    log = log or _err
    specs = [specs] if isinstance(specs, str) else specs  # one spec as a string was split into its characters
    tasks = [tasks] if isinstance(tasks, str) else tasks
    task_list = resolve_tasks(tasks)
    Ls = parse_lengths(lengths)
    uses_depths = any(t.uses_depths for t in task_list)
    Ds = parse_depths(depths) if uses_depths else []
    spec_texts = list(dict.fromkeys(s.strip() for s in specs)) or ["default"]
    parsed = [parse_spec(s) for s in spec_texts]
    lm = None if isinstance(model, str) else model
    given_spec = None if lm is None else lm.spec  # a model handed in is handed back with the spec it came with
    info = model_info(model) if lm is None else lm.info
    for s in parsed:
        check_before_weights(s, info)
    data = [str(p) for p in (data or [])]
    needs = [t.name for t in task_list if t.needs_data]
    if needs and not data:
        raise CtxextError(f"task {', '.join(needs)} needs --data (text files, folders or .jsonl with long documents)")
    files = data_files(data) if needs else []  # missing paths fail now, before any weights
    wanted = [samples or t.default_samples for t in task_list if t.samples_are_documents]
    n_docs = document_count(files, enough=max(wanted)) if wanted else 0  # only a ppl estimate reads it
    readers = [t.name for t in task_list if t.read_data is not None]
    streams = any(t.needs_data and t.read_data is None for t in task_list)
    if readers and streams:  # one --data serves both kinds: QA files are no text, and the other way round
        others = [t.name for t in task_list if t.needs_data and t.read_data is None]
        raise CtxextError(f"{', '.join(readers)} cannot share --data with {', '.join(others)}: it reads files of "
                          f"its own kind, they read text; run {', '.join(readers)} in a ctxext eval of its own")
    own_data = {t.name: t.read_data(data) for t in task_list if t.read_data is not None}
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if lm is not None:  # results, resume keys and the estimate must name the precision that really ran
        own = str(lm.model.dtype).removeprefix("torch.")
        if dtype is not None and dtype != own:
            raise CtxextError(f"dtype '{dtype}' applies to a model loaded by name; this model is already in {own}")
        dtype = own
        dtypes[own] = lm.model.dtype
    dtype = dtype or "float32"
    try:
        torch_dtype = dtypes[dtype]
    except KeyError:
        raise CtxextError(f"unknown dtype '{dtype}'; accepted: float32, bfloat16, float16") from None
    out = Path(out)
    settings = Settings(seed=seed, samples=samples, protocol=protocol, windows=windows, stride=stride, bucket=bucket,
                        reuse_prefix=reuse_prefix, max_new_tokens=max_new_tokens)
    if settings.bucket is None:  # a resumed run keeps the bucket width its records were written with
        old = _previous_bucket(out) if resume else None
        settings = dataclasses.replace(settings, bucket=old or default_bucket(Ls))
    name = model if isinstance(model, str) else lm.name
    device = resolve_device(device) if lm is None else str(device_of(lm.model))

    resume_keys = {"model": name, "dtype": dtype, "seed": seed, "samples": samples, "protocol": protocol,
                   "windows": windows, "stride": stride, "bucket": settings.bucket, "max_new_tokens": max_new_tokens,
                   "data": [str(Path(p).resolve()) for p in data] if needs else None,
                   # the files behind it, by name and size: a book added to a --data folder between runs put
                   # other documents beside the old cells in one table
                   "data_files": files_key(files) if needs else None}
    assert set(resume_keys) == set(RESUME_KEYS)
    acting = {"model", "dtype", "seed", "data", "data_files"} | {o for t in task_list for o in t.options
                                                                  if o in RESUME_KEYS}
    # an option no task of the run acts on is recorded as null, so a task added later may set it (a passkey folder
    # refused `ppl --bucket 128`: "other settings (bucket 32 -> 128)", from a default it never used)
    resume_keys = {k: (v if k in acting else None) for k, v in resume_keys.items()}
    meta = {
        "versions": runinfo.versions(), "seed": seed, "command": command,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "runs": 1,
        "machine": runinfo.machine(),
        "config": {
            "model": name, "model_info": _info_dict(info), "specs": {s.text: s.to_dict() for s in parsed},
            "tasks": [t.name for t in task_list], "lengths": Ls, "depths": Ds or None,
            "settings": dataclasses.asdict(settings), "data": data or None, "dtype": dtype, "device": device,
            "resume_keys": resume_keys, "resume_acting": sorted(acting),
            "task_versions": {t.name: t.version for t in task_list},
        },
    }
    results = Results(out, meta, resume, acting)  # acting: the resume keys this run's cells depend on

    # ---- the plan and its cost, before any weights
    where = device  # "cuda:1" measures and sizes GPU 1, not the current GPU 0
    rate, attn_rate = matmul_rate(torch_dtype, where), attention_rate(torch_dtype, where)
    mc = dataclasses.replace(ModelCost.of(info, torch.finfo(torch_dtype).bits // 8, attn_weight=rate / attn_rate),
                             fused=where == "cpu")
    meta["machine"]["matmul_flops"] = rate
    meta["machine"]["attention_flops"] = attn_rate

    def plan_weight() -> float:  # measured only when a dynamic spec asks
        meta["machine"]["plan_attention_weight"] = plan_attention_weight(torch_dtype, where)
        return meta["machine"]["plan_attention_weight"]

    shape = info.rope_shape if info.encoding == "rope" else None
    costs = {s.text: mc.for_spec(s, shape, plan_weight) for s in parsed}
    cells = {(s.text, t.name): [c for c in t.cells(Ls, Ds) if not results.finished(name, s.text, t.name, *c)]
             for s in parsed for t in task_list}
    flops, peak = {}, {}
    for t in task_list:
        # a task that reads its own items (longqa) runs at most as many as the files hold
        # and one that averages documents (ppl) at most as many as --data holds (one book was stated 4x too long)
        most = len(own_data[t.name]) if t.name in own_data else n_docs if t.samples_are_documents else None
        cap = dataclasses.replace(settings, samples=min(settings.samples_for(t), most)) if most else settings
        for s in parsed:
            for L in Ls:
                key = (s.text, t.name, L)
                c = costs[s.text]
                flops[key], peak[key] = t.cost(c, L, Ds, cap, spec=s) if t.spec_cost else t.cost(c, L, Ds, cap)
            if t.shared is not None:  # work a cell reads from another cell of this run
                pending = sorted({L for L, _ in cells[(s.text, t.name)]})
                for L, saved in t.shared(costs[s.text], pending, cap, same_freqs_of(s, info)).items():
                    flops[(s.text, t.name, L)] -= saved
    plan = Plan(task_list, {k: v for k, v in cells.items() if v}, flops, peak, rate, attn_rate)
    free = available_memory(where)
    for (st, t, L), need in peak.items():
        if need > free and any(c[0] == L for c in plan.cells.get((st, t), [])):
            who = f"{t} with '{st}'" if get_task(t).spec_cost else t
            raise CtxextError(f"length {L:,} cannot fit in memory for {who}: it needs ≈ {fmt_bytes(need)} (weights "
                              f"{fmt_bytes(mc.weights())}), {fmt_bytes(free)} is available; drop that length or free "
                              "memory")
    if lm is None and plan.cells:
        require_tokenizer(model, "evaluate", "every task needs to write its prompts and read its text")
    _check_prompts(model if lm is None else lm.tokenizer, task_list, plan, settings, own_data)
    log(f"ctxext eval: {name} ({info.encoding}, trained length {info.trained_len:,}), {len(parsed)} spec(s) × "
        f"{len(task_list)} task(s) × {len(Ls)} length(s)" + (f" × {len(Ds)} depth(s)" if Ds else "") + f" -> {out}")
    log(plan.describe() if plan.cells else "every cell is already in results.json; nothing to run")
    if dry_run:
        return {**results.as_dict(), "estimated_seconds": plan.seconds}

    # ---- run
    try:
        if plan.cells:
            if lm is None:
                lm = load_model(model, dtype=torch_dtype, device=device)
            if lm.tokenizer is None:
                raise CtxextError(f"{name} has no tokenizer files; ctxext eval needs one")
            docs = load_documents(data, lm.tokenizer) if streams else None
            for t in task_list:
                if t.check is not None and docs is not None:
                    t.check(docs, sorted({L for (_, tn), cs in plan.cells.items() if tn == t.name for L, _ in cs}))
            _run(lm, parsed, task_list, plan, settings, docs, out, results, costs, progress, log, apply_spec,
                 own_data, Ds)
    finally:
        if results.records:
            results.write()  # the merged meta too, not only when a cell finished: summary.md says the same
            _write_reports(out, results, info)
        if not isinstance(model, str) and lm.spec is not given_spec:  # it held the last spec evaluated
            apply_spec(lm, given_spec or parse_spec("default"))
    return results.as_dict()


def _check_prompts(model: Any, tasks: list[Task], plan: Plan, settings: Settings, own_data: dict[str, Any]) -> None:
    """Each task's prompt must fit each pending length (and its answer the decoding budget): checked with the
    tokenizer alone, before any weights (`model`: a name, or a loaded model's tokenizer)."""
    pending = {t.name: sorted({c for (_, tn), cs in plan.cells.items() if tn == t.name for c in cs},
                              key=lambda c: (c[0], -1.0 if c[1] is None else c[1]))
               for t in tasks if t.check_prompt is not None}
    if not any(pending.values()):
        return
    from ..models.load import tokenizer_of

    tok = tokenizer_of(model) if isinstance(model, str) else model
    if tok is None:
        return  # no tokenizer files: loading the model says so
    for t in tasks:
        for L in sorted({c[0] for c in pending.get(t.name, [])}):
            t.check_prompt(tok, settings, L, [c for c in pending[t.name] if c[0] == L], own_data.get(t.name))


def _run(lm: Any, specs: list, tasks: list[Task], plan: Plan, settings: Settings, docs: Any, out: Path,
         results: Results, costs: dict[str, ModelCost], progress: bool, log: Callable[[str], None], apply_spec: Any,
         own_data: dict[str, Any] | None = None, depths: list[float] | None = None) -> None:
    import torch
    from tqdm.auto import tqdm

    from ..progress import progress_bar

    dec = 2 if plan.seconds < 100 else 0  # tiny models: whole seconds would read 0/0
    bar = progress_bar(total=max(plan.seconds, 1e-3), unit="s", disable=not progress,
                       bar_format=f"{{desc}} {{percentage:3.0f}}%|{{bar}}| {{n:.{dec}f}}/{{total:.{dec}f}} est. s "
                                  "[{elapsed}<{remaining}{postfix}]")
    say = (lambda m: tqdm.write(m, file=sys.stderr)) if progress else log
    work = WorkBar(bar, plan.rate, n_layers=lm.info.n_layers)
    # a long forward moves the bar layer by layer (provisionally, until its task reports the work done)
    hooks = layer_hooks(lm.model, work.layer) if progress else contextlib.nullcontext()
    try:
        with torch.inference_mode(), fast_attention(lm.model), hooks:
            for spec in specs:
                todo = [(t, plan.cells.get((spec.text, t.name), [])) for t in tasks]
                if not any(c for _, c in todo):
                    continue
                apply_spec(lm, spec)
                work.cost = costs[spec.text]
                ctx = TaskContext(lm=lm, spec=spec, settings=settings, docs=docs, out=out, cost=costs[spec.text],
                                  same_freqs=same_freqs_of(spec, lm.info), log=say, bucket=settings.bucket,
                                  tick=work.done, data=own_data or {}, depths=list(depths or []))
                ctx.memo["records"] = [r for r in results.records if r["scaling"] == spec.text]
                for task, cells in todo:
                    if not cells:
                        continue
                    bar.set_description_str(f"{spec.text} · {task.name}", refresh=False)  # tqdm's throttle decides
                    t0 = time.perf_counter()
                    for cell, recs in task.run(ctx, cells):
                        # time since the task's previous cell: cells that share work (depths on one prefix) split
                        # it unevenly, their sum is the task's
                        now = time.perf_counter()
                        est = plan.flops[(spec.text, task.name, cell[0])] / plan.rate
                        results.timed({"scaling": spec.text, "task": task.name, "length": cell[0], "depth": cell[1],
                                       "seconds": round(now - t0, 3), "estimated_seconds": round(est, 3)})
                        t0 = now
                        lost = sum(isinstance(r.get("value"), float) and not math.isfinite(r["value"]) for r in recs)
                        if lost:  # recorded as null: say why where the user sees it
                            say(f"{task.name} @ {cell[0]:,} ({spec.text}): {lost} value(s) are not finite (NaN/inf) "
                                "and are recorded as null; in float16 that is an overflow (bfloat16 or float32 "
                                "avoid it)")
                        results.add(recs)
                        ctx.memo["records"] += recs
                        head = next((r for r in recs if r["bucket"] is None), recs[0] if recs else None)
                        if head is not None and head["value"] is not None:
                            bar.set_postfix_str(f"{cell[0]:,}" + (f" @ {cell[1]:g}" if cell[1] is not None else "")
                                                + f": {head['metric']} {head['value']:.4g}", refresh=False)
    finally:
        bar.close()


def _write_reports(out: Path, results: Results, info: Any) -> None:
    from .plots import write_plots

    name = results.meta["config"]["model"]
    windows = (results.meta["config"].get("settings") or {}).get("windows") or 1
    plots = write_plots(out, results.records, info.trained_len, name, windows)
    write_summary(out, results.meta, results.records, plots)


def _previous_bucket(out: Path) -> int | None:
    import json

    try:
        config = json.loads((out / "results.json").read_text())["meta"]["config"]
        # a folder whose tasks never bucketed (passkey) leaves it null: the new run's lengths decide
        return config["resume_keys"]["bucket"] if "resume_keys" in config else config["settings"]["bucket"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _info_dict(info: Any) -> dict[str, Any]:
    d = {k: getattr(info, k) for k in ("encoding", "n_params", "n_layers", "hidden_size", "n_heads", "n_kv_heads",
                                       "vocab_size", "trained_len")}
    if info.rope_shape is not None:
        d["rope"] = {"rotary_dim": info.rope_shape.rotary_dim, "base": info.rope_shape.base,
                     "original_len": info.rope_shape.original_len}
    d["path"] = str(info.path)
    return d
