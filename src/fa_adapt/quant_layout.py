"""Which memory layout the 4-bit (bitsandbytes `Linear4bit`) layers use: trainable, or CPU-packed.

bitsandbytes (0.48 and later) repacks a `Linear4bit` weight into a CPU inference layout the first
time the layer runs in eval mode on an input that needs no gradient, on a CPU with AVX512-BF16
(`Linear4bit.support_avx512bf16_for_cpu`). From then on its matmul runs `gemv_4bit`, which has no
autograd kernel: the gradient to the layer's input is dropped without an error. An evaluation
inside training (Trainer's step-0 and periodic ones) is exactly such a call, so on those CPUs a
LoRA, prompt-tuning or freeze run stopped training through every 4-bit layer after its first
evaluation (docs/fa_adapt.md, "Known issues").

A model being trained therefore keeps the plain layout (`keep_trainable_layout`); a model loaded for
inference may use the packed one (`use_inference_layout`). The packing is one-way in practice:
bitsandbytes' inverse re-quantizes the double-quantized scales from bf16, so a packed-then-unpacked
weight is not bit-identical to the one loaded. Training never lets it happen.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

_PACKED = "packing_format_for_cpu"  # set on a weight's QuantState by bitsandbytes when packed
_SWITCH = "support_avx512bf16_for_cpu"  # Linear4bit: pack on the next eval-mode call when true


def linear4bit_layers(model: Any) -> Iterator[tuple[str, Any]]:
    """(name, module) of every bitsandbytes 4-bit linear layer in `model`."""
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:  # no bitsandbytes, no 4-bit layers
        return
    for name, module in model.named_modules():
        if isinstance(module, Linear4bit):
            yield name, module


def is_packed(layer: Any) -> bool:
    """True when `layer`'s weight is in bitsandbytes' CPU inference layout (no autograd)."""
    return bool(getattr(getattr(layer.weight, "quant_state", None), _PACKED, False))


def packed_layers(model: Any) -> list[str]:
    """Names of the 4-bit layers of `model` whose weight is in the packed, gradient-dropping layout."""
    return [name for name, layer in linear4bit_layers(model) if is_packed(layer)]


def may_pack(layer: Any) -> bool:
    """True when bitsandbytes will pack `layer` on its next eval-mode call without gradients."""
    return bool(getattr(layer, _SWITCH, False))


def keep_trainable_layout(model: Any) -> int:
    """Keep every 4-bit layer of `model` in the layout that passes gradients; returns how many.

    Switches bitsandbytes' CPU packing off for each `Linear4bit` and unpacks any weight it has
    already packed. Call it on every model that is about to be trained.
    """
    count = 0
    for _, layer in linear4bit_layers(model):
        setattr(layer, _SWITCH, False)
        if is_packed(layer):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            layer.weight.data, layer.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                layer.weight.data, layer.weight.quant_state
            )
        count += 1
    return count


def cpu_can_pack() -> bool:
    """True when this bitsandbytes build reports AVX512-BF16, the condition for its packed CPU path."""
    try:
        from bitsandbytes.functional import has_avx512bf16
    except ImportError:
        return False
    return bool(has_avx512bf16())


def use_inference_layout(model: Any, packed: bool) -> None:
    """For a model used only for inference: let bitsandbytes pack its 4-bit layers (where the CPU
    supports it) when `packed`, or keep them plain."""
    allowed = packed and cpu_can_pack()
    for _, layer in linear4bit_layers(model):
        setattr(layer, _SWITCH, allowed)
