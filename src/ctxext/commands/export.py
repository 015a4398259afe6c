"""`ctxext export`: a checkpoint with the scaled RoPE that stock transformers load, verified."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF directory, .gguf file, or built-in name (smollm2-135m, tiny-rope, ...)")
    p.add_argument("--scaling", required=True, help="SPEC: name:key=value,... or a ctxext JSON file (e.g. runs/search/best.json)")
    p.add_argument("--out", required=True, help="folder to write the checkpoint into")
    p.add_argument("--verify-tokens", type=int, default=1000, help="tokens of book text for the stock-load logit check (>= 1)")
    p.add_argument("--max-len", type=int, default=None, metavar="N",
                   help="max_position_embeddings to write for a default or abf rope (default: the trained length; "
                        "vLLM serves at most this many tokens of such a checkpoint); other ropes set it from their factor")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def run(args: argparse.Namespace) -> int:
    from ..export import export

    res = export(args.model, args.scaling, args.out, verify_tokens=args.verify_tokens, overwrite=args.overwrite,
                 max_len=args.max_len)
    v = res["verification"]
    rp = res["rope_parameters"]
    print(f"wrote {args.out}: rope_type={rp.get('rope_type', 'n/a')}, "
          f"max_position_embeddings={res['max_position_embeddings']}")
    print(f"stock transformers load: max |logit diff| {v['max_abs_logit_diff']:.3g} over {v['tokens']} tokens "
          f"({'ok' if v['passed'] else 'MISMATCH'})")
    if res.get("model_original_len", res["original_max_position_embeddings"]) != res["original_max_position_embeddings"]:
        print(f"note: the spec sets the trained length to {res['original_max_position_embeddings']}; the model's "
              f"config says {res['model_original_len']} (was the spec made for this model?)")
    if rp.get("rope_type") == "default" and res["meta"]["resolved"]["method"] != "default" \
            and res["max_position_embeddings"] <= res["original_max_position_embeddings"]:
        print(f"note: vLLM serves at most max_position_embeddings ({res['max_position_embeddings']}) tokens of this "
              "checkpoint; pass --max-len N to write the length this base is meant for")
    past = v.get("past_window")
    if past is not None and not past["same"]:
        print(f"past the window the checkpoint differs from what ctxext measured: max |logit diff| "
              f"{past['max_abs_logit_diff']:.3g} from position {past['positions_from']} ({past['why']}); see its README.md")
    return 0 if v["passed"] else 1
