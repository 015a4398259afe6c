"""The training section: train_tiny.py's runs (train_tiny*/summary.json) and its --quick ordering note."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from . import common
from .common import full_runs, load_json, machines_text, order_note, pct, ranked


def _train_data(meta: dict) -> str:
    """What a train_tiny run trained on, from its recorded arguments (and the mix's share of the data, when the
    run recorded it: the books are cycled beside the mix, so its share grows with steps x batch tokens)."""
    args, mix = meta.get("args", {}), meta.get("pretrain_mix")
    data = "books"
    if args.get("pretrain_mix"):
        share = f"{mix['share_of_data']:.0%} of the data" if mix else f"{args['pretrain_mix']:g} x tokens trained"
        data += f" + passkey docs ≥ {args.get('mix_min_len') or 48} tok ({share})"
    return f"{data}; lr {args.get('lr', 1e-3):g}, {args.get('batch_tokens', 4096):,} tok/step"


def _one(values: dict[str, object], what: str) -> object:
    """The one value every run records for `what` (values: run -> value); a clear error when they differ, since the
    section's header states one for all rows."""
    if len(set(values.values())) != 1:
        raise ValueError(f"train_tiny*/summary.json: the runs record different {what}: "
                         + "; ".join(f"{k}: {v}" for k, v in values.items()))
    return next(iter(values.values()))


def train_target(done: list) -> int:
    """The length every run extended to, its meta.target: also where train_tiny.py measures passkey (its seq_len)."""
    return _one({str(p.parent.name): res["meta"]["target"] for p, res in done}, "targets")


def train_window(done: list) -> int:
    """The fixture's trained window. summary.json records the target and each run's spec, not the window:
    train_tiny.py sets linear's and yarn's factor to target / window, so it is read back as target / factor (a
    clear error when no run has such a spec, or they disagree)."""
    windows = {}
    for p, res in done:
        for name, r in res["runs"].items():
            if m := re.fullmatch(r"(?:linear|yarn):factor=([0-9.]+)", r["spec"]):
                windows[f"{p.parent.name}/{name}"] = round(res["meta"]["target"] / float(m.group(1)))
    if not windows:
        raise ValueError("train_tiny*/summary.json: no linear:factor= / yarn:factor= run to read the trained window "
                         "(target / factor) from")
    return _one(windows, "trained windows (target / factor)")


# the acceptance flags train_tiny.py records per run, named by their bar: ppl_within_<N>pct, passkey_ge_<N>pct
_BARS = {"ppl": re.compile(r"ppl_within_(\d+)pct"), "passkey": re.compile(r"passkey_ge_(\d+)pct")}


def acceptance_bars(done: list) -> str:
    """The bars the runs were judged by, read from the names of their recorded acceptance flags (a clear error when
    a run records none, or the runs were judged by different bars)."""
    bars = {what: {} for what in _BARS}
    for p, res in done:
        for name, r in res["runs"].items():
            for what, pat in _BARS.items():
                hits = [int(m.group(1)) for k in r.get("acceptance") or {} if (m := pat.fullmatch(k))]
                if len(hits) != 1:
                    raise ValueError(f"{p}: run {name} records no single acceptance flag {pat.pattern} (its "
                                     f"acceptance: {r.get('acceptance')})")
                bars[what][f"{p.parent.name}/{name}"] = hits[0]
    ppl, passkey = (_one(bars[w], f"{w} acceptance bars") for w in ("ppl", "passkey"))
    return f"last-quarter ppl within {1 + ppl / 100:.2f}× of in-window, passkey ≥ {passkey} %"


SAME_TOKENS = Path("reference") / "same-tokens.json"  # train_tiny.py's same-tokens reference, in a run's folder


def same_tokens_reference(folder: Path) -> tuple[dict, str] | None:
    """(the same-tokens reference for the runs in `folder`, the file it came from): default RoPE on the last
    quarter's own tokens with the trained window as context (`train_tiny.py --reference-only`). The folder's own
    reference/same-tokens.json, else train_tiny's when it was measured on the very held-out windows this folder's
    runs were evaluated on (the same file, by its sha256, and the same number of windows); else None."""
    summary = load_json(folder / "summary.json") or {}
    windows = summary.get("meta", {}).get("args", {}).get("windows")
    data = folder / "held_out_windows.jsonl"
    for ref_path in (folder / SAME_TOKENS, common.RES / "train_tiny" / SAME_TOKENS):
        ref = load_json(ref_path)
        if ref and data.is_file() and ref.get("windows") == windows \
                and ref.get("data_sha256") == hashlib.sha256(data.read_bytes()).hexdigest():
            return ref, str(ref_path.relative_to(common.RES))
    return None


def _same_tokens_text(refs: dict[str, tuple[dict, str] | None]) -> str:
    """What the same-tokens reference is and its value(s), for the section's intro (refs: folder -> reference)."""
    found = {k: v for k, v in refs.items() if v}
    if not found:
        return ("no same-tokens reference recorded (`train_tiny.py --reference-only` measures default RoPE on the "
                "last quarter's own tokens with the trained window as context)")
    r = next(iter(found.values()))[0]
    a, b = r["positions"]
    values = sorted({(round(v[0]["ppl"], 2), v[1]) for v in found.values()})
    value = "; ".join(f"{x:.2f} (`{f}`)" for x, f in values)
    missing = sorted(set(refs) - set(found))
    return (f"**same tokens, {r['context']:,}-token context** {value}, default RoPE on the very tokens the last "
            f"quarter scores (positions {a:,}–{b - 1:,} of the same {r['length']:,}-token held-out windows), each "
            f"seeing at most the {r['context']:,} tokens of the trained window before it (a sliding context)"
            + (f"; none for {', '.join(f'`{m}`' for m in missing)} (other held-out windows)" if missing else ""))


def train_section() -> str:
    lines, done = [], list(full_runs("train_tiny*/summary.json"))
    for path, res in done:
        runs = res["runs"]
        if not lines:
            first = next(iter(runs.values()))
            where = machines_text([(f"`{p.parent.name}`", r["meta"].get("machine")) for p, r in done], "the other runs")
            target, window = train_target(done), train_window(done)
            refs = {p.parent.name: same_tokens_reference(p.parent) for p, _ in done}
            lines += [f"`ctxext train` on the {res['meta']['model']} fixture, {window:,} → {target:,} "
                      f"tokens, {first['steps']} steps per run ({where}). Last-quarter ppl after training is shown "
                      f"over two references: **in-window** {first['in_window_ppl']:.2f}, default RoPE's perplexity "
                      f"over positions 1–{window - 1:,} of {window:,}-token windows (the bar's reference, as "
                      f"recorded: other tokens than the last quarter's, with 1–{window - 1:,} tokens of context where "
                      f"the last quarter has {3 * target // 4:,} or more); and {_same_tokens_text(refs)}. "
                      f"Bars: {acceptance_bars(done)}.",
                      "", "| results | data | spec | ppl last quarter, before → after | / in-window | "
                      f"/ same tokens, {window:,}-token context | passkey at {target:,}, before → after |",
                      "|---|---|---|---|---:|---:|---|"]
        ref = refs[path.parent.name]
        for name, r in runs.items():
            b, a = r["before"], r["after"]
            same = f"{a['ppl_last_quarter'] / ref[0]['ppl']:.3f}" if ref else "–"
            lines.append(f"| `{path.parent.name}` | {_train_data(res['meta'])} | `{r['spec']}` | "
                         f"{b['ppl_last_quarter']:.2f} → {a['ppl_last_quarter']:.2f} | "
                         f"{r['last_quarter_vs_in_window']:.3f} | {same} | "
                         f"{pct(b['passkey'])} → **{pct(a['passkey'])}** |")
    full, quick = (load_json(common.RES / n / "summary.json") for n in ("train_tiny", "train_tiny_quick"))
    if lines and full and quick:
        lines += ["", train_quick_note(full, quick, replicates(full))]
    return "\n".join(lines) or "(no training results yet)"


def replicates(full: dict) -> list[dict]:
    """The full run's replicates: train_tiny_seed*/ runs with the same arguments but the seed and folder (on the
    arguments both recorded: options added later were at their defaults in runs that predate them)."""
    ref = full["meta"]["args"]

    def same(a: dict) -> bool:
        return all(a[k] == ref[k] for k in a.keys() & ref.keys() - {"seed", "out"})

    return [r for _, r in full_runs("train_tiny_seed*/summary.json") if r and same(r["meta"]["args"])]


def train_quick_note(full: dict, quick: dict, reps: list[dict] = ()) -> str:
    """Does `train_tiny.py --quick` order the methods after training as the full `train_tiny` run does? With
    replicates (other seeds of the full run), also: on the pairs every seed orders alike."""
    rows, close = [], []
    specs = {x["spec"] for x in quick["runs"].values()}
    # (what, key, higher is better, how close two full-run figures are to be called within noise, its unit)
    for what, key, higher, tol, unit in (("last-quarter ppl", "ppl_last_quarter", False, 0.01, "relative"),
                                         ("passkey", "passkey", True, 0.05, "points")):
        q = ranked({r["spec"]: r["after"][key] for r in quick["runs"].values()}, higher)
        vals = {r["spec"]: r["after"][key] for r in full["runs"].values() if r["spec"] in specs}
        rows.append((what, q, ranked(vals, higher)))
        pairs = sorted(vals.items(), key=lambda kv: kv[1])
        for (s1, v1), (s2, v2) in zip(pairs, pairs[1:]):
            gap = (v2 - v1) / v1 if unit == "relative" else v2 - v1
            if gap < tol:
                close.append(f"`{s1}` and `{s2}` {what} {100 * gap:.1f}{' %' if unit == 'relative' else ' points'} apart")
    a = quick["meta"]["args"]
    note = order_note(f"`--quick` (`train_tiny.py --quick`: {a['steps']} steps, {a['windows']} held-out windows, "
                      f"{a['trials']} passkey trials per depth) orders the methods after training by", rows,
                      "`train_tiny`", f"within noise in `train_tiny` itself: {'; '.join(close)}" if close else "")
    note += (" " + at_step if (at_step := _full_at_quick_steps(full, quick, rows)) else "")
    return note + (" " + _seed_note(full, quick, list(reps)) if reps else "")


def _cmp(x: float, y: float) -> int:
    """1, 0 or -1 as x is above, equal to or below y."""
    return (x > y) - (x < y)


def _seed_note(full: dict, quick: dict, reps: list[dict]) -> str:
    """Which pairs the full run's seeds order differently (noise, not an ordering), and whether the quick run
    agrees on the pairs they all order alike."""
    runs = [full, *reps]
    seeds = ", ".join(str(r["meta"]["args"].get("seed", 0)) for r in runs)

    def after(run: dict, key: str) -> dict[str, float]:
        return {r["spec"]: r["after"][key] for r in run["runs"].values()}

    def fmt(v: float, key: str) -> str:
        return pct(v) if key == "passkey" else f"{v:.2f}"

    q_specs = {x["spec"] for x in quick["runs"].values()}
    flips, agree = [], True
    for what, key in (("last-quarter ppl", "ppl_last_quarter"), ("passkey", "passkey")):
        vals = [after(r, key) for r in runs]
        q = after(quick, key)
        specs = sorted(q_specs.intersection(*vals))
        for i, a in enumerate(specs):
            for b in specs[i + 1:]:
                signs = {_cmp(v[a], v[b]) for v in vals}
                if len(signs) > 1 or 0 in signs:
                    flips.append(f"`{a}` vs `{b}` {what} (" + "; ".join(
                        f"{fmt(v[a], key)} vs {fmt(v[b], key)}" for v in vals) + ")")
                elif _cmp(q[a], q[b]) != next(iter(signs)):
                    agree = False
    told = f"The full run's seeds {seeds} order " + (
        "every pair alike" if not flips else f"these pairs differently: {'; '.join(flips)}")
    return f"{told}. On the pairs every seed orders alike, the quick run agrees: {'yes' if agree else '**no**'}."


def _full_at_quick_steps(full: dict, quick: dict, rows: list[tuple[str, str, str]]) -> str:
    """The full run's own evaluation at the quick run's step count (its curve), ordered like the quick run: a quick
    run trains fewer steps, so methods whose curves cross later can be ordered differently at the end only."""
    steps = quick["meta"]["args"]["steps"]
    specs = {x["spec"] for x in quick["runs"].values()}
    at = {r["spec"]: p for r in full["runs"].values() if r["spec"] in specs
          for p in r.get("curve", []) if p["step"] == steps}
    if steps >= full["meta"]["args"]["steps"] or set(at) != specs:
        return ""
    orders = [ranked({s: p["ppl_last_quarter"] for s, p in at.items()}, False),
              ranked({s: p["passkey"] for s, p in at.items()}, True)]
    same = all(o == q for o, (_, q, _) in zip(orders, rows))
    return (f"At step {steps}, the full run's own evaluation orders them by last-quarter ppl {orders[0]} and by "
            f"passkey {orders[1]}: {'the' if same else 'not the'} quick run's order.")
