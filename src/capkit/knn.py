"""A nearest-neighbour retrieval captioner: the honest floor every trained decoder must beat.

No training: for a query image it takes the training image whose pooled encoder features are
closest by cosine similarity and returns one of that image's human captions. Which one is chosen
by consensus (Devlin et al., 2015, "Exploring Nearest Neighbor Approaches for Image
Captioning"): the caption most similar to the captions of the query's k nearest training images,
so an idiosyncratic caption of the nearest image loses to one that describes what the
neighbourhood agrees on. Similarity is a TF-IDF weighted n-gram (1..4) cosine, as in CIDEr.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from adapt.errors import UserError
from capkit.vocab import clean_caption

if TYPE_CHECKING:
    from capkit.captioning import Decoding


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


class _NgramSpace:
    """TF-IDF vectors of 1..4-grams, document frequency counted over training images."""

    def __init__(self, captions_per_image: Sequence[Sequence[str]], max_n: int = 4):
        self.max_n = max_n
        df: Counter = Counter()
        for captions in captions_per_image:
            df.update({g for c in captions for n in range(1, max_n + 1) for g in _ngrams(c.split(), n)})
        self.log_images = math.log(max(len(captions_per_image), 1))
        self.df = df

    def vector(self, caption: str) -> list[dict[tuple[str, ...], float]]:
        words = caption.split()
        vectors = []
        for n in range(1, self.max_n + 1):
            vectors.append(
                {
                    g: tf * (self.log_images - math.log(max(self.df[g], 1)))
                    for g, tf in _ngrams(words, n).items()
                }
            )
        return vectors

    @staticmethod
    def similarity(a: list[dict], b: list[dict]) -> float:
        total = 0.0
        for va, vb in zip(a, b, strict=True):
            dot = sum(w * vb.get(g, 0.0) for g, w in va.items())
            norm = math.sqrt(sum(w * w for w in va.values())) * math.sqrt(sum(w * w for w in vb.values()))
            total += dot / norm if norm else 0.0
        return total / len(a)


@dataclass
class KnnCaptioner:
    """Retrieval captioner over training images' pooled features; `caption(pooled)` → captions."""

    encoder_name: str
    features: torch.Tensor  # (N, D), L2-normalised
    captions: list[list[str]]  # cleaned captions of each training image
    k: int = 10
    name: str = "knn"
    uses_decoding: ClassVar[bool] = False  # retrieval: every decoding gives the same captions

    def __post_init__(self) -> None:
        if len(self.features) != len(self.captions) or not len(self.captions):
            raise UserError("knn: needs at least one training image with captions")
        self._space = _NgramSpace(self.captions)

    @classmethod
    def fit(
        cls,
        dataset_path: str | os.PathLike[str],
        encoder_name: str = "efficientnet_lite0",
        split: str = "train",
        k: int = 10,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool = True,
    ) -> KnnCaptioner:
        """Index the `split` images of a dataset (their features are cached like training's)."""
        from capkit.data import load_dataset
        from capkit.encoders import load_encoder
        from capkit.features import extract_features

        records = load_dataset(dataset_path).split(split)
        if not records:
            raise UserError(f"{dataset_path}: no {split} images to build the knn captioner from")
        encoder = load_encoder(encoder_name)
        feats = extract_features(
            encoder,
            [r.image for r in records],
            cache_dir=cache_dir,
            grid_dtype=torch.float16,
            progress=progress,
        )
        keep = [i for i in range(len(records)) if i not in set(feats["failed"])]
        pooled = feats["pooled"][keep]
        captions = [[clean_caption(c) for c in records[i].captions] for i in keep]
        return cls(encoder_name, torch.nn.functional.normalize(pooled.float(), dim=-1), captions, k=k)

    def neighbours(self, pooled: torch.Tensor) -> torch.Tensor:
        """Indices (B, k) of the k training images closest by cosine similarity, nearest first."""
        query = torch.nn.functional.normalize(pooled.float(), dim=-1)
        return (query @ self.features.T).topk(min(self.k, len(self.captions)), dim=-1).indices

    def caption(self, pooled: torch.Tensor) -> list[str]:
        """One caption per image: the nearest image's caption that best agrees with the neighbourhood."""
        return [self._consensus(row) for row in self.neighbours(pooled).tolist()]

    def caption_features(self, pooled: torch.Tensor, grid: torch.Tensor, decoding: Decoding) -> list[str]:
        """`caption(pooled)`, as `capkit.captioning.CaptionModel`: the grid and decoding play no part."""
        return self.caption(pooled)

    def _consensus(self, neighbours: list[int]) -> str:
        nearest = neighbours[0]
        # (image, caption index) pairs of the whole neighbourhood; a candidate does not vote for itself.
        pool = [(i, j) for i in neighbours for j in range(len(self.captions[i]))]
        vectors = {key: self._space.vector(self.captions[key[0]][key[1]]) for key in pool}

        def score(j: int) -> float:
            others = [key for key in pool if key != (nearest, j)]
            total = sum(self._space.similarity(vectors[(nearest, j)], vectors[key]) for key in others)
            return total / max(len(others), 1)

        best = max(range(len(self.captions[nearest])), key=score)
        return self.captions[nearest][best]
