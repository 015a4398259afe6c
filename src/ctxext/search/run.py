"""`run_search`: validate (no weights) -> load the model and data once -> search -> best.json, results.json,
summary.md, PNGs. Used by `ctxext search` and by benchmarks/tests."""

from __future__ import annotations

import datetime as dt
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import CtxextError
from .driver import Rung, Search, SearchConfig, write_state
from .fitness import FITNESSES, Evaluator, check_data
from .guard import attention_cap
from .report import CURVE_PNG, FACTORS_PNG, plot_curve, plot_factors, write_best, write_summary
from .seeds import seed_candidates
from .space import make_space

REFERENCES = "references.json"  # the reference spec's measured parts, by "LENGTHxSAMPLES"


def run_search(model: Any, data: list[str | Path], out: str | Path, config: SearchConfig, *, resume: bool = False,
               progress: bool = True, command: str | None = None,
               log: Callable[[str], None] | None = None, device: str = "auto") -> dict[str, Any]:
    """Search per-pair factors for `model` (a name for load_model, or a LoadedModel) at config.target; -> the
    results dict written to out/results.json. `device`: where a model loaded by name runs (auto: the GPU when
    one is visible). Holds out's lock: a second search into it is refused (it evaluated everything again)."""
    from ..lock import out_lock

    with out_lock(out, "search"):
        return _run_search(model, data, out, config, resume=resume, progress=progress, command=command, log=log,
                           device=device)


def _run_search(model: Any, data: list[str | Path], out: str | Path, config: SearchConfig, *, resume: bool,
                progress: bool, command: str | None, log: Callable[[str], None] | None, device: str) -> dict[str, Any]:
    from .. import runinfo
    from ..data import data_files, files_key, load_documents, special_prefix
    from ..evals.scoring import device_of
    from ..models import load_model, model_info, resolve_device
    from ..theory import critical_dim

    log = log or (lambda m: print(m, file=sys.stderr))
    if config.fitness not in FITNESSES:
        raise CtxextError(f"unknown fitness '{config.fitness}'; accepted: {', '.join(FITNESSES)}")
    lm = None if isinstance(model, str) else model
    device = resolve_device(device) if lm is None else str(device_of(lm.model))
    info = model_info(model) if lm is None else lm.info
    name = model if isinstance(model, str) else lm.name
    if info.encoding != "rope" or info.rope_shape is None:
        raise CtxextError(f"ctxext search needs a RoPE model; {name} uses {info.encoding}")
    from ..models.apply import check_attention_model

    check_attention_model("longrope", info.config.get("model_type"))  # what the search evaluates, before weights
    shape = info.rope_shape
    config.check(shape.original_len)
    c = critical_dim(shape.rotary_dim, shape.base, shape.original_len) // 2
    free = make_space(shape.n_pairs, config.target / shape.original_len, c, shape.original_len,
                      search_critical=config.search_critical)
    if not any(h > lo for lo, h in zip(free.lo, free.hi)):  # it failed after the weights and the guard
        raise CtxextError(f"--fixed-critical pins every pair here (critical pair {c} of {shape.n_pairs}): nothing "
                          "to search; drop --fixed-critical")
    rungs = config.resolved_rungs(shape.original_len)
    if rungs[-1] != Rung(config.target, config.samples):
        raise CtxextError(f"the last rung must be the full evaluation ({config.target} × {config.samples})")
    data = [str(p) for p in data]
    files = data_files(data)  # missing paths fail now, before any weights
    out = Path(out)
    data_key = [str(f.resolve()) for f in files]
    write_state(out, config, {"model": name, "data": data_key, "data_files": files_key(files)}, resume)
    state_cost(info, config, log, device)
    if lm is None:
        from ..models.load import require_tokenizer

        require_tokenizer(model, "search", "the fitness needs to read the --data text")

    import torch

    if lm is None:
        lm = load_model(model, dtype=torch.float32, device=device)
    if lm.tokenizer is None:
        raise CtxextError(f"{name} has no tokenizer files; ctxext search needs one")
    docs = load_documents(data, lm.tokenizer)
    prefix = special_prefix(lm.tokenizer)
    check_data(docs, config.target, config.fitness, config.samples, prefix)
    for r in rungs[:-1]:  # a proxy rung asking more passages than the data holds failed after the first generation
        try:
            check_data(docs, r.length, config.fitness, r.samples, prefix)
        except CtxextError as e:
            raise CtxextError(f"--rung {r.length}:{r.samples}: {e}") from None

    scale = config.target / shape.original_len
    ev = Evaluator(lm, docs, config.fitness, config.target, config.samples, config.seed, scratch=out)
    guard, guard_cost = None, 0.0
    full_cost = ev.cost(config.target, config.samples)
    for r in rungs[:-1]:  # a proxy is a cheaper first look: one dearer than the full rung makes halving cost more
        if ev.cost(r.length, r.samples) >= full_cost:
            raise CtxextError(f"--rung {r.length}:{r.samples} costs {ev.cost(r.length, r.samples):.3g} full-length "
                              f"evaluations, not less than the full rung's {full_cost:.3g}: give proxy rungs fewer "
                              "tokens or samples")
    config.check_first_generation(0.0, reference_cost(ev, rungs), full_cost)  # clearly short: before the guard runs
    if config.short_tolerance is not None:
        wide = make_space(shape.n_pairs, scale, c, shape.original_len, search_attention=config.search_attention)
        longest = max((len(d) for d in docs), default=0)
        if longest < shape.original_len - len(prefix):  # the guard scores passages of the trained length
            raise CtxextError(f"the in-window guard scores passages of the trained length {shape.original_len:,}; "
                              f"the longest search document has {longest:,} tokens: give longer documents, or "
                              "--short-tolerance -1 to search without the guard")
        check_data(docs, shape.original_len, "ppl", config.samples, prefix)
        guard = attention_cap(out, lambda m: ev.short_ppl(m, config.samples), wide.attention_range[1],
                              config.short_tolerance, resume)
        guard_cost = len(guard["probes"]) * ev.ppl_cost(shape.original_len, config.samples)
    # the reference (exact yarn:factor=s): for fitness both each rung's values are relative to it (in the budget);
    # for every fitness the search is compared with it at the target. Measured once, kept for resume
    config.check_first_generation(guard_cost, reference_cost(ev, rungs), full_cost)
    ref_cost = load_references(out, ev, rungs, resume)
    space = make_space(shape.n_pairs, scale, c, shape.original_len, search_critical=config.search_critical,
                       search_attention=config.search_attention, start_tokens=config.start_tokens,
                       max_attention=guard["cap"] if guard else None)
    seeds = seed_candidates(space, shape)
    rung_costs = [ev.cost(r.length, r.samples) for r in rungs]
    log(f"ctxext search: {name} (trained {shape.original_len:,}, rotary dim {shape.rotary_dim}, base {shape.base:g}) "
        f"→ {config.target:,} (s = {scale:g}); critical pair {c} of {shape.n_pairs}; fitness {config.fitness}; "
        f"budget {config.budget:g} full-length evaluations; rungs " +
        ", ".join(f"{r.length:,}×{r.samples} (cost {k:.3g})" for r, k in zip(rungs, rung_costs)) + f" -> {out}")
    if ref_cost:
        log(f"fitness both = max(needle-ppl / needle-ppl_ref, ppl / ppl_ref), reference {ev.reference_spec} measured at "
            f"every rung (cost {ref_cost:.3g}): " + "; ".join(f"{k}: " + ", ".join(f"{t} {v:.5g}" for t, v in p.items())
                                                          for k, p in ev.reference.items()))
    if guard is not None:
        log(f"in-window guard: ppl at {shape.original_len} with m = 1 is {guard['baseline']:.5g}; m <= {guard['cap']:.4g} "
            f"keeps it within {100 * config.short_tolerance:g} % (cost {guard_cost:.3g}); attention factor "
            + (f"searched in [1, {space.attention_range[1]:.4g}]" if config.search_attention
               else f"{space.attention_factor:.4g}"))

    from ..progress import progress_bar

    bar = progress_bar(total=config.budget, disable=not progress, unit="eval",
                       bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.1f}/{total:.0f} full evals "
                                  "[{elapsed}<{remaining}]")
    top = len(rungs) - 1

    def on_progress(spent: float, best: Any, what: str) -> None:
        bar.set_description_str(what, refresh=False)
        if best is not None:
            bar.set_postfix_str(f"best {config.fitness} {best.scores[top]:.5g}", refresh=False)
        bar.update(min(spent, config.budget) - bar.n)  # refreshes at most every mininterval

    search = Search(space, config, rungs, seeds, ev.evaluate, ev.cost, out, resume, on_progress,
                    spent=guard_cost + ref_cost)
    try:
        outcome = search.run()
    finally:
        bar.close()

    best = outcome.best
    yarn = outcome.seeds.get("yarn")
    beat = next((cost for cost, v in outcome.curve if yarn is not None and v < yarn), None)
    # the exact method the search competes with (the YaRN seed is it projected on the grid, m within the guard);
    # a reference measurement outside the budget, not a candidate
    ref_text = ev.reference_spec
    ref_parts = ev.reference_parts(config.target, config.samples)
    save_references(out, ev)  # a resumed (or re-run with --resume) search does not measure it again
    ref_value = ev.combine(ref_parts, config.target, config.samples)
    beat_ref = next((cost for cost, v in outcome.curve if v < ref_value), None)
    found = next(cost for cost, v in outcome.curve if v == best.scores[top])
    provenance = {"model": name, "target": config.target, "fitness": config.fitness,
                  "fitness_value": best.scores[top], "samples": config.samples, "seed": config.seed,
                  "cost": outcome.spent, "cost_unit": "full-length-evaluation equivalents",
                  "data": data_key, "found_by": "ctxext search"}
    best_path = write_best(out, best.cand, scale, shape.original_len, provenance)
    results = {
        "meta": {"versions": runinfo.versions(), "machine": runinfo.machine(), "command": command,
                 "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
        "config": {"model": name, "data": data, **{k: v for k, v in asdict(config).items() if k != "rungs"}},
        "rungs": [{"length": r.length, "samples": r.samples, "cost": k} for r, k in zip(rungs, rung_costs)],
        "space": {"n_pairs": space.n_pairs, "scale": scale, "critical_pair": c, "lo": list(space.lo),
                  "hi": list(space.hi), "attention_factor": space.attention_factor,
                  "attention_range": list(space.attention_range)},
        "guard": guard, "guard_cost": guard_cost, "reference_cost": ref_cost,
        "best": {"fitness": best.scores[top], "parts": best.parts.get(top, {}), "origin": best.origin, "found_at_cost": found,
                 "real_critical_pair": space.real_critical_pair(best.cand), **best.cand.to_dict(),
                 "spec": str(best_path)},
        "seeds": outcome.seeds, "seed_parts": outcome.seed_parts, "beat_yarn_at_cost": beat,
        "reference": {"spec": ref_text, "fitness": ref_value, "parts": ref_parts, "beaten_at_cost": beat_ref}, "spent": outcome.spent,
        "evaluations": outcome.evaluations, "replayed": outcome.replayed, "generations": outcome.generations,
        "stopped": outcome.stopped, "curve": outcome.curve,
        "population": [{"fitness": m.scores.get(top), "origin": m.origin, **m.cand.to_dict()}
                       for m in outcome.population],
    }
    from .report import _write_json

    _write_json(out / "results.json", results)
    refs = {n: np.asarray(seeds[n].factors) for n in ("pi", "ntk", "yarn") if n in seeds}
    plot_factors(out / FACTORS_PNG, space, best.cand, refs,
                 f"{name}: searched factors for {config.target:,} tokens (s = {scale:g})")
    plot_curve(out / CURVE_PNG, outcome.curve, {**{f"{n} seed": v for n, v in outcome.seeds.items()
                                                   if n in ("yarn", "ntk", "pi")}, ref_text: ref_value},
               f"{name}: best {config.fitness} vs cost", f"{config.fitness} at {config.target:,} (lower is better)")
    write_summary(out, results)
    log(f"best {config.fitness} {best.scores[top]:.6g} (YaRN seed {yarn if yarn is None else f'{yarn:.6g}'}, "
        f"{ref_text} {ref_value:.6g}) after "
        f"{outcome.spent:.2f} full-length evaluations -> {best_path}")
    return results


def state_cost(info: Any, config: SearchConfig, log: Callable[[str], None], device: str = "cpu") -> None:
    """Before any weights: time of one full evaluation and of the budget at this machine's measured matmul rate,
    and peak memory (refused when it cannot fit), from the eval tasks' own estimates."""
    import torch

    from ..evals import get_task
    from ..evals.cost import ModelCost, attention_weight, available_memory, fmt_bytes, fmt_seconds, matmul_rate
    from ..evals.tasks import Settings

    where = device  # "cuda:1": that GPU's rate and free memory
    mc = ModelCost.of(info, 4, attn_weight=attention_weight(torch.float32, where))
    names = ("needle-ppl", "ppl") if config.fitness == "both" else (config.fitness,)
    est = [get_task(n).cost(mc, config.target, [], Settings(seed=config.seed, samples=config.samples)) for n in names]
    flops, peak = sum(f for f, _ in est), max(p for _, p in est)
    free = available_memory(where)
    if peak > free:
        raise CtxextError(f"--target {config.target:,} cannot fit in memory: a forward needs ≈ {fmt_bytes(peak)}, "
                          f"{fmt_bytes(free)} is available; use a shorter target or free memory")
    rate = matmul_rate(torch.float32, where)
    log(f"estimate: one full-length evaluation ≈ {fmt_seconds(flops / rate)}, the budget of {config.budget:g} ≈ "
        f"{fmt_seconds(config.budget * flops / rate)} at {rate / 1e9:.0f} GFLOP/s; peak memory ≈ {fmt_bytes(peak)}")


def load_references(out: Path, ev: Evaluator, rungs: tuple[Rung, ...], resume: bool) -> float:
    """Reference (yarn:factor=s) parts from DIR/references.json on resume; for fitness `both` also measured at every
    rung now and stored -> their cost (counted in the budget; 0 for the other fitnesses)."""
    import json

    path = out / REFERENCES
    if resume and path.is_file():
        old = json.loads(path.read_text())
        if old.get("spec") == ev.reference_spec:
            ev.reference.update(old["parts"])
    if ev.fitness != "both":
        return 0.0
    for r in rungs:
        ev.reference_parts(r.length, r.samples)
    save_references(out, ev)
    return reference_cost(ev, rungs)


def reference_cost(ev: Evaluator, rungs: tuple[Rung, ...]) -> float:
    """What load_references counts in the budget, known before it measures anything."""
    return sum(ev.cost(r.length, r.samples) for r in rungs) if ev.fitness == "both" else 0.0


def save_references(out: Path, ev: Evaluator) -> None:
    import json
    import os

    path = out / REFERENCES
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"spec": ev.reference_spec, "parts": ev.reference}, indent=2))
    os.replace(tmp, path)


def config_from(target: int, **kw: Any) -> SearchConfig:
    """A SearchConfig from keyword options, `rungs` given as [(length, samples), …]."""
    rungs = tuple(Rung(int(a), int(b)) for a, b in kw.pop("rungs", ()) or ())
    return replace(SearchConfig(target=target), rungs=rungs, **kw)
