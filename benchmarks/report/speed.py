"""The speed section: eval_speed.py, train_speed.py and train_memory.py results, CPU and the lent GPU."""

from __future__ import annotations

import re
from pathlib import Path

from . import common
from .common import fmt_num, load_json, machine_text, run_machines


def _cpus(ev: dict) -> str:
    return str((ev.get("machine") or {}).get("cpu_count", "?"))


def _variant(r: dict) -> str:
    return {"": "ctxext (gradient checkpointing, chunked loss)", "naive": "naive transformers loop",
            "naive-ckpt": "naive + transformers' checkpointing"}.get(
        " ".join(r["extra"]), "ctxext " + " ".join(r["extra"]))


def naive_ratios(tr: dict, variant: str = "naive") -> dict[int, tuple[float, float]]:
    """ctxext / baseline (tokens/s, peak memory) at each length where both were measured in the same run."""
    done = [r for r in tr["runs"] if "tokens_per_second" in r and r.get("run")]
    out = {}
    for ours in (r for r in done if not r["extra"]):
        base = next((n for n in done if n["extra"] == [variant] and n["length"] == ours["length"]
                     and n["run"] == ours["run"]), None)
        if base:
            out[ours["length"]] = (ours["tokens_per_second"] / base["tokens_per_second"],
                                   ours["peak_memory_gib"] / base["peak_memory_gib"])
    return out


def speed_ratios(ev: dict | None, tr: dict | None) -> dict[str, tuple[int, float]]:
    """ctxext / the naive loop, by figure: (length, ratio); training at the shortest length with a same-run pair."""
    out = {}
    if ev and "ppl" in ev:
        o, n = ev["ppl"]["ours"], ev["ppl"]["naive"]
        out["eval tokens/s"] = (ev["length"], o["tokens_per_s"] / n["tokens_per_s"])
        out["eval peak RSS"] = (ev["length"], o["process_peak_mb"] / n["process_peak_mb"])
    if tr and (pairs := naive_ratios(tr)):
        length = min(pairs)
        out["training tokens/s"] = (length, pairs[length][0])
        out["training peak memory"] = (length, pairs[length][1])
    return out


def speed_ordering_note(full: dict[str, tuple[int, float]], quick: dict[str, tuple[int, float]]) -> str:
    """Does --quick put ctxext on the same side of the naive loop (ratio above or below 1) as the full runs?"""
    keys = [k for k in quick if k in full]
    if not keys:
        return ""
    same = all((quick[k][1] > 1) == (full[k][1] > 1) for k in keys)
    cells = [f"{k} {quick[k][1]:.2f}× at {quick[k][0]:,} (full: {full[k][1]:.2f}× at {full[k][0]:,})" for k in keys]
    return ("`--quick` (`eval_speed.py --quick`, `train_speed.py --quick`, separate runs), ctxext / naive: "
            + "; ".join(cells) + ". Same order as the full runs (each ratio on the same side of 1): "
            + ("yes" if same else "**no**") + ".")


def one_setup(run_meta: dict, meta: dict) -> tuple[str, str]:
    """(model, scaling) of every run a train_speed file holds, read per run; a file mixing runs of several (written
    before train_speed.py refused to merge them) is an error, since the table heads all its rows with one."""
    setups = {(m.get("model", meta["model"]), m.get("scaling", meta["scaling"])) for m in run_meta.values()}
    if len(setups) > 1:
        raise ValueError("train_speed file mixes runs of several models or scalings: "
                         + "; ".join(f"{m} {s}" for m, s in sorted(setups)))
    return next(iter(setups), (meta["model"], meta["scaling"]))


def timed_steps(r: dict) -> int | None:
    """How many steps a row's tokens/s is the mean of: its steps after the first (the warm-up)."""
    if r.get("step_seconds"):
        return max(len(r["step_seconds"]) - 1, 1)
    return max(r["steps"] - 1, 1) if r.get("steps") else None


def timed_steps_text(runs: list[dict]) -> str:
    """'1 timed step in every row', else the rows of each count (a whole length as its length)."""
    done = [r for r in runs if "tokens_per_second" in r]
    counts = sorted({timed_steps(r) for r in done}, key=lambda n: (n is None, n or 0))
    plural = lambda n: "steps not recorded" if n is None else f"{n} timed step{'s' if n != 1 else ''}"  # noqa: E731
    if len(counts) == 1:
        return f"{plural(counts[0])} in every row" + (": each tokens/s, and each ratio, is one step's figure"
                                                      if counts[0] == 1 else "")
    parts = []
    for n in counts:
        where = []
        for length in sorted({r["length"] for r in done}):
            at = [r for r in done if r["length"] == length]
            mine = [r for r in at if timed_steps(r) == n]
            where += [f"{length:,}"] if len(mine) == len(at) else [f"{length:,} {_variant(r)}" for r in mine]
        parts.append(f"{plural(n)} at {', '.join(where)}")
    return "; ".join(parts)


def train_speed_lines(tr: dict) -> list[str]:
    """One row per run, and ctxext / naive ratios where both were measured at a length in the same run."""
    meta = tr["meta"]
    peak = meta.get("peak_bf16_flops")  # set on a GPU: the last column is then model FLOPs utilisation
    runs = sorted({r["run"] for r in tr["runs"] if r.get("run")})
    # files written before runs kept their own details: the top-level meta is the last run's (each run rewrote it)
    run_meta = tr.get("run_meta") or ({runs[-1]: meta} if runs else {})
    model, scaling = one_setup(run_meta, meta)
    if "random" in Path(model).name:  # the GPU speed model (benchmarks/gpu_carry.py init): say what it is
        model = f"SmolLM2-135M's shape with random weights (`{model}`)"
    known = {machine_text(m.get("machine")) for m in run_meta.values()}
    if len(runs) > 1 and (len(known) > 1 or len(run_meta) < len(runs)):  # not one recorded machine for every row
        where = "rows from several runs, each one's machine below"
    else:
        where = machine_text(meta.get("machine")) + (f", {meta['device']}" if meta.get("device", "cpu") != "cpu" else "")
    lines = [f"Training {model} (full fine-tuning, `{scaling}`{', bf16 autocast' if device_memory(tr) else ''}; "
             f"{where}; `benchmarks/train_speed.py`):", "",
             "| length | run | tokens/s | peak memory | ctxext's estimate | "
             + (f"MFU (bf16 dense peak {peak / 1e12:.0f} TFLOP/s) |" if peak else "useful FLOP/s ÷ matmul rate |"),
             "|---:|---|---:|---:|---:|---:|"]
    pairs = {v: naive_ratios(tr, v) for v in ("naive", "naive-ckpt")}
    for length in sorted({r["length"] for r in tr["runs"]}):
        rows = [r for r in tr["runs"] if r["length"] == length]
        for r in rows:
            if "tokens_per_second" not in r:
                lines.append(f"| {length:,} | {_variant(r)} | – | {r['error']} | – | – |")
                continue
            est, frac = r.get("memory_estimate_gib"), r.get("mfu" if peak else "fraction_of_matmul_rate")
            lines.append(f"| {length:,} | {_variant(r)} | {fmt_num(r['tokens_per_second'])} | {r['peak_memory_gib']:.2f} GiB "
                         f"| {'–' if est is None else f'{est:.2f} GiB'} | {'–' if frac is None else f'{frac:.2f}'} |")
        for v, ratio in pairs.items():
            if length in ratio:
                lines.append(f"| {length:,} | **ratio** ctxext / {_variant({'extra': [v]})} (same run) | "
                             f"**{ratio[length][0]:.2f}×** | **{ratio[length][1]:.2f}×** | | |")
    if len(runs) > 1:  # rows merged from several runs: say which, since the machine's speed differs between them
        said = ["{} ({}; {})".format(run, ", ".join(f"{r['length']:,} {_variant(r)}" for r in tr["runs"]
                                                    if r.get("run") == run),
                                     machine_text(run_meta[run].get("machine")) if run in run_meta
                                     else "machine not recorded") for run in runs]
        lines += ["", f"Rows from {len(runs)} runs: " + "; ".join(said) + "."]
    lines += ["", f"tokens/s is the mean over the steps after the first ({timed_steps_text(tr['runs'])}); peak "
              "memory is " + ("torch.cuda.max_memory_allocated" if device_memory(tr) else "the process's peak RSS")
              + " after loading the model; useful work is 6·N + 12·layers·hidden·T FLOPs per token (recomputation "
              "not counted)" + rates_text(tr["runs"]) + ". The naive loop is `model(input_ids=x, labels=x).loss"
              ".backward()` with torch's AdamW (full-vocabulary logits, no checkpointing); \"+ transformers' "
              "checkpointing\" adds `gradient_checkpointing_enable()`. A baseline that outgrows the memory available "
              "is stopped by a watchdog. At each length ctxext and each baseline ran once, one after the other in the same run (ctxext first), "
              "not alternated or repeated: a ratio also carries whatever the machine's load did between the two."]
    return lines


def device_memory(tr: dict) -> bool:
    """Whether the file's peaks are a GPU's (torch.cuda.max_memory_allocated), not the process's RSS."""
    return bool(tr["meta"].get("peak_bf16_flops")) or tr["meta"].get("device", "cpu") != "cpu"


def rates_text(runs: list[dict]) -> str:
    """The matmul rate(s) the 'useful FLOP/s ÷ matmul rate' column divides by, with their dtype (fp32 on the CPU,
    bf16 on a GPU not in train_speed.py's peak table); rows written before the dtype was recorded are fp32."""
    by: dict[str, set[int]] = {}
    for r in runs:
        if rate := r.get("matmul_flops", r.get("fp32_matmul_flops")):
            by.setdefault(r.get("matmul_dtype", "float32"), set()).add(round(rate / 1e9))
    short = {"float32": "fp32", "bfloat16": "bf16"}
    return "".join(f", against the {short.get(d, d)} matmul rate measured {'on the GPU ' if d != 'float32' else ''}"
                   f"in the same run ({'/'.join(map(str, sorted(v)))} GFLOP/s)" for d, v in sorted(by.items()))


def train_memory_lines(tm: dict) -> list[str]:
    """Peak RSS of a training step with ctxext's allocator setting and with glibc's defaults, same run, by length."""
    threads = "/".join(str(t) for t in sorted({r["torch_threads"] for r in tm["runs"] if "torch_threads" in r}))
    lines = [f"Training memory by allocator ({tm['meta']['model']}, full fine-tuning, {threads} torch thread(s); "
             f"{run_machines(tm['meta'])}; `benchmarks/train_memory.py`):", "",
             "| length | peak, ctxext (mmap threshold 1 MiB) | peak, glibc defaults | ratio | tokens/s ratio "
             "| ctxext's estimate (current code) |", "|---:|---:|---:|---:|---:|---:|"]
    for length in sorted({r["length"] for r in tm["runs"]}):
        rows = {r.get("variant"): r for r in tm["runs"] if r["length"] == length}
        ours, base = rows.get("tuned"), rows.get("glibc")
        cell = lambda r: "–" if r is None else r.get("error") or f"{r['peak_gib']:.2f} GiB"  # noqa: E731
        ratio = (ours or {}).get("vs_glibc_default")
        est = "–" if not ours or "error" in ours else f"{ours['estimate_gib']:.2f} GiB"
        lines.append(f"| {length:,} | {cell(ours)} | {cell(base)} | "
                     + (f"**{ratio['peak']:.2f}×** | {ratio['tokens_per_second']:.2f}× |" if ratio else "– | – |")
                     + f" {est} |")
    timed = sorted({(r.get("steps_run", 2) - 1, r["length"]) for r in tm["runs"] if "error" not in r})
    by_steps: dict[int, list[str]] = {}
    for n, length in timed:
        by_steps.setdefault(n, []).append(f"{length:,}")
    lines += ["", "Peak RSS of any step (the highest of the forward, backward and optimizer phases); tokens/s from the "
              "steps after the first (" + "; ".join(f"{n} timed step(s) at {', '.join(ls)}" for n, ls in by_steps.items())
              + ", so the speed ratio is a rough figure)."
              + (f" Both variants side by side, one core each (the same load on both): {', '.join(side)}."
                 if (side := [f"{r['length']:,}" for r in tm["runs"]
                              if (r.get("vs_glibc_default") or {}).get("side_by_side")]) else "")
              + (f" Measured before ctxext train also asked torch for transparent huge pages (THP_MEM_ALLOC_ENABLE, "
                 f"fewer page faults on the fresh mappings): {', '.join(old)}."
                 if (old := [f"{r['length']:,}" for r in tm["runs"] if r.get("variant") == "tuned"
                             and "error" not in r and not r.get("thp_mem_alloc")]) else "")
              + " glibc raises its mmap threshold to 32 MiB as large blocks are freed, so "
              "activations below that land on a heap it never returns; ctxext train fixes the threshold on the CPU "
              "(`CTXEXT_NO_MALLOC_TUNING=1` keeps glibc's defaults)."]
    return lines


GPU_FILES = ("train_speed-", "eval_speed-", "eval-")  # what a lent GPU's run writes (benchmarks/gpu_run.sh)


def gpu_devices() -> list[str]:
    """The lent GPUs that have results: the <gpu> of train_speed-<gpu>.json (and its -3steps first run),
    eval_speed-<gpu>.json and eval-<gpu>.json, e.g. nvidia-h200 or nvidia-h100-80gb-hbm3."""
    found = set()
    for prefix in GPU_FILES:
        for f in common.RES.glob(f"{prefix}nvidia-*.json"):
            found.add(re.sub(r"-(\d+steps|quick)$", "", f.stem[len(prefix):]))
    return sorted(found)


def profile_figures(text: str) -> dict[str, float]:
    """From a benchmarks/profile_train_step.py table: steps, wall s/step, device s/step (the table's own kernel
    total, which counts each kernel once), kernel launches/step."""
    steps, wall = re.match(r"(\d+) optimizer steps profiled: wall ([\d.]+) s", text).groups()
    value, unit = re.search(r"Self CUDA time total: ([\d.]+)(ms|us|s)", text).groups()
    device = float(value) / {"s": 1, "ms": 1e3, "us": 1e6}[unit]
    launches = sum(int(m) for m in re.findall(r"^\s*(?:cudaLaunchKernel|cuLaunchKernelEx)\s.*?(\d+)\s*$",
                                               text.split("by device time:")[0], re.M))
    n = int(steps)
    return {"steps": n, "wall": float(wall), "device": device / n, "launches": launches / n}


def slow_step_note(runs: list[dict]) -> str:
    """Rows whose timed steps (the first is warm-up) hold one more than twice their median: the mean-based tokens/s
    of the table beside the median step's, and the ratio to the naive loop at the median."""
    import statistics

    def median_rate(r: dict) -> float | None:
        timed = r.get("step_seconds", [])[1:]
        return r["length"] / statistics.median(timed) if timed else None

    naive = {r["length"]: median_rate(r) for r in runs if r.get("extra") == ["naive"]}
    out = []
    for r in runs:
        timed = r.get("step_seconds", [])[1:]
        if r.get("extra") or len(timed) < 3 or max(timed) <= 2 * statistics.median(timed):
            continue
        m = median_rate(r)
        ratio = f", {m / naive[r['length']]:.2f}× the naive loop's" if naive.get(r["length"]) else ""
        out.append(f"at {r['length']:,} one timed step took {max(timed):.2f} s against a median of "
                   f"{statistics.median(timed):.2f} s: at the median step ctxext runs {m:,.0f} tokens/s{ratio} "
                   f"(the table's {r['tokens_per_second']:,.0f} is the mean over the timed steps)")
    return ("Slow steps: " + "; ".join(out) + ".") if out else ""


def gpu_speed_lines(gpu: str) -> list[str]:
    """One lent GPU's results: its training table, the same lengths from the lease's shorter first run (how far its
    few timed steps wander), and what the eval path took there."""
    tr = load_json(common.RES / f"train_speed-{gpu}.json")
    lines = train_speed_lines(tr) if tr else []
    first = load_json(common.RES / f"train_speed-{gpu}-3steps.json")
    if tr and first:
        ours = {r["length"]: r for r in first["runs"] if not r["extra"] and "tokens_per_second" in r}
        timed = first["meta"]["steps"] - 1  # the first step is warm-up
        lines += ["", f"The same lease's first run ({first['meta']['steps']} steps, so {timed} timed; "
                  f"`train_speed-{gpu}-3steps.json`) gave ctxext " + ", ".join(
                      f"{r['tokens_per_second']:,.0f} tokens/s at {L:,} (steps {', '.join(f'{x:.2f}' for x in r['step_seconds'])} s)"
                      for L, r in sorted(ours.items())) + f": with {timed} timed steps one slow step skews the figure, hence the "
                  f"{tr['meta']['steps']}-step run above."]
    if tr and (slow := slow_step_note(tr["runs"])):
        lines += ["", slow]
    es = load_json(common.RES / f"eval_speed-{gpu}.json")
    if es and "ppl" in es:
        o, n = es["ppl"]["ours"], es["ppl"]["naive"]
        lines += ["", f"Eval, `ppl` at {es['length']:,} tokens on the GPU (`benchmarks/eval_speed.py --device cuda`, fp32 "
                  f"weights, same run): ctxext {o['tokens_per_s']:,.0f} tokens/s, device peak "
                  f"{o['device_peak_mb'] / 1024:.2f} GiB; naive loop {n['tokens_per_s']:,.0f} tokens/s, "
                  f"{n['device_peak_mb'] / 1024:.2f} GiB; ratio **{o['tokens_per_s'] / n['tokens_per_s']:.2f}×** "
                  f"tokens/s, **{o['device_peak_mb'] / n['device_peak_mb']:.2f}×** memory."]
    ev = load_json(common.RES / f"eval-{gpu}.json")
    if ev:
        cells = [t for t in ev["meta"]["timings"] if t["seconds"] > 0.1]  # a prefix scored inside a longer forward costs ~0
        model = "the same model" if tr else f"`{ev['meta']['config']['model']}`"
        lines += ["", f"`ctxext eval --device cuda` on {model} (fp32 weights, the default dtype; "
                  f"`eval-{gpu}.json`): " + "; ".join(
                      f"{t['task']} at {t['length']:,} tokens {t['seconds']:.1f} s (estimate {t['estimated_seconds']:.1f} s)"
                      for t in sorted(cells, key=lambda t: (t["task"] != "ppl", t["length"])))
                  + (". Random weights: only the times mean anything." if "random" in Path(
                      ev["meta"]["config"]["model"]).name else ".")]
    return [""] + lines if lines else []


def profile_lines() -> list[str]:
    """Where a ctxext training step's time goes on the GPU (benchmarks/profile_train_step.py logs, one per length)."""
    profiles = sorted((int(f.stem.rsplit("-", 1)[1]), profile_figures(f.read_text()))
                      for f in (common.RES / "gpu_logs").glob("profile_train_step-*.txt"))
    if not profiles:
        return []
    return ["Where a ctxext step's time goes (`benchmarks/profile_train_step.py`, torch.profiler over "
            f"{profiles[0][1]['steps']:.0f} steps, `gpu_logs/profile_train_step-*.txt`): " + "; ".join(
                f"at {L:,} the GPU is busy {p['device']:.3f} s of a {p['wall']:.3f} s step "
                f"({p['device'] / p['wall']:.0%}, {p['launches']:,.0f} kernel launches a step)" for L, p in profiles)
            + " (the GPU time is the table's own 'Self CUDA time total', each kernel once; the logs' first line "
            "'device busy' came from an earlier script that counted kernels twice and is not read)"
            + ". The profiler slows the host, so its wall times are above the GPU training table's: a short row's step "
            "is bound by launching kernels (checkpointed layers and LM-head chunks launch each again in the backward), "
            "a long row's by the GPU, where ctxext's cost over the naive loop is the recomputation that buys its memory "
            "(the naive loop with transformers' checkpointing runs at about the same speed)."]


def part_machine(ev: dict, key: str) -> str:
    """The machine and date of the run that measured a part of eval_speed.json: the part's own record (a later
    run with --skip rewrites the file's top-level machine); parts written before they carried one say so."""
    part = ev[key]
    if part.get("machine"):
        return f"{machine_text(part['machine'])}, {str(part.get('date', '?'))[:10]}"
    if "machine" in part or part.get("date", ev.get("date")) != ev.get("date"):  # kept from an earlier run
        return f"measured {str(part.get('date') or '?')[:10]} by an earlier run whose machine the file did not record"
    return f"{machine_text(ev.get('machine'))}, {str(ev.get('date', '?'))[:10]}"  # the file's own run


def pairs_text(ppl: dict) -> str:
    """How many ctxext / naive pairs the best-of figures come from, and each pair's ratio."""
    runs = ppl.get("all_runs") or {}
    ours, naive = runs.get("ours") or [], runs.get("naive") or []
    if len(ours) < 2:
        return "; one ctxext / naive pair"
    ratios = ", ".join(f"{n['seconds'] / o['seconds']:.2f}" for o, n in zip(ours, naive))
    return f"; best of {len(ours)} pairs, order alternated, pair by pair ctxext speed-up {ratios}"


def speed_section() -> str:
    lines = []
    ev, tr = load_json(common.RES / "eval_speed.json"), load_json(common.RES / "train_speed-cpu.json")
    full = speed_ratios(ev, tr)
    if ev and "ppl" in ev:  # a run with --skip ppl into a fresh file has only the reuse part
        o, n = ev["ppl"]["ours"], ev["ppl"]["naive"]
        rate = ev["ppl"].get("fp32_matmul_gflops", ev["fp32_matmul_gflops"])  # the rate of the run that measured ppl
        lines += [f"Eval, `ppl` on {ev['model']} at {ev['length']:,} tokens ({part_machine(ev, 'ppl')}; fp32 matmul "
                  f"measured {rate:.0f} GFLOP/s in the same run{pairs_text(ev['ppl'])}):", "",
                  "| | tokens/s | peak RSS | fraction of matmul rate |", "|---|---:|---:|---:|",
                  f"| ctxext (logits only where scored) | {o['tokens_per_s']:.1f} | {o['process_peak_mb'] / 1024:.2f} GB | "
                  f"{o['fraction_of_matmul_peak']:.2f} |",
                  f"| naive `model(ids, labels=ids).loss` | {n['tokens_per_s']:.1f} | {n['process_peak_mb'] / 1024:.2f} GB | "
                  f"{n['fraction_of_matmul_peak']:.2f} |",
                  f"| ratio | **{full['eval tokens/s'][1]:.2f}×** | **{full['eval peak RSS'][1]:.2f}×** | |"]
    if ev:
        pr = ev.get("prefix_reuse")
        if pr:
            load = pr.get("loadavg_1min")
            lines += ["", f"Passkey grid at {pr['length']:,} tokens, {len(pr['depths'])} depths × {pr['trials']} trials: "
                      f"shared-prefix reuse costs {pr['cost_ratio']:.2f}× the time of independent forwards "
                      f"({pr['token_ratio']:.2f}× the tokens, {pr['flop_ratio']:.2f}× the FLOPs; best of "
                      f"{len(pr['rounds']['reuse'])} alternating rounds, {pr.get('threads', '?')} threads"
                      + (f", 1-min load average {load[0]:.1f} → {load[1]:.1f} on {_cpus(ev)} cores" if load else "")
                      + f"), same verdicts: {pr['same_verdicts']}."]
            pairs = [r["seconds"] / i["seconds"] for r, i in zip(pr["rounds"]["reuse"], pr["rounds"]["independent"])]
            if len(pairs) > 1:  # the spread says how much the best-of figure owes to a quiet round
                lines[-1] += f" Round by round: {', '.join(f'{x:.2f}' for x in pairs)}."
    if tr:
        lines += [""] + train_speed_lines(tr)
    note = speed_ordering_note(full, speed_ratios(load_json(common.RES / "eval_speed_quick.json"),
                                                  load_json(common.RES / "train_speed-cpu-quick.json")))
    if note:
        lines += ["", note]
    tm = load_json(common.RES / "train_memory-cpu.json")
    if tm:
        lines += [""] + train_memory_lines(tm)
    for gpu in gpu_devices():
        lines += gpu_speed_lines(gpu)
    if prof := profile_lines():
        lines += [""] + prof
    return "\n".join(lines) or "(no speed results yet)"
