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
           "planner", "train_memory", "train_speed", "instruct_qa", "train_tiny")


@pytest.mark.parametrize("name", SCRIPTS)
def test_results_are_written_atomically(name):
    """No results JSON or summary is written in place (a crash or a reader mid-write would see half a file); the
    writes left are the inputs a script rebuilds on each run (book text, cut examples)."""
    text = (ROOT / "benchmarks" / f"{name}.py").read_text()
    assert not re.search(r"write_text\((json\.dumps|\"\\n\"\.join)", text)
    assert "np.save(" not in text and "shutil.copy(" not in text and "json.dump(" not in text
    assert not re.search(r"open\([^)]*[\"']wb?[\"']", text) and "write_bytes(" not in text
    assert "atomic_write" in text


# ------------------------------------------------------------------------------------------------ review fixes


def test_train_speed_refuses_to_merge_runs_of_another_model_or_scaling():
    ts = _bench("train_speed")
    smol = {"run": "r1", "model": "smollm2-135m", "scaling": "yarn:factor=8", "steps": 2}
    old = ts.merge_results([_row(4096, [], "r1")], smol, "r1", None)
    tiny = {**smol, "run": "r2", "model": "tiny-rope", "steps": 4}
    with pytest.raises(SystemExit, match="another setup"):
        ts.merge_results([_row(1024, [], "r2")], tiny, "r2", old)
    with pytest.raises(SystemExit, match="scaling"):  # a legacy file (no run_meta) is checked by its meta
        ts.merge_results([_row(1024, [], "r2")], {**smol, "run": "r2", "scaling": "linear:factor=8"}, "r2",
                         {"meta": smol, "runs": old["runs"]})
    # other steps are merged: each row records its own
    more = ts.merge_results([_row(8192, [], "r2")], {**smol, "run": "r2", "steps": 4}, "r2", old)
    assert [r["length"] for r in more["runs"]] == [4096, 8192]


def test_train_speed_peak_table_matches_the_exact_sku_and_measures_an_unknown_gpu(monkeypatch):
    import torch

    import ctxext.evals.cost as cost

    ts = _bench("train_speed")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    peaks = {}
    for name in ("NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200", "NVIDIA B200"):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0, n=name: n)
        peaks[name] = ts.device_name()[1]
    assert peaks == {"NVIDIA H100 80GB HBM3": 989.4e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H100 NVL": 835e12,
                     "NVIDIA H200": 989.4e12, "NVIDIA B200": None}
    calls = []
    monkeypatch.setattr(cost, "measure_matmul_rate", lambda dtype=None, device="cpu", seconds=0.4:
                        calls.append((dtype, device)) or 1e12)
    assert ts.reference_rate("NVIDIA B200", None) == (1e12, "bfloat16")
    assert ts.reference_rate("cpu", None) == (1e12, "float32")
    assert ts.reference_rate("NVIDIA H200", 989.4e12) == (None, None)
    assert calls == [(torch.bfloat16, "cuda"), (torch.float32, "cpu")]  # the GPU's own rate, not the CPU's


def test_eval_speed_quick_on_a_gpu_never_writes_the_cpu_files(tmp_path, monkeypatch):
    import torch

    es = _bench("eval_speed")
    results = tmp_path / "results"
    monkeypatch.setattr(es, "HERE", tmp_path)
    monkeypatch.setitem(es.QUICK, "out", str(results / "eval_speed_quick.json"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H100 80GB HBM3")
    ppl = {"seconds": 0.1, "tokens_per_s": 40960.0, "loss": 2.0, "process_peak_mb": 900.0, "device_peak_mb": 100.0}
    monkeypatch.setattr(es, "spawn", lambda name, args: {"fp32_matmul_flops": 1e13} if name == "rate" else dict(ppl))
    results.mkdir()
    cpu_quick = {"device": "cpu", "prefix_reuse": {"cost_ratio": 0.5}}
    (results / "eval_speed_quick.json").write_text(json.dumps(cpu_quick))
    es.main(["--quick", "--device", "cuda"])
    assert json.loads((results / "eval_speed_quick.json").read_text()) == cpu_quick  # untouched
    gpu = json.loads((results / "eval_speed-nvidia-h100-80gb-hbm3-quick.json").read_text())
    assert gpu["device"] == "NVIDIA H100 80GB HBM3" and gpu["quick"] and "prefix_reuse" not in gpu
    es.main(["--device", "cuda", "--repeats", "1"])
    assert (results / "eval_speed-nvidia-h100-80gb-hbm3.json").is_file() and not (results / "eval_speed.json").exists()
    es.main(["--device", "cuda", "--repeats", "1", "--out", str(tmp_path / "mine.json")])  # an --out given is kept
    assert (tmp_path / "mine.json").is_file()


def _search_fakes(tmp_path, monkeypatch, st, hist: list[dict]):
    """search_tiny.main's search and evaluations replaced: `hist` is the search's history."""
    import ctxext.evals
    import ctxext.search

    monkeypatch.setattr(st, "ROOT", tmp_path)
    monkeypatch.setattr(st, "OUT", tmp_path / "search_tiny_rope")
    monkeypatch.chdir(tmp_path)

    def run_search(model, data, search_dir, cfg, **kw):
        (tmp_path / search_dir).mkdir(parents=True, exist_ok=True)
        (tmp_path / search_dir / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in hist))
        return {"seeds": {"yarn": 1.04, "ntk": 0.97}, "beat_yarn_at_cost": 0.5, "config": {}, "spent": 6.0,
                "evaluations": len(hist), "generations": 1, "best": {"fitness": 0.97, "found_at_cost": 0.5},
                "reference": {"fitness": 1.1, "beaten_at_cost": 0.5}, "guard": {}, "curve": [], "replayed": 0}

    def run_eval(model, specs, tasks, lengths, **kw):
        return {"records": [{"scaling": s, "task": tasks[0], "length": L, "bucket": None, "value": 50.0}
                            for s in specs for L in lengths]}

    monkeypatch.setattr(ctxext.search, "run_search", run_search)
    monkeypatch.setattr(ctxext.evals, "run_eval", run_eval)
    monkeypatch.setattr(st, "held_out_windows", lambda path, n: str(path))


def test_search_tiny_finishes_when_no_searched_candidate_beats_the_yarn_seed(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))  # search_tiny imports its sibling train_tiny
    st = _bench("search_tiny")
    h = {"length": 1024, "samples": 4, "seconds": 1.0}
    hist = [{**h, "origin": "seed:yarn", "fitness": 1.04, "cost_total": 0.25},
            {**h, "origin": "seed:ntk", "fitness": 0.97, "cost_total": 0.5},  # a seed, not the search, beats YaRN's
            {**h, "origin": "mutate", "fitness": 1.2, "cost_total": 1.5}]
    _search_fakes(tmp_path, monkeypatch, st, hist)
    st.main(["--budget", "6", "--samples", "4", "--windows", "2", "--trials", "2"])
    summary = json.loads((tmp_path / "search_tiny_rope" / "summary.json").read_text())
    assert summary["search"]["first_searched_below_yarn_seed"] is None
    assert summary["search"]["first_below_yarn_seed"]["origin"] == "seed:ntk"
    assert summary["checks"]["searched candidate's fitness < YaRN seed within 130"] is False  # a seed does not count
    assert "first *searched* candidate (not a seed) below it not reached" in (
        tmp_path / "search_tiny_rope" / "summary.md").read_text()
    hist.append({**h, "origin": "crossover", "fitness": 0.95, "cost_total": 2.5})
    _search_fakes(tmp_path, monkeypatch, st, hist)
    st.main(["--budget", "6", "--samples", "4", "--windows", "2", "--trials", "2"])
    summary = json.loads((tmp_path / "search_tiny_rope" / "summary.json").read_text())
    assert summary["search"]["first_searched_below_yarn_seed"]["origin"] == "crossover"
    assert summary["checks"]["searched candidate's fitness < YaRN seed within 130"] is True


def test_quick_keeps_every_option_typed_on_the_command_line(train_memory, tmp_path, monkeypatch):
    # typed equal to the default: still kept (the full run's lengths with --quick's file)
    assert train_memory.parse_args(["--quick", "--lengths", "2048,4096,8192"]).lengths == "2048,4096,8192"
    assert train_memory.parse_args(["--quick", "--lengths=2048,4096,8192"]).lengths == "2048,4096,8192"
    assert train_memory.parse_args(["--quick"]).lengths == "2048"
    sys.path.insert(0, str(ROOT / "benchmarks"))
    st = _bench("search_tiny")
    seen = {}

    def stop(*a, **kw):
        raise RuntimeError("stop")

    monkeypatch.setattr(st, "ROOT", tmp_path)
    monkeypatch.setattr(st, "OUT", tmp_path / "search_tiny_rope")
    monkeypatch.chdir(tmp_path)
    import ctxext.search

    monkeypatch.setattr(ctxext.search, "config_from", lambda target, **kw: seen.update(kw) or stop())
    with pytest.raises(RuntimeError):
        st.main(["--quick", "--samples", "20", "--budget", "40"])
    assert (seen["samples"], seen["budget"]) == (20, 40.0)  # samples typed at its default, budget another value
    with pytest.raises(RuntimeError):
        st.main(["--quick"])
    assert (seen["samples"], seen["budget"]) == (10, 30.0)
    sm = _bench("search_smollm2")  # the same for the SmolLM2 search (it applied QUICK over every typed option)
    monkeypatch.setattr(sm, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(sm, "ROOT", tmp_path)
    with pytest.raises(RuntimeError):
        sm.main(["--quick", "--budget", "12"])
    assert seen["budget"] == 12.0
    with pytest.raises(RuntimeError):
        sm.main(["--quick"])
    assert seen["budget"] == 7.0


def test_train_tiny_quick_keeps_typed_steps_and_a_rerun_keeps_the_other_methods(tmp_path, monkeypatch):
    tt = _bench("train_tiny")
    args = {"model": "tiny-rope", "methods": "linear,yarn,abf", "steps": 200, "out": "x"}
    row = lambda v: {"spec": v, "after": {"ppl_last_quarter": 1.0}}  # noqa: E731
    first = tt.merge_summary(None, {"machine": {"cpu_count": 2}, "args": args},
                             {m: row(m) for m in ("linear", "yarn", "abf")})
    rerun = tt.merge_summary(first, {"machine": {"cpu_count": 16}, "args": {**args, "methods": "abf"}},
                             {"abf": row("abf2")})
    assert list(rerun["runs"]) == ["linear", "yarn", "abf"] and rerun["runs"]["abf"]["spec"] == "abf2"
    assert rerun["meta"]["args"]["methods"] == "linear,yarn,abf"
    assert rerun["meta"]["kept_runs"] == {"methods": ["linear", "yarn"], "machine": {"cpu_count": 2}, "versions": None}
    other = tt.merge_summary(first, {"args": {**args, "methods": "abf", "steps": 100}}, {"abf": row("abf")})
    assert list(other["runs"]) == ["abf"]  # another recipe's rows are not mixed in
    # --quick keeps a typed --steps (it replaced it before): the run is stopped where the steps first count
    seen = []

    def stop(path, model, share, train_tokens, **kw):
        seen.append(train_tokens)
        raise RuntimeError("stop")

    monkeypatch.setattr(tt, "pretrain_mix", stop)
    for argv, steps in ((["--steps", "150"], 150), ([], tt.QUICK["steps"])):
        with pytest.raises(RuntimeError):
            tt.main(["--quick", *argv, "--pretrain-mix", "0.25", "--batch-tokens", "1000", "--out", str(tmp_path)])
        assert seen.pop() == steps * 1000


def test_planner_second_only_run_keeps_the_kept_rows_first_date_and_machine(tmp_path, monkeypatch):
    planner = _bench("planner")

    def fake_run(configs, cache, criterion="ppl2x"):
        return [{"model": m, "spec": s, "criterion": criterion, "measured": float(L), "censored": False,
                 "within_25pct": True, "predicted": L / 2, "predicted_capped": False} for m, s, L, _ in configs]

    monkeypatch.setattr(planner, "run", fake_run)
    out = tmp_path / "planner.json"
    tiny = [{"model": "tiny-rope", "spec": "default", "criterion": "ppl2x", "measured": 1.0, "censored": True,
             "within_25pct": False}]
    out.write_text(json.dumps({"date": "2026-12-01", "machine": {"platform": "v973"}, "rows": tiny}))
    planner.main(["--only", "smollm2-135m", "--out", str(out)])
    first = json.loads(out.read_text())
    assert first["rows_kept_from"] == {"date": "2026-12-01", "machine": {"platform": "v973"}, "models": ["tiny-rope"]}
    planner.main(["--only", "smollm2-135m", "--out", str(out)])  # again: the tiny rows are still 2026-12-01's
    assert json.loads(out.read_text())["rows_kept_from"] == first["rows_kept_from"]


def test_train_memory_keeps_each_files_model_for_estimates_and_refuses_another(train_memory, tmp_path, monkeypatch):
    out = tmp_path / "tm.json"
    row = {"length": 2048, "variant": "tuned", "peak_gib": 1.0, "memory_estimate": {"total": 2**30}}
    out.write_text(json.dumps({"meta": {"model": "tiny-rope", "scaling": "yarn:factor=4"}, "runs": [row]}))
    seen = []
    monkeypatch.setattr(train_memory, "current_estimate", lambda m, s, L, v: seen.append((m, s)) or 1.0)
    monkeypatch.setattr(train_memory, "run_child", lambda *a: pytest.fail("--add across models must not run"))
    train_memory.main(["--reestimate", "--out", str(out)])  # no --model given: the file's, not smollm2's
    assert seen == [("tiny-rope", "yarn:factor=4")]
    with pytest.raises(SystemExit, match="own --out"):
        train_memory.main(["--add", "--lengths", "4096", "--out", str(out)])


def test_eval_acceptance_writes_beside_its_own_out_with_machine_and_versions(tmp_path, monkeypatch):
    import ctxext.evals

    ea = _bench("eval_acceptance")
    monkeypatch.setattr(ea, "HERE", tmp_path)  # the committed record's folder, here a scratch one
    monkeypatch.setattr(ea, "DEFAULT_OUT", tmp_path / "results" / "smollm2_16k")
    committed = tmp_path / "results" / "eval_acceptance.json"

    def run_eval(model, specs, tasks, lengths, **kw):
        return {"records": [{"scaling": s, "metric": "ppl", "bucket": [b, b + 2048], "value": 10.0 + b / 1024}
                            for s in specs for b in range(0, 16384, 2048)]}

    monkeypatch.setattr(ctxext.evals, "run_eval", run_eval)
    book = tmp_path / "other.txt"
    book.write_text("text")
    ea.main(["--book", str(book), "--out", str(tmp_path / "ev")])
    assert not committed.exists()  # another --out: the committed record is left alone
    rec = json.loads((tmp_path / "ev" / "acceptance.json").read_text())
    assert rec["book"] == "other.txt" and rec["machine"]["cpu_count"] and rec["versions"]["torch"]
    ea.main(["--book", str(book)])  # the default eval folder still writes the committed record
    assert json.loads(committed.read_text())["book"] == "other.txt"
