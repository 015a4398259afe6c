"""Time estimates: the machine's matmul and attention rates are measured, cached for an hour, and the attention rate
weighs the attention FLOPs of the stated cost."""

from __future__ import annotations

import json
import re
import time

import pytest

from ctxext.evals import Settings, cost, get_task
from ctxext.evals.runner import run_eval
from ctxext.fixtures import HELD_OUT_BOOK, books_dir
from ctxext.models import model_info


LOADED_FRACTION = cost.LOADED_FRACTION  # read at import, before conftest's steady_rates sets it to 0


@pytest.fixture
def rates(tmp_path, monkeypatch):
    """machine.json in tmp_path; fake measurements that count their calls."""
    calls = {"matmul": 0, "attention": 0, "plan": 0}
    value = {"matmul": 100e9, "attention": 25e9, "plan": 3.0}

    def fake(what):
        def measure(dtype, device):
            calls[what] += 1
            return value[what]
        return measure

    monkeypatch.setattr(cost, "cache_root", lambda: tmp_path)
    monkeypatch.setattr(cost, "measure_matmul_rate", fake("matmul"))
    monkeypatch.setattr(cost, "measure_attention_rate", fake("attention"))
    monkeypatch.setattr(cost, "measure_plan_attention_weight", fake("plan"))
    monkeypatch.setattr(cost, "LOADED_FRACTION", LOADED_FRACTION)  # conftest's steady_rates turns it off elsewhere
    return calls, value, tmp_path / "machine.json"


def test_rates_are_cached_for_an_hour_then_measured_again(rates):
    calls, value, path = rates
    assert cost.attention_weight() == 4.0 and calls == {"matmul": 1, "attention": 1, "plan": 0}
    value["attention"] = 50e9
    assert cost.attention_weight() == 4.0 and calls == {"matmul": 1, "attention": 1, "plan": 0}  # from the cache
    known = json.loads(path.read_text())
    assert len(known) == 2 and all(abs(e["at"] - time.time()) < 60 for e in known.values())
    for k in known:  # an entry older than an hour, and one in the old format (a bare number), are measured again
        known[k] = {"flops": known[k]["flops"], "at": time.time() - cost.RATE_MAX_AGE_S - 1} if "attention" in k \
            else 1e9
    path.write_text(json.dumps(known))
    assert cost.attention_weight() == 2.0 and calls == {"matmul": 2, "attention": 2, "plan": 0}
    assert cost.matmul_rate(refresh=True) == 100e9 and calls["matmul"] == 3


def test_a_rate_measured_under_load_is_kept_two_minutes_only(rates):
    """A machine busy with other work measured 14 GFLOP/s where it gives 168: cached for an hour, that rate made the
    next runs' estimates 6-12x too long. Below 0.6x the best rate seen here it is measured again after 120 s."""
    calls, value, path = rates
    assert cost.matmul_rate() == 100e9 and calls["matmul"] == 1
    value["matmul"] = 10e9  # busy
    assert cost.matmul_rate(refresh=True) == 10e9
    (key,) = [k for k in json.loads(path.read_text()) if k.endswith("|matmul")]
    entry = json.loads(path.read_text())[key]
    assert entry["best"] == 100e9 and entry["max_age"] == cost.LOADED_AGE_S == 120
    assert cost.matmul_rate() == 10e9 and calls["matmul"] == 2  # within the two minutes: cached
    known = json.loads(path.read_text())
    known[key]["at"] -= 121
    path.write_text(json.dumps(known))
    value["matmul"] = 95e9  # quiet again
    assert cost.matmul_rate() == 95e9 and calls["matmul"] == 3
    entry = json.loads(path.read_text())[key]
    assert entry["best"] == 100e9 and entry["max_age"] == cost.RATE_MAX_AGE_S
    assert cost.matmul_rate() == 95e9 and calls["matmul"] == 3  # an hour now


def test_the_best_rate_survives_old_entries_and_a_concurrent_writer(rates, monkeypatch):
    """An expired entry from before `best` was kept (168 GFLOP/s) and a busy measurement (14): best was the 14, kept
    an hour. A run that measured slowly while another wrote 168 overwrote it with its own stale copy."""
    calls, value, path = rates
    cost.matmul_rate()
    (key,) = [k for k in json.loads(path.read_text()) if k.endswith("|matmul")]
    path.write_text(json.dumps({key: {"flops": 168e9, "at": time.time() - cost.RATE_MAX_AGE_S - 1}}))
    value["matmul"] = 14e9
    assert cost.matmul_rate() == 14e9
    entry = json.loads(path.read_text())[key]
    assert entry["best"] == 168e9 and entry["max_age"] == cost.LOADED_AGE_S

    def slow(dtype, device):  # another run writes its idle measurement while this one measures
        path.write_text(json.dumps({key: {"flops": 170e9, "at": time.time(), "best": 170e9, "max_age": 3600},
                                    "other|key": {"flops": 1.0, "at": time.time()}}))
        return 14e9

    monkeypatch.setattr(cost, "measure_matmul_rate", slow)
    assert cost.matmul_rate(refresh=True) == 14e9
    known = json.loads(path.read_text())
    assert known[key]["best"] == 170e9 and known[key]["max_age"] == cost.LOADED_AGE_S and "other|key" in known


def test_estimate_weighs_attention_by_the_measured_rate(rates, tmp_path):
    """The stated time is the ppl task's FLOPs, attention weighted by matmul rate / attention rate, over the matmul
    rate: with attention at 1/4 of the matmul rate the estimate grows by 3x the attention FLOPs."""
    _, value, path = rates
    value["matmul"] = 1e7  # slow fake rates: minutes, so the printed estimate has digits to compare
    info = model_info("tiny-rope")
    book = str(books_dir() / HELD_OUT_BOOK)
    stated = {}
    for attn in (1e7, 0.25e7):
        value["attention"] = attn
        path.unlink(missing_ok=True)  # measure again with the new attention rate
        lines: list[str] = []
        res = run_eval("tiny-rope", ["default"], ["ppl"], [1024], samples=1, data=[book], out=tmp_path / "d",
                       dry_run=True, log=lines.append)
        assert res["meta"]["machine"]["attention_flops"] == attn
        text = "\n".join(lines)
        assert f"causal attention rate, {attn / 1e9:.0f} GFLOP/s" in text
        mc = cost.ModelCost.of(info, 4, attn_weight=1e7 / attn)
        expected = get_task("ppl").cost(mc, 1024, [], Settings(samples=1))[0] / 1e7
        stated[attn] = float(re.search(r"total ≈ ([\d.]+) min", text).group(1)) * 60
        assert stated[attn] == pytest.approx(expected, rel=0.05)
    attn_flops = cost.ModelCost.of(info, 4).flops(1024) - cost.ModelCost.of(info, 4, attn_weight=0.0).flops(1024)
    assert stated[0.25e7] - stated[1e7] == pytest.approx(3 * attn_flops / 1e7, rel=0.1)


def test_attention_rate_is_measured_on_this_machine():
    rate = cost.measure_attention_rate(seconds=0.05)
    assert 1e8 < rate < 1e16


def test_measured_rates_count_the_flops_the_estimates_count(monkeypatch):
    """The rates divide each kernel's FLOPs by its time: the matmul's 2·M·K·N, and causal SDPA counted as ModelCost
    counts one layer of 8 heads of 64 over 2,048 tokens (a count twice too large would halve every stated time)."""
    seen = []
    monkeypatch.setattr(cost, "_best_rate", lambda step, flop, device, seconds: seen.append(flop) or 1.0)
    cost.measure_matmul_rate()
    cost.measure_attention_rate()
    one_layer = cost.ModelCost(1, 1, 1, 512, 8, 8, 64, 1, 1)
    assert seen[0] == 2 * 2048 * 1024 * 2048
    assert seen[1] == pytest.approx(one_layer.flops(2048) - 2 * 2048, rel=1e-12)  # less the body's 2·1·T
    assert seen[1] == pytest.approx(2 * 2 * 8 * 2048 * 2048 * 64 / 2)  # QK^T and PV, 2 FLOPs per MAC, half causal


def test_best_rate_is_flops_over_the_fastest_call():
    rate = cost._best_rate(lambda: time.sleep(0.02), 1e9, "cpu", 0.05)
    assert 0.5 * 1e9 / 0.02 < rate <= 1e9 / 0.02  # a sleep never returns early



def test_a_slower_attention_path_weighs_only_the_queries_past_its_start():
    info = model_info("tiny-rope")
    plain = cost.ModelCost.of(info, 4)
    slow = cost.ModelCost(**{**plain.__dict__, "plan_from": 256, "plan_weight": 3.0})
    per_pair = 4.0 * plain.n_layers * plain.heads * plain.head_dim
    assert slow.flops(256) == plain.flops(256)  # every query inside the window
    # queries 256..1023 after keys 0..255 and among themselves: (768·256 + 768²/2) pairs, 2 extra times each
    assert slow.flops(1024) - plain.flops(1024) == pytest.approx(2 * per_pair * (768 * 256 + 768 ** 2 / 2))
    # a cached call wholly past the window: all of its pairs are weighted
    assert slow.flops(64, past=2048) - plain.flops(64, past=2048) == pytest.approx(
        2 * per_pair * (64 * 2048 + 64 ** 2 / 2))


def test_for_spec_gives_the_dynamic_methods_their_path_and_nothing_else():
    from ctxext.scaling import parse_spec

    info = model_info("tiny-rope")
    mc, asked = cost.ModelCost.of(info, 4), []

    def weight():
        asked.append(1)
        return 2.5

    for text in ("default", "yarn:factor=4", "self-extend:group=4,window=64", "streaming:sinks=4,window=60"):
        assert mc.for_spec(parse_spec(text), info.rope_shape, weight) is mc
    assert not asked  # measured only for a spec that needs it
    dyn = mc.for_spec(parse_spec("dynamic-ntk:factor=4"), info.rope_shape, weight)
    assert (dyn.plan_from, dyn.plan_weight) == (info.trained_len, 2.5)
    own = mc.for_spec(parse_spec("dynamic-yarn:original_max_position_embeddings=128"), info.rope_shape, weight)
    assert own.plan_from == 128  # the trained length the spec says


def test_dynamic_specs_get_their_own_estimate_past_the_window(rates, tmp_path):
    calls, value, _ = rates
    value.update(matmul=1e7, attention=1e7, plan=4.0)  # the per-bucket path at a quarter of the plain rate
    book = str(books_dir() / HELD_OUT_BOOK)
    lines: list[str] = []
    res = run_eval("tiny-rope", ["default", "dynamic-ntk:factor=4"], ["ppl"], [256, 1024], samples=1, data=[book],
                   out=tmp_path / "d", dry_run=True, log=lines.append)
    assert res["meta"]["machine"]["plan_attention_weight"] == 4.0 and calls["plan"] == 1
    rows = [ln for ln in lines[-1].splitlines() if ln.strip().startswith("ppl")]
    # inside the window both specs cost the same (one row); at 1,024 the dynamic one is its own, dearer row
    at_256 = [r for r in rows if " 256 tokens" in r]
    at_1024 = {("dynamic" in r): r for r in rows if "1,024 tokens" in r}
    assert len(at_256) == 1 and "(" not in at_256[0] and set(at_1024) == {True, False}

    def minutes(row):
        return float(re.search(r"([\d.]+) min", row).group(1))

    info = model_info("tiny-rope")
    plain = cost.ModelCost.of(info, 4)
    past = 4.0 * plain.n_layers * plain.heads * plain.head_dim * (768 * 256 + 768 ** 2 / 2)
    assert (minutes(at_1024[True]) - minutes(at_1024[False])) * 60 == pytest.approx(3 * past / 1e7, rel=0.05)
    res = run_eval("tiny-rope", ["default"], ["ppl"], [1024], samples=1, data=[book], out=tmp_path / "e",
                   dry_run=True, log=lines.append)
    assert "plan_attention_weight" not in res["meta"]["machine"] and calls["plan"] == 1


def test_plan_attention_weight_is_measured_here_and_kept_within_its_bounds(rates):
    calls, value, _ = rates
    for measured, used in ((40.0, cost.PLAN_WEIGHT_MAX), (0.5, 1.0), (2.5, 2.5)):
        value["plan"] = measured
        assert cost.plan_attention_weight(refresh=True) == used
    assert calls["plan"] == 3


def test_plan_attention_weight_measures_the_per_bucket_path():
    w = cost.measure_plan_attention_weight(seconds=0.1)
    assert 0.5 < w < 100  # the real ratio on this machine (about 2-3 when idle); bounds only catch a broken timer


def test_a_gpu_sweep_is_sized_without_the_cpu_branch_cache():
    """Depth sweeps fuse their branches with a cache of their own only on the CPU; a GPU scores the probes on the
    shared cache, so its peak is the plain probe path's (a 7B shape at 32k was stated 52.5 GB for 38 GB of need)."""
    import dataclasses

    from ctxext.evals.needles import depth_cost

    mc = cost.ModelCost(7e9, 6.7e9, 32, 4096, 32, 32, 128, 11008, 32000, dtype_bytes=2)
    s = Settings(samples=1)
    cpu = depth_cost(mc, 32768, [0.5], 1, s)[1]
    gpu = depth_cost(dataclasses.replace(mc, fused=False), 32768, [0.5], 1, s)[1]
    assert gpu == mc.peak_cached(32768, plain=True) and cpu > gpu + 0.25 * mc.kv_cache(32768)


def test_a_numbered_gpu_is_the_one_measured_and_sized(monkeypatch, tmp_path):
    """--device cuda:1 read GPU 0's free memory and timed GPU 0 (the current device), not GPU 1."""
    import dataclasses

    import torch

    from ctxext.evals import runner

    seen = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: seen.append(d) or (10 * 2**30, 80 * 2**30))
    assert cost.available_memory("cuda:1") == 10 * 2**30 and seen == [torch.device("cuda:1")]
    wheres = []
    import ctxext.models as models

    monkeypatch.setattr(models, "resolve_device", lambda d: "cuda:1")
    monkeypatch.setattr(runner, "matmul_rate", lambda dt, where: wheres.append(where) or 1e12)
    monkeypatch.setattr(runner, "attention_rate", lambda dt, where: wheres.append(where) or 1e12)
    monkeypatch.setattr(runner, "available_memory", lambda where: wheres.append(where) or 1e12)
    lines = []
    runner.run_eval("tiny-rope", ["default"], ["passkey"], [256], depths=[0.5], samples=1, out=tmp_path / "o",
                    device="cuda:1", dry_run=True, progress=False, log=lines.append)
    assert wheres and set(wheres) == {"cuda:1"}
    # and the depth sweep is stated at the GPU path's peak (no CPU branch cache)
    mc = cost.ModelCost.of(model_info("tiny-rope"), 4)
    gpu, cpu = (cost.fmt_bytes(m.peak_branches(256)) for m in (dataclasses.replace(mc, fused=False), mc))
    row = next(ln for ln in lines[-1].splitlines() if "passkey" in ln)
    assert gpu != cpu and f" {gpu} " in row, row


def test_ppl_is_costed_for_the_documents_data_holds(tmp_path):
    """ppl averages --samples documents (default 4); one book was stated at 4 forwards per cell."""
    from ctxext.evals.runner import run_eval

    def stated(**kw):
        lines = []
        run_eval("tiny-rope", ["default"], ["ppl"], [1024], data=[books_dir() / HELD_OUT_BOOK], dry_run=True,
                 out=tmp_path / str(len(kw)), progress=False, log=lines.append, **kw)
        return [ln for ln in lines[-1].splitlines() if "ppl" in ln][0]

    assert stated() == stated(samples=1)
    jl = tmp_path / "docs.jsonl"
    jl.write_text("".join(json.dumps({"text": "word " * 2000}) + "\n" for _ in range(3)) + "\n")
    from ctxext.data import data_files, document_count

    assert document_count(data_files([jl, books_dir() / HELD_OUT_BOOK])) == 4
