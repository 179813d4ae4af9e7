"""Train the ChatML embedding rows without rebuilding the 262k-row embedding at every step.

PEFT's trainable-token layer (`trainable_token_indices` for LoRA, `TrainableTokensConfig` for
freeze) computes its forward from a full copy of the weight with the trained rows written in:
at the input embedding and again at the tied output projection. On Gemma 3 270M that is two
671 MB copies per step and a full 262,144 × 640 weight gradient at the output, for two rows:
about a quarter of a LoRA or freeze step on a CPU (bench/fa_adapt_token_rows.py).

`use_row_only_forward(model)` swaps those layers' forward for one with the same result and the same
gradients that touches only the trained rows: the frozen layer runs as it is, then the rows
(input) or the logit columns (output) of the trained tokens are replaced by the trained values.
Only the forward changes: the parameters, `save_pretrained` and loading stay PEFT's own, and a
merged layer (inference) takes PEFT's path.
"""

from __future__ import annotations

import types
from typing import Any


def _row_only_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    import torch
    import torch.nn.functional as F

    adapters = self.active_adapters
    if self.disable_adapters or not adapters or self.merged:
        return self.forward_adapters(x, adapters, *args, **kwargs)
    self._check_overlapping_tokens(adapters)
    base = self.base_layer
    result = base(x, *args, **kwargs)  # frozen weight: no copy, no weight gradient
    for name in adapters:
        rows = self.trainable_tokens_delta[name]
        ids = self.token_indices[name]
        if isinstance(base, torch.nn.Embedding):
            scale = self._get_embed_scale()  # Gemma scales embeddings inside its embedding's forward
            rows = rows.to(result.dtype) * (scale.to(result.dtype) if scale is not None else 1.0)
            for j, token in enumerate(ids):
                result = torch.where((x == token).unsqueeze(-1), rows[j], result)
        elif isinstance(base, torch.nn.Linear):  # the output projection tied to the embedding
            index = torch.tensor(ids, device=result.device)
            # in place: the projection's backward needs its weight and input, not its output
            result.index_copy_(-1, index, F.linear(x, rows.to(x.dtype)).to(result.dtype))
        else:
            return self.forward_adapters(x, adapters, *args, **kwargs)
    return result


def use_row_only_forward(model: Any) -> int:
    """Give every PEFT trainable-token layer of `model` the row-only forward; returns how many."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    count = 0
    for module in model.modules():
        if isinstance(module, TrainableTokensLayer):
            module.forward = types.MethodType(_row_only_forward, module)
            count += 1
    return count
