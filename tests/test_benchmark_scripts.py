"""Benchmark scripts' bookkeeping, without running a benchmark: where --quick writes, what keys the planner's curve
cache and instruct_qa's work folders, how train_speed merges runs (each row's run keeps its own machine and
versions), the results lock, and that results files are written atomically."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(name: str):
    s = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    m = importlib.util.module_from_spec(s)
    s.loader.exec_module(m)
    return m


@pytest.fixture(scope="module")
def train_memory():
    added = str(ROOT / "benchmarks") not in sys.path  # train_memory imports its sibling train_speed
    m = _bench("train_memory")
    yield m
    if added and str(ROOT / "benchmarks") in sys.path:
        sys.path.remove(str(ROOT / "benchmarks"))


# ------------------------------------------------------------------------------------------------ --quick files


def test_train_memory_quick_writes_its_own_file_and_times_a_step_after_the_first(train_memory):
    full = train_memory.parse_args([])
    assert Path(full.out).name == "train_memory-cpu.json" and full.steps == 2 and not full.quick
    quick = train_memory.parse_args(["--quick"])
    assert Path(quick.out).name == "train_memory-cpu-quick.json" and Path(quick.out).parent == Path(full.out).parent
    assert quick.steps >= 2 and quick.lengths == "2048"
    assert train_memory.parse_args(["--quick", "--steps", "1"]).steps == 2  # one step would time only the warm-up
    given = train_memory.parse_args(["--quick", "--out", "/tmp/x.json", "--lengths", "4096", "--steps", "3"])
    assert (given.out, given.lengths, given.steps) == ("/tmp/x.json", "4096", 3)  # what the user gave is kept


def test_planner_quick_writes_planner_quick_json(tmp_path, monkeypatch):
    planner = _bench("planner")
    monkeypatch.setattr(planner, "RESULTS", tmp_path)
    seen = []

    def fake_run(configs, cache, criterion="ppl2x"):
        seen.append((criterion, {m for m, *_ in configs}, cache))
        return [{"model": m, "spec": s, "criterion": criterion, "measured": float(L), "censored": False,
                 "within_25pct": True, "predicted": L / 2, "predicted_capped": False} for m, s, L, _ in configs]

    monkeypatch.setattr(planner, "run", fake_run)
    (tmp_path / "planner.json").write_text('{"full": true}')
    planner.main(["--quick"])
    assert json.loads((tmp_path / "planner.json").read_text()) == {"full": True}  # the full run's file untouched
    res = json.loads((tmp_path / "planner_quick.json").read_text())
    assert res["quick"] and {r["model"] for r in res["rows"]} == {"tiny-rope"}
    assert all(models == {"tiny-rope"} for _, models, _ in seen)
    planner.main(["--quick", "--out", str(tmp_path / "mine.json")])  # an --out given is kept
    assert json.loads((tmp_path / "mine.json").read_text())["quick"]
    planner.main([])  # the full run still writes planner.json
    assert {r["model"] for r in json.loads((tmp_path / "planner.json").read_text())["rows"]} == {"tiny-rope",
                                                                                                 "smollm2-135m"}
    assert not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------------ planner's cache


def _model_dir(root: Path, weights: bytes) -> Path:
    root.mkdir()
    (root / "config.json").write_text('{"rope_theta": 10000}')
    (root / "tokenizer.json").write_text("{}")
    (root / "fixture.json").write_text('{"measured": 1}')
    (root / "model.safetensors").write_bytes(weights)
    return root


def test_planner_model_fingerprint_follows_weights_config_and_tokenizer_not_measurements(tmp_path):
    planner = _bench("planner")
    a = _model_dir(tmp_path / "a", b"\x00" * 64)
    b = _model_dir(tmp_path / "b", b"\x01" * 64)  # the same size: a retrained fixture
    fa = planner.model_fingerprint(a)
    assert fa == planner.model_fingerprint(a) and fa != planner.model_fingerprint(b)
    c = _model_dir(tmp_path / "c", b"\x00" * 64)
    assert planner.model_fingerprint(c) == fa  # by content: a copy keeps its curves
    (c / "fixture.json").write_text('{"measured": 2}')  # measurements written into the fixture folder: no change
    assert planner.model_fingerprint(c) == fa
    (c / "config.json").write_text('{"rope_theta": 20000}')
    assert planner.model_fingerprint(c) != fa
    (a / "model.safetensors").write_bytes(b"\x02" * 64)  # rewritten in place (size kept): hashed again
    assert planner.model_fingerprint(a) != fa
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="no weights"):
        planner.model_fingerprint(empty)


def test_planner_curve_keys_change_with_model_book_and_passkey_grid(tmp_path):
    planner = _bench("planner")
    key = planner.curve_key("tiny-rope", "yarn:factor=2", 2048, 8, "m1", "b1")
    assert key.startswith("tiny_rope_yarn_factor=2_2048x8-") and key == planner.curve_key(
        "tiny-rope", "yarn:factor=2", 2048, 8, "m1", "b1")
    others = {planner.curve_key("tiny-rope", "yarn:factor=2", 2048, 8, m, b) for m, b in (("m2", "b1"), ("m1", "b2"))}
    assert key not in others and len(others) == 2
    assert planner.curve_key("tiny-rope", "yarn:factor=2", 2048, 4, "m1", "b1") != key
    book = tmp_path / "pg84.txt"
    book.write_text("It was on a dreary night of November")
    fb = planner.book_fingerprint(book)
    book.write_text("It was on a dreary night of Novembre")
    assert planner.book_fingerprint(book) != fb

    pk = planner.passkey_key("tiny-rope", "default", "m1")
    assert pk.startswith("passkey_tiny_rope_default_x12-") and pk == planner.passkey_key("tiny-rope", "default", "m1")
    assert planner.passkey_key("tiny-rope", "default", "m2") != pk
    assert planner.passkey_key("tiny-rope", "default", "m1", lengths=planner.PASSKEY_LENGTHS[:-1]) != pk
    assert planner.passkey_key("tiny-rope", "default", "m1", trials=6) != pk
    assert planner.passkey_key("tiny-rope", "default", "m1", seed=1) != pk
    for k in (key, pk):
        assert re.fullmatch(r"[A-Za-z0-9=._-]+", k)


# ------------------------------------------------------------------------------------------------ instruct_qa split


def test_instruct_qa_work_folder_is_keyed_on_the_split():
    qa = _bench("instruct_qa")
    rows = [{"id": f"q{i}", "question": f"what {i}?"} for i in range(20)]
    held, train = qa.split_rows(rows, 0.3)
    assert len(held) == 6 and sorted(held + train) == list(range(20)) and qa.split_rows(rows, 0.3) == (held, train)
    assert len(qa.split_rows(rows[:5], 0.3)[0]) == 3  # at least 3 held out

    def key(rs, max_len=2048):
        h, t = qa.split_rows(rs, 0.3)
        return qa.split_key(qa.jsonl([rs[i] for i in h]), qa.jsonl([rs[i] for i in t]), max_len)

    k = key(rows)
    assert k == key([dict(r) for r in rows]) and re.fullmatch(r"[0-9a-f]{12}", k)
    assert key(rows + [{"id": "q20", "question": "more?"}]) != k  # more examples kept: a new split, a new folder
    assert key([{**r, "question": r["question"] + " "} for r in rows]) != k  # same ids, other text (another cut)
    assert key(rows, 4096) != k
    assert qa.train_dir_name(14, 5e-4) == "train-14steps-lr0.0005" != qa.train_dir_name(14, 1e-3)
    assert json.loads(qa.jsonl([{"q": "é"}])) == {"q": "é"}


# ------------------------------------------------------------------------------------------------ train_speed merge


def _row(length, extra, run, tps=1.0):
    return {"length": length, "extra": extra, "run": run, "tokens_per_second": tps}


def test_train_speed_rows_keep_the_meta_of_the_run_that_measured_them():
    ts = _bench("train_speed")
    legacy = {"meta": {"machine": {"cpu_count": 2}, "versions": {"torch": "2.0"}, "command": "last"},
              "runs": [_row(4096, [], "2026-12-01T00:00:00"), _row(8192, [], "2026-12-02T00:00:00"),
                       _row(8192, ["naive"], "2026-12-02T00:00:00")]}
    meta = {"run": "2026-12-05T00:00:00", "machine": {"cpu_count": 16}, "versions": {"torch": "2.5"}, "command": "new"}
    res = ts.merge_results([_row(8192, ["naive"], meta["run"], 2.0)], meta, meta["run"], legacy)
    assert res["meta"] == meta  # the top-level meta stays (the latest run's), for readers of the old layout
    assert [(r["length"], r["extra"], r["run"]) for r in res["runs"]] == [
        (4096, [], "2026-12-01T00:00:00"), (8192, [], "2026-12-02T00:00:00"), (8192, ["naive"], meta["run"])]
    rm = res["run_meta"]
    # the legacy meta belongs to the latest run among the old rows (that run wrote it); an older run has none
    assert rm["2026-12-02T00:00:00"] == {**legacy["meta"], "from_legacy_meta": True} and "2026-12-01T00:00:00" not in rm
    assert rm[meta["run"]] == meta
    # a later run replacing every row of a run drops that run's entry; the others keep theirs
    meta2 = {**meta, "run": "2026-12-06T00:00:00", "machine": {"cpu_count": 32}}
    res2 = ts.merge_results([_row(8192, [], meta2["run"])], meta2, meta2["run"], json.loads(json.dumps(res)))
    assert set(res2["run_meta"]) == {meta["run"], meta2["run"]}
    assert res2["run_meta"][meta["run"]]["machine"] == {"cpu_count": 16}
    assert res2["run_meta"][meta2["run"]]["machine"] == {"cpu_count": 32}
    first = ts.merge_results([_row(2048, [], "r1")], {"run": "r1"}, "r1", None)
    assert first["run_meta"] == {"r1": {"run": "r1"}} and len(first["runs"]) == 1


def test_results_lock_is_exclusive_and_lives_beside_the_results_file(tmp_path):
    ts = _bench("train_speed")
    out = tmp_path / "res" / "train_memory-cpu.json"
    with ts.results_lock(out):
        lock = out.with_name(".train_memory-cpu.json.lock")
        assert lock.is_file() and not out.exists()
        with open(lock, "a") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a second run waits here
    with open(lock, "a") as other:  # released
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(other, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------------ atomic writes


SCRIPTS = ("eval_acceptance", "packed_attention", "search_tiny", "search_smollm2", "attention_methods", "methods",
           "planner", "train_memory", "train_speed", "instruct_qa")


@pytest.mark.parametrize("name", SCRIPTS)
def test_results_are_written_atomically(name):
    """No results JSON or summary is written in place (a crash or a reader mid-write would see half a file); the
    writes left are the inputs a script rebuilds on each run (book text, cut examples)."""
    text = (ROOT / "benchmarks" / f"{name}.py").read_text()
    assert not re.search(r"write_text\((json\.dumps|\"\\n\"\.join)", text)
    assert "np.save(" not in text and "shutil.copy(" not in text and "json.dump(" not in text
    assert not re.search(r"open\([^)]*[\"']wb?[\"']", text) and "write_bytes(" not in text
    assert "atomic_write" in text
