"""Eval speed and memory: ctxext's chunked perplexity vs a naive transformers loop, and KV prefix reuse over a
passkey depth grid. Not a test: it measures, prints, and writes benchmarks/results/eval_speed.json.

    python benchmarks/eval_speed.py [--quick] [--model smollm2-135m] [--length 16384] [--reuse-length 2048]
                                    [--depths 0,0.1,...,1] [--trials 5] [--rounds 3] [--repeats 3] [--out benchmarks/results/eval_speed.json]

Each measurement runs in a fresh subprocess, so its peak resident memory (VmHWM of /proc/self/status) is its
own: `process_peak` includes loading the model, `forward_peak` is reset (clear_refs 5) just before the timed
call. Throughput is reported as tokens/s and as a fraction of this machine's measured fp32 matmul rate × the
model's forward FLOPs (ctxext.evals.cost). The machine's load average is recorded before and after each
measurement: other processes on the same cores slow everything down.

--device cuda: the ppl part on a GPU (fp32 weights; tokens/s against the fp32 matmul rate measured on that GPU,
peak memory torch.cuda.max_memory_allocated), written to eval_speed-<gpu>.json (with --quick,
eval_speed-<gpu>-quick.json); the reuse grid is skipped.

--quick: ppl at 4 096 tokens and the reuse grid at 1 024 tokens over 3 depths x 2 trials (a few minutes), written to
eval_speed_quick.json; the README checks that it orders ctxext and the naive loop as the full run does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# --quick replaces these defaults (an option given on the command line is kept)
QUICK = {"length": 4096, "reuse_length": 1024, "depths": "0,0.5,1", "trials": 2, "rounds": 2, "repeats": 1,
         "out": str(HERE / "results" / "eval_speed_quick.json")}


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def book_tokens(tokenizer, n: int):
    from ctxext.data import load_documents
    from ctxext.fixtures import HELD_OUT_BOOK, books_dir

    doc = load_documents([books_dir() / HELD_OUT_BOOK], tokenizer)[0]
    if len(doc) < n:
        raise SystemExit(f"{HELD_OUT_BOOK} has only {len(doc)} tokens, fewer than {n}")
    return doc.tokens[:n]


# ---------------------------------------------------------------------------------------------- workers


def worker_ppl(args) -> dict:
    """One perplexity forward over `length` tokens: ctxext (chunked) or naive (model(ids, labels=ids).loss)."""
    import numpy as np
    import torch

    from ctxext.evals.scoring import token_nll
    from ctxext.models import load_model

    cuda = args.device.startswith("cuda")
    lm = load_model(args.model, device=args.device)
    ids = book_tokens(lm.tokenizer, args.length)
    load_peak = status_kb("VmHWM")
    base_rss = status_kb("VmRSS")
    reset_peak()
    if cuda:  # on a GPU the figure is the device's memory (the weights are there), not the host's
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        weights = torch.cuda.memory_allocated()
    t = time.perf_counter()
    with torch.inference_mode():
        if args.worker == "ours":
            nll = token_nll(lm.model, ids)  # returns on the host: the forward has finished
            loss = float(np.mean(nll))
        else:
            x = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=args.device)[None]
            loss = float(lm.model(input_ids=x, labels=x).loss)
    seconds = time.perf_counter() - t
    fwd_peak = status_kb("VmHWM")
    out = {"seconds": seconds, "tokens_per_s": args.length / seconds, "loss": loss,
           "process_peak_mb": max(load_peak, fwd_peak) / 1024, "forward_peak_mb": fwd_peak / 1024,
           "rss_before_mb": base_rss / 1024}
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        out.update(device_peak_mb=peak / 2**20, device_forward_mb=(peak - weights) / 2**20)
    return out


def worker_reuse(args) -> dict:
    """A passkey grid of D depths × trials at one length: shared-prefix cache vs independent forwards, in
    alternating rounds (best of each). `seconds` is the forward cost: greedy decoding that undecided verdicts need
    is the same in both modes and reported apart."""
    import torch

    from ctxext.evals.attention import fast_attention
    from ctxext.evals.cost import ModelCost
    from ctxext.evals.passkey import build
    from ctxext.evals.scoring import Scorer
    from ctxext.evals.tasks import Settings, TaskContext
    from ctxext.models import load_model

    lm = load_model(args.model)
    depths = [float(d) for d in args.depths.split(",")]
    ctx = TaskContext(lm=lm, spec=None, settings=Settings(samples=args.trials), docs=None, out=Path("."), cost=None,
                      same_freqs=lambda a, b: True)
    base, probes, _ = build(ctx, args.reuse_length, [(args.reuse_length, d) for d in depths])
    scorer = Scorer(lm.model, lm.tokenizer)
    mc = ModelCost.of(lm.info)
    out: dict = {"independent": [], "reuse": []}
    with torch.inference_mode(), fast_attention(lm.model):
        for r in range(args.rounds):
            for mode in (("independent", "reuse") if r % 2 == 0 else ("reuse", "independent")):
                scorer.decode_seconds = 0.0
                t = time.perf_counter()
                res = list(scorer.scores(base, probes, reuse=mode == "reuse"))
                out[mode].append({"seconds": time.perf_counter() - t - scorer.decode_seconds,
                                  "greedy_decode_seconds": scorer.decode_seconds,
                                  "tokens_encoded": sum(new for _, _, new, _ in res),
                                  "flops": sum(mc.flops(new, past) for _, _, new, past in res),
                                  "verdicts": [r.correct for _, r, _, _ in sorted(res, key=lambda x: x[0])]})
    best = {m: min(runs, key=lambda x: x["seconds"]) for m, runs in out.items()}
    return {"best": best, "rounds": out, "depths": depths, "length": args.reuse_length, "trials": args.trials,
            "probes": len(probes), "threads": torch.get_num_threads(),
            "same_verdicts": all(x["verdicts"] == out["independent"][0]["verdicts"] for m in out for x in out[m]),
            "cost_ratio": best["reuse"]["seconds"] / best["independent"]["seconds"],
            "token_ratio": best["reuse"]["tokens_encoded"] / best["independent"]["tokens_encoded"],
            "flop_ratio": best["reuse"]["flops"] / best["independent"]["flops"]}


def worker_rate(args) -> dict:
    import torch

    from ctxext.evals.cost import measure_matmul_rate

    return {"fp32_matmul_flops": measure_matmul_rate(torch.float32, device=args.device, seconds=3.0),
            "threads": torch.get_num_threads()}


WORKERS = {"ours": worker_ppl, "naive": worker_ppl, "reuse": worker_reuse, "rate": worker_rate}


# ------------------------------------------------------------------------------------------------- main


def spawn(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--model", args.model, "--length", str(args.length),
           "--reuse-length", str(args.reuse_length), "--depths", args.depths, "--trials", str(args.trials),
           "--rounds", str(args.rounds), "--device", args.device]
    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"worker {name} failed:\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t
    res["loadavg_1min"] = [load_before, os.getloadavg()[0]]
    print(f"  {name}: {json.dumps({k: v for k, v in res.items() if k not in ('rounds', 'best')})[:400]}", file=sys.stderr)
    return res


def run_meta(report: dict) -> dict:
    """What a part records of the run that measured it: a later run with --skip keeps it beside its own."""
    return {k: report[k] for k in ("date", "fp32_matmul_gflops", "machine", "versions")}


def out_path(out: str, device: str, quick: bool) -> Path:
    """Where this run writes: a GPU run left at either of the CPU's files (the full run's or --quick's) writes
    eval_speed-<gpu>.json (--quick: eval_speed-<gpu>-quick.json), never over the CPU run's figures."""
    from ctxext.runinfo import device_slug

    cpu_files = {str(HERE / "results" / "eval_speed.json"), QUICK["out"]}
    if device == "cpu" or out not in cpu_files:
        return Path(out)
    return HERE / "results" / f"eval_speed-{device_slug(device)}{'-quick' if quick else ''}.json"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--length", type=int, default=16384)
    ap.add_argument("--reuse-length", type=int, default=2048)
    ap.add_argument("--depths", default=",".join(f"{d / 10:g}" for d in range(11)))
    ap.add_argument("--trials", type=int, default=5, help="passkey trials per depth in the reuse benchmark (the task default)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating reuse/independent rounds (best of each)")
    ap.add_argument("--repeats", type=int, default=3, help="ours/naive pairs, alternating which runs first (best of "
                    "each is reported)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: ppl, reuse")
    ap.add_argument("--device", default="cpu", help="cuda: the ppl part on a GPU (peak memory is then the "
                    "device's, torch.cuda.max_memory_allocated; the reuse grid stays a CPU measurement)")
    ap.add_argument("--out", default=str(HERE / "results" / "eval_speed.json"))
    ap.add_argument("--quick", action="store_true", help="short lengths, a few minutes; writes eval_speed_quick.json")
    ap.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(argv)
    if args.quick:
        from ctxext.runinfo import override_defaults

        override_defaults(ap, args, QUICK, argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return

    import torch
    import transformers

    from ctxext import __version__
    from ctxext.evals.cost import ModelCost
    from ctxext.models import model_info

    skip = set(filter(None, args.skip.split(",")))
    device = "cpu"
    if args.device != "cpu":  # the reuse grid is a CPU measurement (its fused branch attention is CPU-only)
        skip.add("reuse")
        device = torch.cuda.get_device_name(0)
    args.out = str(out_path(args.out, device, args.quick))
    info = model_info(args.model)
    mc = ModelCost.of(info)
    report: dict = {
        "what": "ctxext eval speed: chunked ppl vs naive model(ids, labels=ids).loss; KV prefix reuse over depths",
        "model": args.model, "length": args.length, "quick": args.quick,
        "versions": {"ctxext": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "device": device,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"eval_speed: {args.model}, ppl at {args.length} tokens, reuse at {args.reuse_length}", file=sys.stderr)
    rate = spawn("rate", args)
    report["fp32_matmul_gflops"] = rate["fp32_matmul_flops"] / 1e9
    if "ppl" not in skip:
        ours, naive = [], []
        for i in range(args.repeats):  # alternate the order: neither side always gets the quieter slot
            for side in (("ours", "naive") if i % 2 == 0 else ("naive", "ours")):
                (ours if side == "ours" else naive).append(spawn(side, args))
        best_o = min(ours, key=lambda r: r["seconds"])
        best_n = min(naive, key=lambda r: r["seconds"])
        flops = mc.flops(args.length, scored=args.length)
        for r in (best_o, best_n):
            r["fraction_of_matmul_peak"] = flops / r["seconds"] / rate["fp32_matmul_flops"]
        report["ppl"] = {
            **run_meta(report),
            "forward_flops": flops, "ours": best_o, "naive": best_n, "all_runs": {"ours": ours, "naive": naive},
            "speedup_vs_naive": best_n["seconds"] / best_o["seconds"],
            "loss_abs_diff": abs(best_o["loss"] - best_n["loss"]),
            "memory_limit_mb": 2048, "memory_ok": best_o["process_peak_mb"] <= 2048,
        }
        if device != "cpu":  # the host's peak then says little: the device's is the figure to compare
            report["ppl"].update(memory_limit_mb=None, memory_ok=None,
                                 device_peak_ratio=best_o["device_peak_mb"] / best_n["device_peak_mb"])
    if "reuse" not in skip:
        report["prefix_reuse"] = {**run_meta(report), **spawn("reuse", args)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_file():  # a skipped part keeps its figures from the previous run (each carries its date and matmul rate)
        old = json.loads(out.read_text())
        for part, key in (("ppl", "ppl"), ("reuse", "prefix_reuse")):
            if part in skip and key in old:  # kept, with the details of the run that measured it
                own = old[key].get("date", old.get("date")) == old.get("date")  # measured by the file's own run
                report[key] = {"date": old.get("date"), "fp32_matmul_gflops": old.get("fp32_matmul_gflops"),
                               "machine": old.get("machine") if own else None,
                               "versions": old.get("versions") if own else None, **old[key]}
    from ctxext.evals.files import atomic_write

    atomic_write(out, json.dumps(report, indent=1) + "\n")
    if "ppl" in report:
        p = report["ppl"]
        print(f"ppl @ {args.length}: ours {p['ours']['tokens_per_s']:.0f} tok/s "
              f"({100 * p['ours']['fraction_of_matmul_peak']:.0f} % of matmul peak), peak {p['ours']['process_peak_mb']:.0f} MB; "
              f"naive {p['naive']['tokens_per_s']:.0f} tok/s, peak {p['naive']['process_peak_mb']:.0f} MB; "
              f"speed-up {p['speedup_vs_naive']:.2f}x", file=sys.stderr)
    if "prefix_reuse" in report:
        r = report["prefix_reuse"]
        print(f"prefix reuse @ {r['length']}, {len(r['depths'])} depths x {r['trials']} trials: {r['cost_ratio']:.2f} of "
              f"independent forwards in time (tokens {r['token_ratio']:.2f}, FLOPs {r['flop_ratio']:.2f}), "
              f"same verdicts: {r['same_verdicts']}", file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
