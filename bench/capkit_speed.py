"""capkit speed: training on cached features, caption latency, batched decoding, the transformer's cache.

    python bench/capkit_speed.py [--device cpu|cuda] [--batch-size 32] [--decode-images 16] [--steps 3] [--threads 1]

Every figure stands beside a baseline measured in the same run, on real Flickr8k photos:
- training throughput (captions/s) of one optimiser step with cached encoder features, against
  running the frozen encoder on the same images every step (pixels already decoded and held in
  memory, so the baseline pays only the encoder's forward pass: the least it can cost);
- caption latency per image with the shipped default captioner, warm against load included
  (decoder, vocabulary and encoder read from disk), per decoding strategy;
- images/s decoded in one batch against one image at a time, per decoder (randomly initialised,
  default sizes, the default vocabulary, captions forced to the full 25 words: the worst case)
  and per strategy, plus the encoder alone;
- the transformer decoder's cached keys/values against recomputing the whole prefix each step
  (the full forward pass, as the source's Keras model did), with a check that both give the same
  words.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine, report, require_device, shared_data, timed  # noqa: E402

DECODERS = ("lstm", "attention", "transformer")
MAX_LEN = 25  # words: the default --max-length of caption-train
BEAM = 5  # the shipped default's beam size


def strategies() -> dict[str, Any]:
    from capkit.captioning import Decoding

    return {
        "greedy": Decoding("greedy"),
        "no-repeat": Decoding("no-repeat"),
        f"beam-{BEAM}": Decoding("beam", beam_size=BEAM),
    }


class Bench:
    """What every section shares: device, photos, the default vocabulary, the encoder."""

    def __init__(self, device: str, n_images: int):
        import torch

        from capkit.captioning import image_tensor, load_model

        self.device = torch.device(device)
        self.sync = torch.cuda.synchronize if self.device.type == "cuda" else None
        folder = shared_data() / "flickr8k_sample"
        if not (folder / "Images").is_dir():
            sys.exit(f"skipped: real photos not found at {folder / 'Images'} (set ADAPT_SHARED_DATA)")
        from capkit.data import load_dataset

        records = load_dataset(folder).split("train")[:n_images]
        self.paths = [r.image for r in records]
        self.captions = [r.captions[0] for r in records]
        self.default = load_model(None)
        self.vocab = self.default.vocab
        self.encoder = self.default.load_encoder().to(self.device)
        self.pixels = torch.stack([image_tensor(self.encoder, p) for p in self.paths]).to(self.device)
        with torch.no_grad():
            pooled, grid = self.encoder(self.pixels)
        # As the feature cache stores them: pooled in fp32, the grid rounded through fp16.
        self.pooled, self.grid = pooled, grid.half().float()

    def time(self, fn: Callable[[], Any], repeat: int = 3, warmup: int = 1) -> float:
        return timed(fn, repeat=repeat, warmup=warmup, sync=self.sync)

    def decoder(self, name: str, seed: int = 0):
        """A randomly initialised decoder of the default size that never ends a caption early."""
        import torch

        from capkit.decoders import build_decoder

        torch.manual_seed(seed)
        decoder = build_decoder(name, len(self.vocab), self.encoder.feature_dim, pad_id=self.vocab.pad_id)
        with torch.no_grad():
            decoder.out.bias[self.vocab.end_id] = -30.0
        return decoder.to(self.device)


def training(b: Bench, batch_size: int, steps: int) -> list[dict]:
    """Captions/s of one training step: cached features against the encoder run every step."""
    import torch

    from capkit.examples import encode_captions, pad_batch
    from capkit.train_config import DEFAULT_LR

    n = min(batch_size, len(b.paths))
    ids, _ = encode_captions(b.vocab, b.captions[:n], MAX_LEN)
    captions = pad_batch(ids, b.vocab.pad_id).to(b.device)
    pooled, grid = b.pooled[:n], b.grid[:n].half()  # the cache holds the grid in fp16
    pixels = b.pixels[:n]
    rows = []
    for name in DECODERS:
        decoder = b.decoder(name).train()
        optimizer = torch.optim.AdamW(decoder.parameters(), lr=DEFAULT_LR[name])

        def step(p: torch.Tensor, g: torch.Tensor, decoder=decoder, optimizer=optimizer) -> None:
            loss = decoder.loss(p, g, captions)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(decoder.parameters(), 5.0)
            optimizer.step()

        def with_encoder(step=step) -> None:
            p, g = b.encoder(pixels)  # frozen: no_grad inside
            step(p, g)

        cached = b.time(lambda step=step: step(pooled, grid.float()), repeat=steps)
        encoder_every_step = b.time(with_encoder, repeat=steps)
        rows.append(
            {
                "what": f"train step, {name} decoder, {n} captions",
                "baseline": n / encoder_every_step,
                "measured": n / cached,
                "× faster": encoder_every_step / cached,
                "unit": "captions/s",
                "baseline is": "encoder run every step",
            }
        )
        print(
            f"training {name}: cached {n / cached:.1f}, encoder {n / encoder_every_step:.1f} captions/s",
            file=sys.stderr,
        )
    return rows


def latency(b: Bench, repeat: int) -> list[dict]:
    """Seconds per caption of one photo with the shipped default: warm and with load included."""
    import torch

    from capkit.captioning import image_tensor, load_model, preferred_decoding

    def caption(model: Any, decoding: Any) -> str:
        with torch.inference_mode():
            pixels = image_tensor(model.encoder, b.paths[0]).unsqueeze(0).to(b.device)
            pooled, grid = model.encoder(pixels)
            return model.caption_features(pooled, grid, decoding)[0]

    def load() -> Any:
        model = load_model(None)
        model.decoder.to(b.device)
        model.load_encoder().to(b.device)
        return model

    warm_model = load()
    chosen = preferred_decoding(warm_model)
    decodings = {f"{chosen.label} (its default)": chosen, **strategies()}
    rows = []
    for label, decoding in decodings.items():
        warm = b.time(lambda d=decoding: caption(warm_model, d), repeat=repeat, warmup=1)
        cold = b.time(lambda d=decoding: caption(load(), d), repeat=repeat, warmup=0)
        rows.append(
            {
                "what": f"caption 1 photo, shipped default ({warm_model.config['decoder']}), {label}",
                "baseline": cold,
                "measured": warm,
                "× faster": cold / warm,
                "unit": "s/photo",
                "baseline is": "load included (decoder, vocabulary, encoder from disk)",
            }
        )
        print(f"latency {label}: warm {warm:.3f} s, load included {cold:.3f} s", file=sys.stderr)
    b.default_caption = caption(warm_model, chosen)
    b.default_decoder = f"{warm_model.config['decoder']} decoder, {chosen.label}"
    return rows


def batching(b: Bench) -> list[dict]:
    """Images/s of one batch against one image at a time: the encoder, then decoding per decoder × strategy."""
    from capkit.decoding import decode

    n = len(b.paths)
    rows = []
    single = b.time(lambda: [b.encoder(b.pixels[i : i + 1]) for i in range(n)], repeat=3)
    batched = b.time(lambda: b.encoder(b.pixels), repeat=3)
    rows.append(_batch_row(f"encode {n} photos (EfficientNet-Lite0)", n, single, batched))
    for name in DECODERS:
        decoder = b.decoder(name)
        for label, d in strategies().items():

            def run(lo: int, hi: int, d=d, decoder=decoder) -> None:
                decode(
                    decoder,
                    b.pooled[lo:hi],
                    b.grid[lo:hi],
                    b.vocab,
                    strategy=d.strategy,
                    max_len=MAX_LEN,
                    beam_size=d.beam_size,
                    no_repeat_ngram=d.no_repeat_ngram,
                )

            single = b.time(lambda run=run: [run(i, i + 1) for i in range(n)], repeat=1)
            batched = b.time(lambda run=run: run(0, n), repeat=1)
            rows.append(_batch_row(f"decode {n} photos, {name} decoder, {label}", n, single, batched))
            print(f"batching {name} {label}: {n / single:.1f} -> {n / batched:.1f} images/s", file=sys.stderr)
    return rows


def _batch_row(what: str, n: int, single: float, batched: float) -> dict:
    return {
        "what": what,
        "baseline": n / single,
        "measured": n / batched,
        "× faster": single / batched,
        "unit": "images/s",
        "baseline is": "one image at a time",
    }


def kv_cache(b: Bench) -> list[dict]:
    """Greedy captions from the transformer decoder: cached keys/values against the full prefix each step."""
    import torch

    from capkit.decoding import decode

    decoder = b.decoder("transformer").eval()
    vocab, n = b.vocab, len(b.paths)
    banned = [vocab.pad_id, vocab.start_id, vocab.unk_id]

    @torch.inference_mode()
    def without_cache() -> list[list[int]]:
        tokens = torch.full((n, 1), vocab.start_id, dtype=torch.long, device=b.device)
        for _ in range(MAX_LEN):
            logits = decoder(b.pooled, b.grid, tokens)[:, -1].float()  # re-runs every position
            logits[:, banned] = float("-inf")
            tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], 1)
        return tokens[:, 1:].tolist()

    def with_cache() -> list[list[int]]:
        return decode(decoder, b.pooled, b.grid, vocab, strategy="greedy", max_len=MAX_LEN)

    same = without_cache() == with_cache()
    slow = b.time(without_cache, repeat=3)
    fast = b.time(with_cache, repeat=3)
    return [
        {
            "what": f"transformer greedy, {n} photos × {MAX_LEN} words, cached keys/values (same words: {same})",
            "baseline": n / slow,
            "measured": n / fast,
            "× faster": slow / fast,
            "unit": "captions/s",
            "baseline is": "whole prefix recomputed each step",
        }
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--batch-size", type=int, default=32, help="captions per training step")
    ap.add_argument(
        "--decode-images", type=int, default=16, help="photos decoded in the batching and cache sections"
    )
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per configuration (median)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on the shared, loaded 2-core machine a second thread made a step 2.3x slower)",
    )
    args = ap.parse_args()
    require_device(args.device)
    import os

    import torch

    torch.set_num_threads(args.threads)
    started, load_before = time.perf_counter(), load_average()
    b = Bench(args.device, max(args.batch_size, args.decode_images))
    sections = {"setup": time.perf_counter() - started}

    def section(name: str, fn: Callable[[], list[dict]]) -> list[dict]:
        begin = time.perf_counter()
        out = fn()
        sections[name] = time.perf_counter() - begin
        print(f"{name}: {sections[name]:.0f} s", file=sys.stderr)
        return out

    rows = section("training", lambda: training(b, args.batch_size, args.steps))
    b.paths, b.pixels = b.paths[: args.decode_images], b.pixels[: args.decode_images]
    b.pooled, b.grid = b.pooled[: args.decode_images], b.grid[: args.decode_images]
    rows += section("batching", lambda: batching(b))
    rows += section("kv cache", lambda: kv_cache(b))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `adapt caption` does for a few images
    rows += section("latency", lambda: latency(b, repeat=3))
    torch.set_num_threads(threads)
    meta = machine(args.device) | {
        "command": " ".join(["python", *sys.argv]),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "seconds": round(time.perf_counter() - started, 1),
        "section_seconds": {k: round(v, 1) for k, v in sections.items()},
        "default_captioner": b.default_decoder,
        "default_caption": {"image": str(b.paths[0]), "caption": b.default_caption},
        "notes": "latency rows always run with 1 torch thread, as `adapt caption` does for up to 8 images",
    }
    os.environ.setdefault("COLUMNS", "170")  # a piped Rich table would wrap every row at 80 columns
    report("capkit_speed", "capkit speed (each row: measured against its baseline, same run)", rows, meta)
    print(
        f"load average {meta['load_average_before'][0]:.1f} -> {meta['load_average_after'][0]:.1f}; {meta['seconds']} s"
    )


if __name__ == "__main__":
    main()
