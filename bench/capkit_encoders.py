"""capkit encoders: feature extraction time per image, each encoder against EfficientNet-Lite0.

    python bench/capkit_encoders.py [--images 32] [--batch-size 16] [--threads 2] [--repeat 3]

For every registered offline encoder (lite0, lite1, lite2 by default; `--encoders` picks), on the
same real Flickr8k photos: the time per image of what `caption-train` does once per image when it
fills the feature cache (read the JPEG, resize, normalise, run the frozen backbone), batched as the
cache does it, and for one image at a time as `adapt caption photo.jpg` does. The baseline is
EfficientNet-Lite0, the default encoder, measured in the same run; the ratio column is per-image
time over Lite0's. Also the grid (side x side positions x 1280 features), which decides the
attention decoder's cost and the cache's size on disk.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine, report, shared_data, timed  # noqa: E402


def _photos(n: int) -> list[Path]:
    folder = shared_data() / "flickr8k_sample"
    images = sorted((folder / "Images").glob("*.jpg")) if (folder / "Images").is_dir() else []
    if not images:
        sys.exit(f"error: no photos under {folder}/Images (set ADAPT_SHARED_DATA)")
    return images[:n]


def _measure(name: str, photos: list[Path], batch_size: int, repeat: int) -> dict:
    import torch

    from capkit.captioning import image_tensor
    from capkit.data import open_image
    from capkit.encoders import load_encoder

    t0 = time.perf_counter()
    encoder = load_encoder(name)
    load_s = time.perf_counter() - t0

    def batched() -> None:
        for start in range(0, len(photos), batch_size):
            chunk = photos[start : start + batch_size]
            # as the feature cache reads and prepares images (capkit.features)
            encoder(torch.stack([encoder.transform(open_image(p)) for p in chunk]))

    def single() -> None:
        for p in photos[:8]:  # as `adapt caption` prepares one image
            encoder(image_tensor(encoder, p).unsqueeze(0))

    batch_s = timed(batched, repeat=repeat)
    single_s = timed(single, repeat=repeat)
    size = encoder.preprocessing.size
    return {
        "config": name,
        "input_px": size,
        "grid": f"{encoder.grid_size}x{encoder.grid_size}",
        "ms_per_image_batched": round(1000 * batch_s / len(photos), 1),
        "ms_per_image_single": round(1000 * single_s / 8, 1),
        "load_s": round(load_s, 2),
        "cache_kib_per_image": round((encoder.grid_size**2 + 1) * encoder.feature_dim * 2 / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoders", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2")
    ap.add_argument("--images", type=int, default=32, help="photos timed (default 32)")
    ap.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs, median kept (default 3)")
    args = ap.parse_args()
    if args.images < 8 or args.batch_size < 1 or args.repeat < 1:
        sys.exit("error: --images must be >= 8, --batch-size and --repeat >= 1")
    import torch

    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.encoders.split(",") if n.strip()]
    photos = _photos(args.images)
    started = load_average()
    rows = [_measure(n, photos, args.batch_size, args.repeat) for n in names]
    base = next((r for r in rows if r["config"] == "efficientnet_lite0"), rows[0])
    for r in rows:
        r["vs_lite0_batched"] = round(r["ms_per_image_batched"] / base["ms_per_image_batched"], 2)
        r["vs_lite0_single"] = round(r["ms_per_image_single"] / base["ms_per_image_single"], 2)
    meta = machine("cpu") | {
        "command": " ".join(["python", "bench/capkit_encoders.py", *sys.argv[1:]]),
        "images": len(photos),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "what": "JPEG read + resize + normalise + frozen backbone forward, fp32; median of --repeat runs",
        "load_average_start": started,
        "load_average_end": load_average(),
    }
    report("capkit_encoders", "capkit encoders: feature extraction per image (ms)", rows, meta)


if __name__ == "__main__":
    main()
