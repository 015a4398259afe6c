"""What a document boundary in a packed training row costs SDPA: one attention call (forward + backward) with
`is_causal` (a row inside one document), with the block-diagonal boolean mask transformers builds for a row that
holds a boundary, and attending within each document separately (what a per-document split would cost).

    python benchmarks/packed_attention.py [--lengths 4096,8192] [--heads 9] [--head-dim 64] [--cut 0.33]

SmolLM2-135M's attention shape by default; best of --repeats; writes benchmarks/results/packed_attention.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def best_seconds(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn().sum().backward()
        best = min(best, time.perf_counter() - t)
    return best


def measure(length: int, heads: int, head_dim: int, cut: float, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, heads, length, head_dim, requires_grad=True) for _ in range(3))
    at = int(cut * length)
    doc = (torch.arange(length) >= at).long()
    mask = (doc[:, None] == doc[None, :]) & torch.ones(length, length, dtype=torch.bool).tril()
    causal = best_seconds(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), repeats)
    masked = best_seconds(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None, None]), repeats)
    split = best_seconds(lambda: torch.cat([F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b],
                                                                           is_causal=True)
                                            for a, b in ((0, at), (at, length))], 2), repeats)
    return {"length": length, "boundary_at": at, "causal_s": causal, "block_mask_s": masked,
            "per_document_s": split, "block_mask_over_causal": masked / causal, "per_document_over_causal": split / causal}


def main() -> None:
    import torch

    from ctxext import runinfo
    from ctxext.evals.files import atomic_write

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="4096,8192")
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--cut", type=float, default=1 / 3, help="where the second document starts (fraction of the row)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "packed_attention.json"))
    args = p.parse_args()
    rows = [measure(int(L), args.heads, args.head_dim, args.cut, args.repeats) for L in args.lengths.split(",")]
    res = {"meta": {"versions": runinfo.versions(), "machine": runinfo.machine(), "threads": torch.get_num_threads(),
                    "heads": args.heads, "head_dim": args.head_dim, "repeats": args.repeats}, "runs": rows}
    atomic_write(Path(args.out), json.dumps(res, indent=1) + "\n")
    for r in rows:
        print(f"{r['length']:>6}: causal {r['causal_s']:.2f} s, block mask {r['block_mask_s']:.2f} s "
              f"({r['block_mask_over_causal']:.2f}x), per document {r['per_document_s']:.2f} s "
              f"({r['per_document_over_causal']:.2f}x)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
