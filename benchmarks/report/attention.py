"""The attention section: attention_methods.py's Self-Extend passkey sweep, streaming and ALiBi-family runs, and
their --quick ordering note."""

from __future__ import annotations

from . import common
from .common import fmt_num, load_json, order_note, pct, ranked, run_machines


def _selfextend_lines(pk: dict) -> list[str]:
    depths = [str(d) for d in pk["depths"]]
    ref = pk.get("reference_in_window")
    rows = ([(f"`{ref['spec']}` at {ref['length']:,} (in its window)", ref)] if ref else []) + \
        [(f"`{s}`", v) for s, v in pk["specs"].items()]
    lines = [f"Passkey on {pk['model']} at {pk['length']:,} tokens, {pk['trials_per_depth']} trials per depth "
             f"(`benchmarks/attention_methods.py passkey`; {run_machines(pk)}):", "",
             "| spec | " + " | ".join(f"d={d}" for d in depths) + " | accuracy |",
             "|---|" + "---:|" * (len(depths) + 1)]
    conf = pk.get("confirmation")
    if conf:  # the best setting again, on trials the choice was not made on
        rows.insert(len(rows) - 1 if rows[-1][0] == "`default`" else len(rows),
                    (f"`{conf['spec']}`, fresh trials (seed {conf['seed']})", conf))
    for label, v in rows:
        by = v["accuracy_by_depth"]
        lines.append(f"| {label} | " + " | ".join(pct(by.get(d)) for d in depths)
                     + f" | **{v['correct']}/{v['trials']}** |")
    if conf:
        lines += ["", f"The best setting was chosen on the seed-0 trials above; the fresh-trials row scores it on "
                  f"other pass keys (seed {conf['seed']})."]
    return lines


def _stopped(r: dict) -> str:
    """', stopped at N tokens' for a stream run that scored fewer tokens than its length (cut short), else ''."""
    length = r.get("length")
    return f", stopped at {r['tokens_scored']:,.0f} tokens" if length and r["tokens_scored"] < length else ""


def _stream_lines(st: dict) -> list[str]:
    lines = [f"Streaming perplexity on {st['model']} over {st['book']}, {st['segment_tokens']:,}-token segments "
             f"(`benchmarks/attention_methods.py stream`; {run_machines(st)}):", "",
             "| run | tokens scored | ppl | worst segment / in-window | cache tokens | peak RSS |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in st["runs"].items():
        lines.append(f"| `{name}`{_stopped(r)} | {r['tokens_scored']:,.0f} | {fmt_num(r['ppl_overall'])} | "
                     f"{r['max_segment_over_in_window']:.2f}× | {r['max_cache_tokens']:,.0f} | "
                     f"{r['peak_rss_mb'] / 1024:.2f} GB |")
    return lines


def _parts(al: dict) -> str:
    """How much text the perplexity columns average over (older results did not record it)."""
    n = al.get("book_parts")
    return f", ppl over {n} parts of {al['length']:,} tokens" if n else ""


def _alibi_lines(al: dict) -> list[str]:
    lines = [f"ALiBi family on the {al['model']} fixture at {al['length'] // al['window']}× its {al['window']}-token "
             f"window (held-out {al['book']}{_parts(al)}; `benchmarks/attention_methods.py alibi`; {run_machines(al)}):",
             "", f"| spec | slopes | ppl in window ({al['window']}) | ppl last quarter | passkey in window | "
             f"passkey at {al['length']:,} |", "|---|---|---:|---:|---:|---:|"]
    for s, v in al["specs"].items():
        slopes = ", ".join(f"{x:.3g}" for x in al["slopes"][s])
        lines.append(f"| `{s}` | {slopes} | {fmt_num(v['ppl_in_window'])} | {fmt_num(v['ppl_last_quarter'])} | "
                     f"{pct(v['passkey_in_window'])} | "
                     f"{pct(v['passkey'])} ({v['passkey_trials']} trials) |")
    if (ref := al.get("ppl_last_quarter_window_context")) is not None:
        cuts = {int(w): v for w, v in al.get("ppl_last_quarter_shorter_context", {}).items()}
        for w, v in sorted(cuts.items()):
            lines.append(f"| `default`, context cut to {w} tokens | – | – | {fmt_num(v)} | – | – |")
        lines.append(f"| `default`, context cut to the {al['window']}-token window | – | – | {fmt_num(ref)} | – | – |")
        lines += ["", "The \"context cut\" rows score the same last-quarter tokens with each seeing only that many tokens "
                  "before it. The one at the trained window is what reading past the window adds (a spec below that "
                  "figure uses the far context; one above it would do better not reading it)." + _headroom(al, cuts, ref)]
    return lines


def _headroom(al: dict, cuts: dict[int, float], ref: float) -> str:
    """The shorter cuts in words: the gain from doubling the context up to the window, against the in-window cost
    of the ntk-alibi spec at the run's factor (the most a method that reads farther has to win back)."""
    half, a = cuts.get(al["window"] // 2), al["length"] // al["window"]
    ntk, base = al["specs"].get(f"ntk-alibi:factor={a}"), al["specs"].get("default")
    if half is None or ntk is None or base is None:
        return ""
    gain = 100 * (1 - ref / half)
    cost = 100 * (ntk["ppl_in_window"] / base["ppl_in_window"] - 1)
    return (f" Doubling the context from {al['window'] // 2} to {al['window']} tokens lowers this fixture's perplexity by "
            f"{gain:.1f} %, while `ntk-alibi:factor={a}` costs {cost:.1f} % inside the window"
            + (": on book text a method that reads farther has little to win back its cost with." if gain < cost
               else "."))


def _stream_worst(st: dict) -> dict[str, float]:
    """Worst segment / in-window per spec at the run's longest stream."""
    longest = max(r["length"] for r in st["runs"].values())
    return {r["spec"]: r["max_segment_over_in_window"] for r in st["runs"].values() if r["length"] == longest}


def _stream_scored(st: dict, specs: dict) -> str:
    """The tokens each of `specs` scored at the run's longest stream: 'N tokens each', or per spec when they differ
    (a run cut short says where it stopped)."""
    longest = max(r["length"] for r in st["runs"].values())
    runs = {r["spec"]: r for r in st["runs"].values() if r["length"] == longest and r["spec"] in specs}
    scored = {s: r.get("tokens_scored", longest) for s, r in runs.items()}
    if len(set(scored.values())) == 1:
        return f"{next(iter(scored.values())):,.0f} tokens each"
    return ", ".join(f"`{s}` " + (f"stopped at {n:,.0f}" if n < longest else f"over {n:,.0f} tokens")
                     for s, n in scored.items())


def _quick_orders(name: str, full: dict, quick: dict) -> list[tuple[str, str, str]]:
    """(what, quick order, full order over the quick run's specs) for one attention_methods part."""
    if name == "passkey":
        specs = list(quick["specs"])
        return [(f"passkey at {quick['length']:,}",
                 *(ranked({s: d["specs"][s]["accuracy"] for s in specs if s in d["specs"]}, True)
                   for d in (quick, full)))]
    if name == "stream":  # the two runs' lengths differ, and a run cut short scored fewer tokens: both are said
        q, f = _stream_worst(quick), _stream_worst(full)
        what = (f"streaming worst segment / in-window (quick: {_stream_scored(quick, q)}; "
                f"full: {_stream_scored(full, q)})")
        return [(what, ranked(q, False), ranked({s: f[s] for s in q if s in f}, False))]
    specs = [s for s in quick["specs"] if s in full["specs"]]
    x = f"ALiBi {quick['length'] // quick['window']}×"
    return [(f"{x} last-quarter ppl", *(ranked({s: d["specs"][s]["ppl_last_quarter"] for s in specs}, False)
                                         for d in (quick, full))),
            (f"{x} passkey", *(ranked({s: d["specs"][s]["passkey"] for s in specs}, True) for d in (quick, full)))]


def attention_quick_note() -> str:
    """Does each `attention_methods.py <part> --quick` order the methods as its full run does?"""
    rows = []
    for qf in sorted(common.RES.glob("attention_methods_*_quick.json")):
        full = load_json(qf.with_name(qf.name.replace("_quick", "")))
        if full:
            rows += _quick_orders(qf.stem.split("_")[2], full, load_json(qf))
    if not rows:
        return ""
    return order_note("`--quick` (`attention_methods.py passkey|stream|alibi --quick`: separate, smaller runs) against "
                      "the full runs above:", rows, "full")


def attention_section() -> str:
    alibi = sorted((d for f in common.RES.glob("attention_methods_alibi*.json") if not f.stem.endswith("_quick")
                    and (d := load_json(f))),
                   key=lambda d: d["length"] / d["window"])  # 4x (the acceptance's) first, then longer reaches
    parts = [fn(d) for fn, d in ((_selfextend_lines, load_json(common.RES / "attention_methods_passkey.json")),
                                  (_stream_lines, load_json(common.RES / "attention_methods_stream.json")),
                                  *((_alibi_lines, d) for d in alibi)) if d]
    if note := attention_quick_note():
        parts.append([note])
    return "\n\n".join("\n".join(p) for p in parts) or "(no attention-method results yet)"
