"""Counting a model's parameters as the source's table does: logical (unpacked) sizes."""

from __future__ import annotations

from typing import Any


def logical_numel(param: Any) -> int:
    """Number of weights a parameter stands for: a packed 4-bit Params4bit holds two per byte."""
    quant_state = getattr(param, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        n = 1
        for d in quant_state.shape:
            n *= int(d)
        return n
    return param.numel()


def count_parameters(model: Any) -> dict[str, float]:
    """Trainable and total parameters (logical, unpacked sizes) and the trainable percentage."""
    trainable = total = 0
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = logical_numel(p)
        total += n
        if p.requires_grad:
            trainable += n
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / max(total, 1)}
