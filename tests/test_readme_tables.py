"""benchmarks/readme.py: the README tables come from results files; the committed README matches them."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_readme", ROOT / "benchmarks" / "readme.py")
readme = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme)


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
    assert readme.late_order(res) == ["benchmarks/results/x/best.json", "yarn:factor=2",
                                      "streaming:sinks=4,window=2044", "default"]
    table = readme.methods_table(res, "benchmarks/results/methods")
    assert "| `default` | 10.0 | 900.0 | 900.0 | 90.00× | 0% |" in table
    assert "longrope, searched (`benchmarks/results/x/best.json`)" in table
    assert "| `streaming:sinks=4,window=2044` | 10.0 | 30.0 | 30.0 | 3.00× | – |" in table


def test_ordering_note_says_when_orders_differ():
    full = _results({"default": 900.0, "yarn:factor=2": 20.0, "ntk:factor=2": 25.0})
    same = _results({"default": 90.0, "yarn:factor=2": 15.0}, length=12288)
    other = _results({"default": 9.0, "yarn:factor=2": 15.0}, length=12288)
    assert readme.ordering_note(full, same).endswith("same order: yes.")
    assert readme.ordering_note(full, other).endswith("same order: **no**.")


def test_committed_readme_is_generated_from_results():
    assert readme.main(["--check"]) == 0


def test_train_section_one_row_per_run_with_its_data(tmp_path, monkeypatch):
    import json

    run = {"spec": "yarn:factor=4", "steps": 200, "in_window_ppl": 64.0, "last_quarter_vs_in_window": 0.99,
           "before": {"ppl_last_quarter": 91.0, "passkey": 0.04}, "after": {"ppl_last_quarter": 63.4, "passkey": 0.8}}
    args = {"pretrain_mix": 0.25, "mix_min_len": 512, "lr": 2e-3, "batch_tokens": 8192}
    (tmp_path / "train_tiny_x").mkdir()
    (tmp_path / "train_tiny_x" / "summary.json").write_text(json.dumps(
        {"meta": {"model": "tiny-rope", "target": 1024, "args": args, "pretrain_mix": {"share_of_data": 0.54}},
         "runs": {"yarn": run}}))
    monkeypatch.setattr(readme, "RES", tmp_path)
    text = readme.train_section()
    assert ("| `train_tiny_x` | books + passkey docs ≥ 512 tok (54% of the data); lr 0.002, 8,192 tok/step | "
            "`yarn:factor=4` | "
            "91.00 → 63.40 | 0.990 | 4% → **80%** |") in text
    del args["batch_tokens"]  # older runs recorded no share: the argument is shown as what it is
    (tmp_path / "train_tiny_x" / "summary.json").write_text(json.dumps(
        {"meta": {"model": "tiny-rope", "target": 1024, "args": args}, "runs": {"yarn": run}}))
    assert "| books + passkey docs ≥ 512 tok (0.25 x tokens trained); lr 0.002, 4,096 tok/step |" in readme.train_section()
    assert "in-window perplexity 64.00" in text


def test_attention_section_tables(tmp_path, monkeypatch):
    import json

    pk = {"model": "m", "length": 16384, "depths": [0.1, 0.9], "trials_per_depth": 2,
          "specs": {"self-extend:group=4,window=4096": {"accuracy_by_depth": {"0.1": 1.0, "0.9": 0.5},
                                                       "correct": 3, "trials": 4}}}
    al = {"model": "tiny-alibi", "length": 1024, "window": 256, "book": "pg84.txt",
          "slopes": {"ntk-alibi:factor=4": [0.5, 0.25]},
          "specs": {"ntk-alibi:factor=4": {"ppl_last_quarter": 81.66, "passkey_in_window": 1.0, "passkey": 0.775,
                                           "passkey_trials": 40}}}
    (tmp_path / "attention_methods_passkey.json").write_text(json.dumps(pk))
    (tmp_path / "attention_methods_alibi.json").write_text(json.dumps(al))
    monkeypatch.setattr(readme, "RES", tmp_path)
    text = readme.attention_section()
    assert "| `self-extend:group=4,window=4096` | 100% | 50% | **3/4** |" in text
    assert "| `ntk-alibi:factor=4` | 0.5, 0.25 | 81.7 | 100% | 78% (40 trials) |" in text
    assert "Streaming" not in text  # no stream results: no table
