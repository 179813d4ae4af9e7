"""CIDEr-D (Vedantam et al. 2015), vectorised with numpy: many candidate captions scored at once.

It computes exactly what the COCO-caption toolkit computes (`pycocoevalcap.cider`, which
`capkit.metrics` reports as CIDEr-D): n-grams of 1 to 4 words, tf-idf vectors with
idf = log(number of images in the corpus) - log(max(1, document frequency)), the hypothesis
weights clipped at the reference's (`min(h, r) * r`), a Gaussian length penalty with sigma 6,
the mean over n, the mean over references, times 10. A test checks it against pycocoevalcap per
caption. Two quirks of that code are kept on purpose, so the numbers are the published ones:
the "length" in the penalty counts bigrams (words - 1), and idf uses the corpus the scorer was
built on, whatever is being scored.

`CiderD(corpus)` counts document frequencies once (self-critical training: the training
captions); `references(...)` turns the references of a set of images into tf-idf vectors once;
`score(...)` then scores any number of candidates, each against the references of its image,
with array operations only (no Python loop over captions or n-grams).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ORDERS = 4
SIGMA = 6.0
# n-grams are keyed by one int64: the word ids (1..BASE-1; 0 is padding) as digits in base BASE,
# so n-grams of different lengths never share a key; BASE**4 must stay below 2**63
BASE = 50_000


@dataclass(frozen=True)
class _Grams:
    """The distinct n-grams of each of a batch of captions: owner row, key, order (0..3), count."""

    owner: np.ndarray
    key: np.ndarray
    order: np.ndarray
    count: np.ndarray


@dataclass(frozen=True)
class References:
    """The references of a set of images as tf-idf vectors (`CiderD.references`): every reference's
    n-grams sorted by (reference, n-gram), its norms per order and its length."""

    first: np.ndarray  # (images,) the row of each image's first reference
    count: np.ndarray  # (images,) how many references each image has
    keys: np.ndarray  # the distinct n-gram keys of all references, sorted
    pair: np.ndarray  # reference row * len(keys) + index in keys, sorted
    weight: np.ndarray  # the tf-idf weight of each `pair`
    norm: np.ndarray  # (references, 4) vector norm per n-gram order
    length: np.ndarray  # (references,) bigram count, the toolkit's "length"


class CiderD:
    """CIDEr-D with document frequencies counted once over `corpus`: one list of reference
    captions (words separated by spaces, already tokenised) per image."""

    def __init__(self, corpus: Sequence[Sequence[str]], sigma: float = SIGMA):
        if not corpus:
            raise ValueError("CIDEr-D needs a corpus of at least one image")
        self.sigma = sigma
        self.word_ids: dict[str, int] = {}
        grams = self._grams(self.pad([w for refs in corpus for w in refs]))
        owner_image = np.repeat(np.arange(len(corpus)), [len(refs) for refs in corpus])[grams.owner]
        # document frequency: in how many images' references an n-gram occurs
        _, keys, _ = _count_pairs(owner_image, grams.key)
        self.df_keys, self.df = np.unique(keys, return_counts=True)
        self.ref_len = float(np.log(float(len(corpus))))

    def encode(self, sentence: str) -> list[int]:
        """The scorer's ids of a sentence's words (new words get new ids)."""
        ids = [self.word_ids.setdefault(w, len(self.word_ids) + 1) for w in sentence.split()]
        if len(self.word_ids) >= BASE:
            raise ValueError(f"CIDEr-D scorer: more than {BASE - 1} distinct words")
        return ids

    def pad(self, sentences: Sequence[str]) -> np.ndarray:
        """Sentences as a (N, longest) array of word ids, 0 after each sentence's end."""
        ids = [self.encode(s) for s in sentences]
        out = np.zeros((len(ids), max((len(i) for i in ids), default=0)), dtype=np.int64)
        for row, words in enumerate(ids):
            out[row, : len(words)] = words
        return out

    def idf(self, keys: np.ndarray) -> np.ndarray:
        """log(corpus images) - log(max(1, document frequency)) of each n-gram key."""
        at = np.searchsorted(self.df_keys, keys).clip(max=max(len(self.df_keys) - 1, 0))
        found = self.df_keys[at] == keys if len(self.df_keys) else np.zeros(len(keys), bool)
        df = np.where(found, self.df[at] if len(self.df) else 0, 0)
        return self.ref_len - np.log(np.maximum(1.0, df))

    def _grams(self, tokens: np.ndarray) -> _Grams:
        """The distinct n-grams (1..4 words) of each row of `tokens` with their counts."""
        rows, width = tokens.shape
        owners, keys = [], []
        for n in range(1, ORDERS + 1):
            if width < n:
                break
            key = np.zeros((rows, width - n + 1), dtype=np.int64)
            valid = np.ones_like(key, dtype=bool)
            for i in range(n):  # a window is an n-gram when none of its words is padding
                window = tokens[:, i : width - n + 1 + i]
                key = key * BASE + window
                valid &= window > 0
            r, _ = np.nonzero(valid)
            owners.append(r)
            keys.append(key[valid])
        owner, key = (np.concatenate(a) if a else np.zeros(0, np.int64) for a in (owners, keys))
        owner, key, count = _count_pairs(owner, key)
        return _Grams(owner, key, _order(key), count)

    def _vectors(self, tokens: np.ndarray) -> tuple[_Grams, np.ndarray, np.ndarray, np.ndarray]:
        """n-grams, tf-idf weights, norms (rows, 4) and bigram lengths of each row of `tokens`."""
        grams = self._grams(tokens)
        weight = grams.count * self.idf(grams.key)
        norm = np.zeros((len(tokens), ORDERS))
        np.add.at(norm, (grams.owner, grams.order), weight**2)
        length = np.maximum((tokens > 0).sum(1) - 1, 0)
        return grams, weight, np.sqrt(norm), length

    def references(self, refs: Sequence[Sequence[str]]) -> References:
        """The tf-idf vectors of each image's references (one list of sentences per image)."""
        count = np.array([len(r) for r in refs], dtype=np.int64)
        if (count == 0).any():
            raise ValueError("every image needs at least one reference caption")
        grams, weight, norm, length = self._vectors(self.pad([s for r in refs for s in r]))
        keys, index = np.unique(grams.key, return_inverse=True)
        pair = grams.owner * len(keys) + index.reshape(-1)
        order = np.argsort(pair)
        first = np.concatenate([[0], np.cumsum(count)[:-1]])
        return References(first, count, keys, pair[order], weight[order], norm, length)

    def score(
        self, candidates: np.ndarray | Sequence[str], images: Sequence[int], refs: References
    ) -> np.ndarray:
        """CIDEr-D of each candidate against the references of its image (`images[i]`: that image's
        index in `refs`). Candidates are sentences or a (N, T) array of this scorer's word ids
        padded with 0 (`pad`). Returns N scores (the toolkit's scale: ×10, not ×100)."""
        tokens = candidates if isinstance(candidates, np.ndarray) else self.pad(list(candidates))
        image = np.asarray(images, dtype=np.int64)
        if len(image) != len(tokens):
            raise ValueError(f"{len(tokens)} candidates but {len(image)} image indices")
        grams, weight, norm, length = self._vectors(tokens)
        most = int(refs.count.max()) if len(refs.count) else 0
        overlap = np.zeros((len(tokens), most, ORDERS))
        # only n-grams some reference has can overlap: pair each with every reference of its image
        at = np.searchsorted(refs.keys, grams.key).clip(max=max(len(refs.keys) - 1, 0))
        shared = refs.keys[at] == grams.key if len(refs.keys) else np.zeros(len(grams.key), bool)
        owner, index, hyp, order = grams.owner[shared], at[shared], weight[shared], grams.order[shared]
        per = refs.count[image[owner]]
        slot = np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per)  # 0..refs-1 per n-gram
        owner, index, hyp, order = (np.repeat(a, per) for a in (owner, index, hyp, order))
        ref_row = refs.first[image[owner]] + slot
        pair = ref_row * len(refs.keys) + index
        found = np.searchsorted(refs.pair, pair).clip(max=max(len(refs.pair) - 1, 0))
        ref = np.where(refs.pair[found] == pair, refs.weight[found], 0.0) if len(refs.pair) else 0 * hyp
        np.add.at(overlap, (owner, slot, order), np.minimum(hyp, ref) * ref)
        return self._combine(overlap, norm, length, image, refs)

    def _combine(
        self, overlap: np.ndarray, norm: np.ndarray, length: np.ndarray, image: np.ndarray, refs: References
    ) -> np.ndarray:
        """Cosine per (candidate, reference, order), length penalty, means over orders and
        references, ×10: the last steps of the toolkit's `compute_cider`."""
        most = overlap.shape[1]
        slot = np.arange(most)
        real = slot[None, :] < refs.count[image][:, None]  # (N, most): which slots are references
        ref_row = np.where(real, refs.first[image][:, None] + slot[None, :], 0)
        denominator = norm[:, None, :] * refs.norm[ref_row]  # (N, most, 4)
        cosine = np.divide(overlap, denominator, out=overlap.copy(), where=denominator != 0)
        delta = (length[:, None] - refs.length[ref_row]).astype(np.float64)
        cosine *= np.exp(-(delta**2) / (2 * self.sigma**2))[:, :, None]
        per_ref = np.where(real, cosine.mean(-1), 0.0)
        return per_ref.sum(1) / refs.count[image] * 10.0


def _count_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (a, b) pairs, sorted by a then b, and how often each occurs."""
    if not len(a):
        return a, b, np.zeros(0, np.int64)
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    starts = np.flatnonzero(np.concatenate([[True], (a[1:] != a[:-1]) | (b[1:] != b[:-1])]))
    return a[starts], b[starts], np.diff(np.append(starts, len(a)))


def _order(keys: np.ndarray) -> np.ndarray:
    """The order (0 for unigrams .. 3 for 4-grams) of n-gram keys: their number of digits - 1."""
    return np.searchsorted(np.array([BASE, BASE**2, BASE**3], dtype=np.int64), keys, side="right")


def cider_d(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[float, np.ndarray]:
    """The toolkit's `Cider().compute_score`: one candidate per image, document frequencies from
    these references; returns the mean and each image's score."""
    scorer = CiderD(references)
    scores = scorer.score(list(candidates), range(len(candidates)), scorer.references(references))
    return float(scores.mean()) if len(scores) else 0.0, scores
