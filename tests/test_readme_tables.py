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
