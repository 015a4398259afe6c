"""Write a checkpoint that stock transformers (and vLLM) load with the scaled RoPE, and prove it.

The config carries the rope in both Hugging Face schemas (DESIGN.md compatibility contract):
`rope_parameters` (transformers >= 5) and top-level `rope_theta` + `rope_scaling` (4.4x-4.5x).
Everything that can fail is checked from the config alone, before any weights are loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .errors import CtxextError
from .scaling import Spec, check_fits, config_rope_fields, legacy_rope_fields, parse_spec
from .scaling.hf import SCALE_AT_INIT
from .scaling.spec import MAX_POSITIONS, effective_shape

VERIFY_TOKENS = 1000


@dataclass(frozen=True)
class ExportPlan:
    """What will be written, resolved from the model config and the spec (no weights)."""

    model: str
    spec: Spec
    rope_parameters: dict[str, Any]
    max_position_embeddings: int
    original_len: int
    model_type: str | None = None


def plan_export(model: str, spec: Spec | str, max_len: int | None = None) -> ExportPlan:
    """`max_len`: the max_position_embeddings to write for a rope whose stock form never reads it (default, abf),
    e.g. the length an abf model was fine-tuned at; vLLM serves at most max_position_embeddings tokens of such a
    checkpoint. Other ropes set it from their own factor."""
    from .models import model_info

    spec = parse_spec(spec) if isinstance(spec, str) else spec
    info = model_info(model)
    if info.encoding != "rope":
        check_fits(spec, info.encoding)
        if spec.method != "default":
            raise CtxextError(f"cannot export '{spec.text}': stock {info.config.get('model_type', 'ALiBi')} configs "
                              "have no field for ALiBi slopes, so the checkpoint would silently use the original ones")
        if max_len is not None:
            raise CtxextError("--max-len applies to RoPE models; ALiBi configs carry no length a server reads")
        return ExportPlan(model, spec, {}, int(info.trained_len), int(info.trained_len))
    if spec.method != "default":  # what the config decides (an architecture ctxext cannot scale) before weights
        from .models import check_before_weights

        check_before_weights(spec, info)
    rope_parameters, max_pos = config_rope_fields(spec, info.config)
    plan = ExportPlan(model, spec, rope_parameters, max_pos, effective_shape(spec, info.rope_shape).original_len,
                      info.config.get("model_type"))
    if max_len is not None:
        plan = replace(plan, max_position_embeddings=_check_max_len(max_len, plan))
    _check_stock_config(export_config(info.config, plan), spec)
    return plan


def _check_max_len(max_len: int, plan: ExportPlan) -> int:
    kind = plan.rope_parameters.get("rope_type", "default")
    if kind != "default":
        raise CtxextError(f"--max-len: '{plan.spec.text}' exports a {kind} rope, whose stock form sets its length "
                          f"from its own factor (max_position_embeddings {plan.max_position_embeddings}); --max-len "
                          "is for default and abf ropes")
    if not plan.original_len <= max_len <= MAX_POSITIONS:
        raise CtxextError(f"--max-len must be from the trained length {plan.original_len} to {MAX_POSITIONS}, "
                          f"got {max_len}")
    return int(max_len)


def _check_stock_config(cfg: dict[str, Any], spec: Spec) -> None:
    """Refuse, before weights, a config the model's own config class rejects (Phi3 takes only default and longrope
    ropes in transformers 5)."""
    from transformers import AutoConfig

    try:
        AutoConfig.for_model(**cfg)
    except Exception as e:  # config classes raise KeyError, ValueError or huggingface_hub's validation error
        cause = e.__cause__ or e
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0].strip("'\"")
        raise CtxextError(f"cannot export '{spec.text}': stock transformers rejects it for "
                          f"{cfg.get('model_type', 'this model')}: {first}") from None


def export_config(config: dict[str, Any], plan: ExportPlan) -> dict[str, Any]:
    """The source config with the rope fields replaced, in both schemas. A rope that names its original length
    also gets it at the top level: transformers 4.5x reads longrope's short/long switch only there, and 5.x
    prefers a top-level value (Phi3 configs carry one) over rope_parameters for yarn, llama3 and longrope."""
    cfg = {k: v for k, v in config.items() if k not in ("rope_scaling", "rope_parameters", "rope_theta")}
    if plan.rope_parameters:
        cfg["rope_parameters"] = plan.rope_parameters
        cfg.update(legacy_rope_fields(plan.rope_parameters, cfg.get("model_type")))
        if "original_max_position_embeddings" in plan.rope_parameters:
            cfg["original_max_position_embeddings"] = plan.rope_parameters["original_max_position_embeddings"]
        elif plan.max_position_embeddings != plan.original_len and plan.rope_parameters.get("rope_type") == "default":
            # served past its trained length (--max-len): the trained length stays readable at the top level, as
            # Phi3 configs carry it, for ctxext and anyone reading the config; stock default ropes never read it
            cfg["original_max_position_embeddings"] = plan.original_len
    cfg["max_position_embeddings"] = plan.max_position_embeddings
    return cfg


def _tokenizer_for_transformers4(folder: Path) -> None:
    """transformers 5 names its fast tokenizer class TokenizersBackend, which 4.x cannot load ("does not exist");
    PreTrainedTokenizerFast is the same class in 5.x and the one 4.x knows."""
    path = folder / "tokenizer_config.json"
    if path.is_file():
        cfg = json.loads(path.read_text())
        if cfg.get("tokenizer_class") == "TokenizersBackend":
            cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
            path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def _public(folder: Path) -> None:
    """The modes a plain save would get under the user's umask: mkdtemp makes the folder 0700 and transformers
    writes the weights 0600, so a serving process under another user could not read the checkpoint."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.rglob("*"):
        f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)


def _sample_ids(tokenizer, n_tokens: int) -> list[int]:
    from .fixtures import HELD_OUT_BOOK, books_dir

    try:
        text = (books_dir() / HELD_OUT_BOOK).read_text(encoding="utf-8", errors="replace")[: 20 * n_tokens]
    except CtxextError:
        text = " ".join(f"Sentence number {i} of a plain verification text." for i in range(n_tokens))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n_tokens]
    return ids


# stock rope types that rescale every position by the length of the whole forward (transformers' "dynamic": one NTK
# base from the largest position id), where ctxext rescales each query by its own position
STOCK_PER_FORWARD = ("dynamic",)
PAST_WINDOW_PROBE = 192  # tokens past the window that the from-0 probe runs (three of ctxext's 64-position buckets)


def _past_window(model, stock, ids: list[int], plan: ExportPlan, tokenizer: Any) -> dict[str, Any]:
    """Where a per-forward stock rope and ctxext's per-position one part, past the trained length: the sample placed
    just past it, and a sequence from position 0 running PAST_WINDOW_PROBE tokens past it (what eval measures; the
    placed sample alone can fall in one of ctxext's 64-position buckets whose base equals stock's and read 0). The
    difference is reported, so nobody takes ctxext's figures past the window for the checkpoint's."""
    L = plan.original_len
    whole = _sample_ids(tokenizer, L + PAST_WINDOW_PROBE)
    diff = max(max_logit_diff(model, stock, ids, L),
               max_logit_diff(model, stock, whole, 0, keep=len(whole) - L) if len(whole) > L else 0.0)
    return {"positions_from": L, "tokens": len(ids), "from_zero_tokens": len(whole), "max_abs_logit_diff": diff,
            "same": bool(diff < 1e-4),
            "why": "stock transformers' 'dynamic' rope takes one NTK base from the longest position of each forward "
                   "(and keeps it for later cached steps); ctxext's dynamic-ntk takes it per query position"}


def max_logit_diff(a, b, ids: list[int], start: int = 0, keep: int = 0) -> float:
    """Max |logits_a − logits_b| over a sequence placed at positions start, start+1, … (full logits are fine at
    verification length; `keep` > 0: over its last `keep` positions only)."""
    import torch

    x = torch.tensor([ids])
    pos = torch.arange(start, start + len(ids))[None]
    kw = {"logits_to_keep": keep} if keep else {}
    with torch.inference_mode():
        return float((a(x, position_ids=pos, **kw).logits - b(x, position_ids=pos, **kw).logits).abs().max())


STAGING = ".export-"  # the staging folders' prefix, beside --out
STALE_HOURS = 24  # a staging folder untouched this long belongs to a killed export (a live one writes within minutes)


def _drop_stale_staging(parent: Path) -> None:
    """Delete staging folders a killed export left beside --out (a full checkpoint each: 520 MB for SmolLM2); an
    earlier export set aside for its replacement (killed between the two renames) is kept for the user."""
    import time

    for d in parent.glob(STAGING + "*"):
        try:
            if not d.is_dir() or time.time() - d.stat().st_mtime < STALE_HOURS * 3600:
                continue
            if d.name.endswith("-old") and is_export(d):
                continue  # an export set aside: its --out is unknown here, so it is kept for the user
            shutil.rmtree(d, ignore_errors=True)
        except OSError:
            pass


def is_export(folder: Path) -> bool:
    """Whether `folder` holds a checkpoint ctxext export wrote (its results.json records a verification)."""
    try:
        return "verification" in json.loads((folder / "results.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def _check_out(out: Path, overwrite: bool, source: Path | None = None) -> Path:
    """Refuse an --out that cannot be written or must not be replaced; create its parent, where the checkpoint is
    staged (same file system, so the final rename is atomic); -> the resolved folder (a symlink's target: the
    staging and the rename happen there). `--overwrite` replaces only an earlier export: '--out .' deleted the
    folder the command ran in, and '--out' a folder above the model deleted the model."""
    out = out.resolve()
    if out.exists() and not out.is_dir():
        raise CtxextError(f"--out {out} is a file; choose a folder")
    here = Path.cwd().resolve()
    if out == here or out in here.parents:
        raise CtxextError(f"--out {out} is the folder the command runs in (or holds it); choose a new folder")
    if source is not None and (out == source or out in source.parents):
        raise CtxextError(f"--out {out} is the source model's folder (or holds it); choose a new folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CtxextError(f"--out {out} exists and is not empty; choose another folder or pass --overwrite")
        if not is_export(out):
            raise CtxextError(f"--out {out} holds files that are not a ctxext export; --overwrite replaces only an "
                              "earlier export: choose another folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CtxextError(f"--out {out}: cannot create its parent folder ({e.strerror or e})") from None
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise CtxextError(f"--out {out}: its parent folder {out.parent} is not writable")
    return out


def _check_verify_tokens(verify_tokens: int) -> None:
    if not verify_tokens >= 1:
        raise CtxextError(f"--verify-tokens must be >= 1 (the stock-load check needs tokens), got {verify_tokens}")


def _source_folder(model: str) -> Path | None:
    from .models.names import resolve_source

    src = resolve_source(model)
    return Path(src.path).resolve() if src.kind == "hf" else None


def export(model: str, spec: Spec | str, out: str | Path, verify_tokens: int = VERIFY_TOKENS,
           overwrite: bool = False, max_len: int | None = None) -> dict[str, Any]:
    """Export `model` scaled by `spec` into `out`; return the results written to out/results.json. `max_len`: see
    plan_export."""
    from .models import apply_spec, load_model
    from .models.load import require_tokenizer

    _check_verify_tokens(verify_tokens)
    plan = plan_export(model, spec, max_len)  # every refusal happens here, before weights
    require_tokenizer(model, "export", "the checkpoint ships it and the stock-load check needs token ids")
    _check_out(Path(out), overwrite, _source_folder(model))
    lm = load_model(model)
    apply_spec(lm, plan.spec)
    return export_loaded(lm, plan, out, verify_tokens, overwrite)


def export_loaded(lm: Any, plan: ExportPlan, out: str | Path, verify_tokens: int = VERIFY_TOKENS,
                  overwrite: bool = False) -> dict[str, Any]:
    """Write a model already in memory (a `LoadedModel`, float32 on CPU, `plan.spec` applied; e.g. just
    fine-tuned by ctxext train) as `export` does, with the same stock-load verification."""
    import torch
    from transformers import AutoModelForCausalLM

    from . import __version__
    from .runinfo import versions

    _check_verify_tokens(verify_tokens)
    if lm.tokenizer is None:
        raise CtxextError(f"cannot export {plan.model}: it has no tokenizer, which the checkpoint ships and the "
                          "stock-load check needs")
    out = _check_out(Path(out), overwrite)
    _drop_stale_staging(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=STAGING, dir=out.parent))
    aside = tmp.with_name(tmp.name + "-old")
    try:
        lm.model.save_pretrained(tmp, safe_serialization=True)
        lm.tokenizer.save_pretrained(tmp)
        _tokenizer_for_transformers4(tmp)
        cfg = export_config(json.loads((tmp / "config.json").read_text()), plan)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")

        ids = _sample_ids(lm.tokenizer, min(verify_tokens, plan.max_position_embeddings))
        stock = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, local_files_only=True).eval()
        # twice: from position 0, and ending at the last position the config admits, where length-dependent
        # ropes (longrope's long factors) switch and any frequency difference is largest
        far = plan.max_position_embeddings - len(ids)
        starts = [0, far] if far > 0 else [0]
        diff = max(max_logit_diff(lm.model, stock, ids, start) for start in starts) if ids else float("nan")
        verification = {"tokens": len(ids), "positions_from": starts, "max_abs_logit_diff": diff,
                        "passed": bool(diff < 1e-4)}
        if len(ids) > plan.original_len and plan.rope_parameters.get("rope_type") == "longrope":
            # a sequence within the trained length takes the short factors, which the checks above never reach
            short = max_logit_diff(lm.model, stock, ids[:plan.original_len], 0)
            verification.update(short_tokens=plan.original_len, max_abs_logit_diff=max(diff, short),
                                passed=bool(max(diff, short) < 1e-4))
            diff = max(diff, short)
        if plan.rope_parameters.get("rope_type") in STOCK_PER_FORWARD and ids:
            verification["past_window"] = _past_window(lm.model, stock, ids, plan, lm.tokenizer)
        results = {
            "meta": {"ctxext": __version__, **versions(), "model": plan.model, "spec": plan.spec.text,
                     "resolved": plan.spec.to_dict()},
            "rope_parameters": plan.rope_parameters, "max_position_embeddings": plan.max_position_embeddings,
            "original_max_position_embeddings": plan.original_len,
            "model_original_len": int(lm.info.trained_len),
            "verification": verification,
        }
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(plan, results))
        if out.exists() and any(out.iterdir()) and not verification["passed"]:
            raise CtxextError(f"the new checkpoint FAILED its stock-load check (max |logit diff| {diff:.3g}); the "
                              f"earlier export in {out} is kept")
        _public(tmp)
        # the earlier export steps aside, the new one takes its name, then the old is deleted: a kill or Ctrl-C at
        # any point leaves one whole export at --out (deleting first lost both, or left a half-deleted folder)
        if out.exists():
            os.replace(out, aside)
        os.replace(tmp, out)
    except BaseException:
        if aside.exists() and not out.exists():
            os.replace(aside, out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return results


def _past_window_card(past: dict[str, Any] | None) -> str:
    if past is None:
        return ""
    return (f"\nPast the trained length it does not compute what ctxext measured: {past['why']}. The same "
            f"{past['tokens']} tokens placed from position {past['positions_from']} differ by max |diff| = "
            f"{past['max_abs_logit_diff']:.3g}, so ctxext's figures for this spec past the window are not this "
            "checkpoint's; evaluate the checkpoint itself with `ctxext eval --model PATH --scaling default`.\n")


def _flat(meta: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """A spec's provenance as key: value lines; nested ones (ctxext search's meta.search) as search.target etc."""
    out: list[tuple[str, Any]] = []
    for k, v in meta.items():
        if isinstance(v, dict):
            out += _flat(v, f"{prefix}{k}.")
        elif isinstance(v, list):
            if all(not isinstance(x, (dict, list)) for x in v) and len(v) <= 8:
                out.append((f"{prefix}{k}", ", ".join(map(str, v))))
        else:
            out.append((f"{prefix}{k}", v))
    return out


def _vllm_card(plan: ExportPlan) -> str:
    """What vLLM serves differently: it derives the attention factor of longrope and yarn itself (it does not read
    `attention_factor`), and its `dynamic` is one static NTK base at every length."""
    import math

    rp = plan.rope_parameters
    kind, s, L = rp.get("rope_type"), float(rp.get("factor") or 1.0), plan.original_len
    if kind == "default" and plan.spec.method != "default" and plan.max_position_embeddings <= L:
        return (f"\nvLLM serves at most max_position_embeddings ({plan.max_position_embeddings}) tokens of a checkpoint "
                "with a default rope: export with `--max-len N` to write the length this base is meant for.\n")
    if kind == "dynamic":
        return ("\nvLLM's `dynamic` rope is one static NTK base for the longest length it serves, at every position "
                "(inside the trained window too): served by vLLM this checkpoint is neither ctxext's dynamic-ntk nor "
                "transformers'.\n")
    if plan.model_type in SCALE_AT_INIT:
        return _latent_attention_card(plan)
    m = rp.get("attention_factor")
    default = {"longrope": math.sqrt(1 + math.log(s) / math.log(L)) if s > 1 else 1.0,
               "yarn": 0.1 * math.log(s) + 1 if s > 1 else 1.0}.get(kind)
    if kind == "yarn" and ("mscale" in rp or "mscale_all_dim" in rp):
        return (f"\nvLLM derives the yarn attention factor itself ({default:.4g} here) and does not read `mscale` / "
                "`mscale_all_dim`: served by vLLM the logits are scaled otherwise than verified above.\n")
    if default is None or m is None or abs(float(m) - default) < 1e-6:
        return ""
    return (f"\nvLLM derives the {kind} attention factor itself ({default:.4g} here) and does not read "
            f"`attention_factor` ({float(m):.4g}): served by vLLM the logits are scaled otherwise than verified "
            "above.\n")


def _latent_attention_card(plan: ExportPlan) -> str:
    """DeepSeek-style models (SCALE_AT_INIT) elsewhere: vLLM's implementations build DeepSeek's own YaRN (which reads
    mscale and mscale_all_dim) from any rope_scaling, and transformers 4.x's DeepSeek-V2 leaves mscale_all_dim out
    of its softmax scale (5.x, 4.x's DeepSeek-V3 and vLLM put it in). Read from their code, not run here."""
    rp, notes = plan.rope_parameters, []
    kind = rp.get("rope_type", "default")
    if kind not in ("default", "yarn"):
        notes.append(f"vLLM's {plan.model_type} reads any rope_scaling as DeepSeek's YaRN: served by vLLM this "
                     f"checkpoint's `{kind}` rope is YaRN with factor {rp.get('factor')}, not the model verified "
                     "above.")
    if plan.model_type == "deepseek_v2" and kind != "default" and rp.get("mscale_all_dim"):
        notes.append("transformers 4.x's DeepSeek-V2 leaves `mscale_all_dim` out of its softmax scale (5.x and vLLM "
                     "put it in): loaded with 4.x the logits differ from those verified above.")
    return "".join(f"\n{n}\n" for n in notes)


def model_card(plan: ExportPlan, results: dict[str, Any]) -> str:
    v = results["verification"]
    rp = json.dumps(plan.rope_parameters, indent=2) if plan.rope_parameters else "(unchanged)"
    measured = "".join(f"- {k}: {val}\n" for k, val in _flat(plan.spec.meta or {}))
    own = results.get("model_original_len", plan.original_len)
    override = (f" (set by the spec; the model's own config says {own}: check that the spec was made for this "
                "model)") if own != plan.original_len else ""
    return f"""# {Path(plan.model).name} extended with `{plan.spec.method}`

Exported by ctxext {results['meta']['ctxext']} from `{plan.model}` with the scaling spec `{plan.spec.text}`.

- trained context (original_max_position_embeddings): {plan.original_len}{override}
- max_position_embeddings written: {plan.max_position_embeddings}
- rope (transformers >= 5 `rope_parameters`; the same values are written as `rope_theta` + `rope_scaling`
  for transformers 4.x; yarn needs >= 4.56: before 4.51 the ramp comes from max_position_embeddings, 4.51-4.55
  take the factor as max_position_embeddings / original length and ignore `truncate`):

```json
{rp}
```

## Verified
Loaded back with stock `AutoModelForCausalLM.from_pretrained` (no ctxext code), the checkpoint gives the same
logits as ctxext's in-memory model: max |diff| = {v['max_abs_logit_diff']:.3g} over {v['tokens']} tokens placed from
position{'s' if len(v['positions_from']) > 1 else ''} {' and '.join(map(str, v['positions_from']))}
({'passed' if v['passed'] else 'FAILED'}, threshold 1e-4).
{_past_window_card(v.get('past_window'))}{_vllm_card(plan)}
## Provenance
{measured or '- no search or training metadata was attached to this spec' + chr(10)}
## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("PATH")
tokenizer = AutoTokenizer.from_pretrained("PATH")
```
"""
