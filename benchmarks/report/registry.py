"""The table of scaling methods, from ctxext's registry (not a benchmark)."""

from __future__ import annotations

from typing import Any


KINDS = ("RoPE frequencies", "attention positions (training-free)", "ALiBi slopes")


def registry_rows(registry: dict) -> list[tuple[str, str, str, str]]:
    """(name, kind, keys, summary) of every scaling method, grouped by kind in registry order, default first."""
    from ctxext.scaling.attention import model_rope

    def kind(m: Any) -> str:
        if "rope" not in m.encodings:
            return KINDS[2]
        # self-extend and streaming keep the model's frequencies and move positions in the attention layers
        return KINDS[1] if m.rope is model_rope else KINDS[0]

    rows = [(m.name, kind(m), ", ".join(m.keys), m.summary) for m in registry.values()]
    return sorted(rows, key=lambda r: (r[0] != "default", KINDS.index(r[1])))


def registry_section() -> str:
    from ctxext.scaling import REGISTRY

    lines = ["| method | kind | keys | what it does |", "|---|---|---|---|"]
    lines += [f"| `{n}` | {k} | {f'`{keys}`' if keys else ''} | {summ} |" for n, k, keys, summ in registry_rows(REGISTRY)]
    return "\n".join(lines)
