"""The search section: search_tiny.py / search_smollm2.py's searched factors against YaRN on a held-out book."""

from __future__ import annotations

import math
from pathlib import PurePath

from . import common
from .common import and_list, full_runs, load_json, order_note, ranked, rerun_note


def search_lines(name: str, res: dict) -> list[str]:
    """Rows of one search: YaRN at the same factor and the searched spec on the held-out book."""
    cfg, ho = res["search"]["config"], res.get("heldout")
    if not ho:  # --skip-eval: a method table measures it, the row keeps the search in view; else: still evaluating
        if not res.get("skip_eval"):
            return []
        s, t = res["search"], cfg["target"]
        window = round(t / float(s["reference"]["spec"].split("factor=")[1]))  # the reference is yarn at t / window
        return [f"| `{name}` | {cfg['model']}, {window:,} → {t:,} | {cfg['fitness']} | {s['spent']:.1f} / "
                f"{cfg['budget']:g} | – | searched | {s['best']['attention_factor']:.3f} | – | – | – |"]
    rows = ho["rows"]
    window = next(int(k.split("@")[1]) for k in rows["default"] if k.startswith("ppl@") and
                  int(k.split("@")[1]) < cfg["target"])
    t = cfg["target"]
    yarn = next(k for k in rows if k.startswith("yarn"))
    head = (f"| `{name}` | {cfg['model']}, {window:,} → {t:,} | {cfg['fitness']} | {res['search']['spent']:.1f} / "
            f"{cfg['budget']:g} | {ho['ppl_documents']} / {ho['needle_trials']} |")
    def cell(key: str, col: str) -> str:  # the lower of the two in bold
        v = rows[key][col]
        return f"**{v:.2f}**" if v < rows["searched" if key == yarn else yarn][col] else f"{v:.2f}"

    # attention factor m: YaRN's 0.1·ln(s) + 1; the searched one is capped by the in-window guard
    m = {yarn: 0.1 * math.log(t / window) + 1, "searched": res["search"]["best"]["attention_factor"]}
    out = []
    for label, key in ((f"`{yarn}`", yarn), ("searched", "searched")):
        vs = rows[key][f"ppl@{window}"] / rows["default"][f"ppl@{window}"] - 1
        out.append(f"{head if not out else '| | | | | |'} {label} | {m[key]:.3f} | {vs:+.1%} | "
                   f"{cell(key, f'ppl@{t}')} | {cell(key, f'needle-ppl@{t}')} |")
    return out


def heldout_books(runs: list) -> str:
    """The held-out book(s) the searches were measured on, from each heldout.book ('pg84.txt' -> 'pg84'); a clear
    error when a held-out evaluation does not name its book. With none evaluated yet, no book is named."""
    books = []
    for path, res in runs:
        if ho := res.get("heldout"):
            if not ho.get("book"):
                raise ValueError(f"{path}: heldout records no book (the search section names the held-out book)")
            books.append(PurePath(ho["book"]).stem)
    books = list(dict.fromkeys(books))
    return (f"{books[0]}, a book" if len(books) == 1 else f"{and_list(books)}, books" if books else "a held-out "
            "book") + " the search did not see"


def guard_tolerance(runs: list) -> str:
    """The searches' in-window guard, '+1 %', from each search's config.short_tolerance (a clear error when one lacks
    it); searches guarded differently are named with theirs: '+0.5 % (search_tiny_rope), +1 % (the others)'."""
    by_tol: dict[float, list[str]] = {}
    for path, res in runs:
        if (tol := res["search"]["config"].get("short_tolerance")) is None:
            raise ValueError(f"{path}: search.config records no short_tolerance (the in-window guard)")
        by_tol.setdefault(tol, []).append(path.parent.name)
    if len(by_tol) == 1:
        return f"+{100 * next(iter(by_tol)):g} %"
    common = max(by_tol, key=lambda t: len(by_tol[t]))
    named = [f"+{100 * t:g} % ({', '.join(f'`{n}`' for n in names)})" for t, names in sorted(by_tol.items())
             if t != common]
    return ", ".join(named) + f", +{100 * common:g} % (the others)"


def search_section() -> str:
    lines, notes, runs = [], [], list(full_runs("search_*/summary.json"))
    for path, res in runs:
        if not lines:
            lines += ["`ctxext search` (no fine-tuning) against YaRN at the same factor, both measured afterwards on "
                      f"{heldout_books(runs)}. Budget in full-length-evaluation equivalents; held-out "
                      "samples = ppl documents / needle trials (few on SmolLM2: a 16k forward takes minutes on the "
                      "CPU). m = attention factor (YaRN: 0.1·ln s + 1; searched: at most what keeps ppl inside the trained window "
                      f"within {guard_tolerance(runs)} on the search data, the search's guard). In-window = ppl at "
                      "the trained length vs default RoPE on the held-out book.", "",
                      "| results | model, window → target | fitness | budget spent | held-out samples | spec | m | "
                      "in-window | ppl @ target | needle-ppl @ target |", "|---|---|---|---|---|---|---:|---:|---:|---:|"]
        lines += search_lines(path.parent.name, res)
        if res.get("skip_eval") and not res.get("heldout"):
            notes.append(skipped_note(path.parent.name, res))
    if (old := space_scored(runs)):
        notes.append(f"needle-ppl in {and_list([f'`{n}`' for n in old])} (search fitness and held-out column) also "
                     "scored the space token before the number (ctxext before 2026-12-07); needle-ppl now scores the "
                     "number's tokens only, so those figures do not compare with later runs' (the order of the "
                     "methods is what to read).")
    for note in notes:  # after the table, which they would otherwise cut
        lines += ["", note]
    for name, script in QUICK_OF:
        full, quick = (load_json(common.RES / n / "summary.json") for n in (name, name + "_quick"))
        if lines and full and quick and quick.get("heldout"):
            lines += ["", search_quick_note(full, quick, name, script)]
    return "\n".join(lines) or "(no search results yet)"


NEEDLE_DIGITS_SINCE = "2026-12-07"  # needle-ppl scores the number's tokens only from this date (no leading space)


def space_scored(runs: list) -> list[str]:
    """The searches whose needle-ppl evaluation ran before NEEDLE_DIGITS_SINCE (its results' meta.created)."""
    out = []
    for path, _ in runs:
        ev = load_json(path.parent / "eval-needle" / "results.json")
        if ev and str(ev.get("meta", {}).get("created", "")) < NEEDLE_DIGITS_SINCE:
            out.append(path.parent.name)
    return out


QUICK_OF = (("search_tiny_rope", "search_tiny.py"), ("search_smollm2_16k", "search_smollm2.py"))  # full run, script


def search_quick_note(full: dict, quick: dict, name: str = "search_tiny_rope", script: str = "search_tiny.py") -> str:
    """Does `<script> --quick` order YaRN and the searched factors on the held-out book as the full search?"""
    t = quick["search"]["config"]["target"]
    rows = [(f"{col} @ {t:,}", *(ranked({k: v[f"{col}@{t}"] for k, v in d["heldout"]["rows"].items()}, False)
                                  for d in (quick, full)))
            for col in ("ppl", "needle-ppl")]
    c, h = quick["search"]["config"], quick["heldout"]
    shared = [(v, full["heldout"]["rows"][k][col]) for k, r in h["rows"].items() if k in full["heldout"]["rows"]
              for col, v in r.items() if col in full["heldout"]["rows"][k]]
    return order_note(f"`--quick` (`{script} --quick`: budget {c['budget']:g}, {h['ppl_documents']} held-out "
                      f"document(s) / {h['needle_trials']} needle trial(s)) orders them", rows, f"`{name}`") + \
        rerun_note(shared)


def skipped_note(name: str, res: dict) -> str:
    """A search run without its held-out evaluation: where it is measured, and what its own search data said."""
    s, t = res["search"], res["search"]["config"]["target"]
    return (f"`{name}` ran without the held-out evaluation (`--skip-eval`): `benchmarks/methods.py` measures its "
            f"factors beside every other method at {t:,} (method tables above). On its search data "
            f"({s['config']['fitness']} @ {t:,}, {s['evaluations']} evaluations, {s['generations']} generation(s)) its "
            f"best ({s['best']['origin']}) scored {s['best']['fitness']:.2f}, the YaRN seed {s['seeds'].get('yarn', float('nan')):.2f}, exact "
            f"`{s['reference']['spec']}` {s['reference']['fitness']:.2f}.")
