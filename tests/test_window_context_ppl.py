"""benchmarks/attention_methods.py's reference row: perplexity with the context cut to the trained window."""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
spec = importlib.util.spec_from_file_location("bench_attention", ROOT / "benchmarks" / "attention_methods.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    from ctxext.fixtures import HELD_OUT_BOOK, books_dir

    path = tmp_path_factory.mktemp("book") / "part.txt"
    path.write_text((books_dir() / HELD_OUT_BOOK).read_text(encoding="utf-8")[20_000:60_000], encoding="utf-8")
    return path


def test_at_the_window_it_is_the_last_quarter_of_one_window(book, tmp_path):
    """length == window: one window, scored on its last quarter -> the ppl task's last bucket at that length."""
    from ctxext.evals import run_eval
    from ctxext.fixtures import fixture_path

    model = str(fixture_path("tiny-alibi"))
    ref = bench.window_context_ppl(model, book, 1, 256, 256)
    res = run_eval(model, ["default"], ["ppl"], [256], samples=1, data=[book], out=tmp_path / "e", bucket=64)
    last = next(r["value"] for r in res["records"] if r["bucket"] == [192, 256])
    assert ref == pytest.approx(last, rel=1e-5)


def test_cut_context_keeps_rope_out_of_its_failure(book, tmp_path):
    """tiny-rope past its window breaks (RoPE extrapolation); cut to the window it stays near in-window ppl."""
    from ctxext.evals import run_eval
    from ctxext.fixtures import fixture_path

    model = str(fixture_path("tiny-rope"))
    cut = bench.window_context_ppl(model, book, 1, 1024, 256)
    res = run_eval(model, ["default"], ["ppl"], [1024], samples=1, data=[book], out=tmp_path / "e", bucket=256)
    full = next(r["value"] for r in res["records"] if r["bucket"] == [768, 1024])
    assert math.isfinite(cut) and cut < full / 3  # measured 42 vs 236
