"""Encoder features computed once per image and cached on disk.

One small safetensors file per image, under `<cache>/features/<encoder + preprocessing>/`, named by
a hash of the image's absolute path, size and modification time: a changed image gets new
features, a different encoder or preprocessing gets its own folder. Files are written atomically, and a
file is used only if it reads back with the expected names, dtypes and shapes and the SHA-256 of
its tensors matches the one stored in its header: a truncated, garbled or half-deleted cache is
recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from adapt import console
from adapt.runio import atomic_path
from capkit.data import BadImage, open_image
from capkit.encoders import Encoder


def default_cache_dir() -> Path:
    """`$CAPKIT_CACHE`, else `~/.cache/capkit`."""
    return Path(os.environ.get("CAPKIT_CACHE") or Path.home() / ".cache" / "capkit")


def _image_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()


def _digest(pooled: torch.Tensor, grid: torch.Tensor) -> str:
    h = hashlib.sha256(pooled.contiguous().numpy().tobytes())
    h.update(grid.contiguous().numpy().tobytes())
    return h.hexdigest()


def _write_cached(file: Path, pooled: torch.Tensor, grid: torch.Tensor) -> None:
    """pooled float32 (D,), grid float16 (H*W, D), and their SHA-256 in the header; atomic."""
    from safetensors.torch import save_file

    pooled, grid = pooled.float().contiguous(), grid.half().contiguous()
    with atomic_path(file) as tmp:
        save_file({"pooled": pooled, "grid": grid}, str(tmp), metadata={"sha256": _digest(pooled, grid)})


def _read_cached(file: Path, encoder: Encoder) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached features, or None when the file is missing or fails any check."""
    from safetensors import safe_open

    if not file.is_file():
        return None
    try:
        with safe_open(str(file), framework="pt") as fh:
            expected = (fh.metadata() or {}).get("sha256")
            pooled, grid = fh.get_tensor("pooled"), fh.get_tensor("grid")
    except Exception:  # any damage (truncated, garbage, missing key): recompute
        return None
    if (
        pooled.dtype != torch.float32
        or grid.dtype != torch.float16
        or pooled.shape != (encoder.feature_dim,)
        or grid.shape != (encoder.grid_size**2, encoder.feature_dim)
        or expected != _digest(pooled, grid)  # catches flipped bytes that keep the size
    ):
        return None
    return pooled, grid


def _cache_folder(encoder: Encoder, cache_dir: str | os.PathLike[str] | None | bool) -> Path | None:
    """The encoder's folder of the feature cache (made), or None when `cache_dir` is False."""
    if cache_dir is False:
        return None
    safe_key = re.sub(r"[^A-Za-z0-9_.-]+", "_", encoder.cache_key)
    folder = Path(cache_dir or default_cache_dir()) / "features" / safe_key
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def extract_features(
    encoder: Encoder,
    image_paths: Sequence[str | os.PathLike[str]],
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    grid_dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> dict:
    """Features of every image: `pooled` (N, D) float32, `grid` (N, H*W, D) in `grid_dtype`.

    Images that cannot be decoded get zero rows and are listed in `failed` (their indices) so the
    caller can drop them; `cached` counts the images served from the cache. Pass `cache_dir=False`
    to skip the disk cache.
    """
    paths = [Path(p) for p in image_paths]
    folder = _cache_folder(encoder, cache_dir)
    pooled = torch.zeros(len(paths), encoder.feature_dim)
    grid = torch.zeros(len(paths), encoder.grid_size**2, encoder.feature_dim, dtype=grid_dtype)
    failed: list[int] = []
    todo: list[int] = []
    for i, path in enumerate(paths):
        hit = (
            _read_cached(folder / f"{_image_key(path)}.safetensors", encoder)
            if folder and path.is_file()
            else None
        )
        if hit is None:
            todo.append(i)
        else:
            pooled[i], grid[i] = hit[0].float(), hit[1].to(grid_dtype)
    description = f"encoding {len(todo)} images ({encoder.name})"
    # kept on screen once done (transient=False): how long encoding took is worth seeing
    with console.progress(
        description, len(todo), enabled=progress and bool(todo), transient=False
    ) as advance:
        for start in range(0, len(todo), batch_size):
            batch_idx, tensors = [], []
            for i in todo[start : start + batch_size]:
                try:
                    tensors.append(encoder.transform(open_image(paths[i])))
                    batch_idx.append(i)
                except (BadImage, FileNotFoundError):
                    failed.append(i)
            if tensors:
                p, g = encoder(torch.stack(tensors))
                for row, i in enumerate(batch_idx):
                    # Rounded through fp16 like the cache, so a cached and a fresh run see identical features.
                    pooled[i], grid[i] = p[row], g[row].half().to(grid_dtype)
                    if folder:
                        # fp16 on disk halves the cache; the features are post-ReLU6 activations (0..6).
                        _write_cached(folder / f"{_image_key(paths[i])}.safetensors", p[row], g[row])
            advance(len(todo[start : start + batch_size]))
    return {"pooled": pooled, "grid": grid, "failed": sorted(failed), "cached": len(paths) - len(todo)}
