"""Turning a decoder's next-word distribution into captions: greedy, no-repeat and beam search.

Every strategy drives a decoder only through its incremental interface
(`init_state(pooled, grid)`, `step(tokens, state)`, `reorder_state(state, index)`), so one
implementation serves the LSTM, the attention and the transformer decoder alike, batched.

Rules shared by all strategies: the pad, start and unknown tokens are never emitted, a caption
ends at the end token or after `max_len` words, whichever comes first. `no-repeat` bans any word
(or, with `no_repeat_ngram=N`, any N-gram) the caption already contains — the cure for the
"long strings of unrelated/repeated words" failure the source's transformer showed.

`STRATEGIES` is keyed by the names `--decoding` accepts; `capkit.register_decoding` adds one (and a
`capkit.decodings` entry point offers one, `capkit.plugins`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from adapt.errors import UserError

NEG_INF = float("-inf")


class SpecialIds(Protocol):
    """What decoding needs from a vocabulary (a `capkit.vocab.Vocab` has all four)."""

    pad_id: int
    start_id: int
    end_id: int
    unk_id: int


@dataclass(frozen=True)
class Strategy:
    """One decoding strategy: its search routine and its default n-gram ban (0 = none)."""

    search: Callable[..., list[list[int]]]
    default_no_repeat_ngram: int
    description: str


def _forbid(logp: torch.Tensor, ids: SpecialIds, histories: list[list[int]], ngram: int) -> torch.Tensor:
    """Set to -inf the log-probabilities of tokens that may not come next for each row."""
    logp[:, [ids.pad_id, ids.start_id, ids.unk_id]] = NEG_INF
    if ngram <= 0:
        return logp
    for row, history in enumerate(histories):
        banned = _banned_next(history, ngram)
        if banned:
            logp[row, list(banned)] = NEG_INF
    return logp


def _banned_next(history: list[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already present in `history`."""
    if n == 1:
        return set(history)
    if len(history) < n:
        return set()
    prefix = history[len(history) - n + 1 :]
    return {history[i + n - 1] for i in range(len(history) - n + 1) if history[i : i + n - 1] == prefix}


def _greedy_search(
    decoder: Any,
    pooled: torch.Tensor,
    grid: torch.Tensor | None,
    ids: SpecialIds,
    max_len: int,
    no_repeat_ngram: int,
    **_: Any,
) -> list[list[int]]:
    """Take the most likely allowed word at every step."""
    batch = pooled.shape[0]
    state = decoder.init_state(pooled, grid)
    tokens = torch.full((batch,), ids.start_id, dtype=torch.long, device=pooled.device)
    captions: list[list[int]] = [[] for _ in range(batch)]
    done = [False] * batch
    for _step in range(max_len):
        logits, state = decoder.step(tokens, state)
        logp = _forbid(logits.float().log_softmax(-1), ids, captions, no_repeat_ngram)
        tokens = logp.argmax(-1)
        for row, token in enumerate(tokens.tolist()):
            if done[row]:
                continue
            if token == ids.end_id:
                done[row] = True
            else:
                captions[row].append(token)
        if all(done):
            break
    return captions


def _beam_search(
    decoder: Any,
    pooled: torch.Tensor,
    grid: torch.Tensor | None,
    ids: SpecialIds,
    max_len: int,
    no_repeat_ngram: int,
    beam_size: int = 3,
    length_penalty: float = 1.0,
    **_: Any,
) -> list[list[int]]:
    """Keep the `beam_size` most likely partial captions per image; return the best finished one.

    The classic captioning beam: at each step the k best extensions are kept; one that is the
    end token is finished and takes its beam with it, so the beam shrinks until none is left
    (k=1 is exactly greedy). At `max_len` the unfinished beams are finished as they stand.
    Finished captions are ranked by total log-probability / length**length_penalty (length
    counts the end token), so a caption is not preferred merely for being short.
    """
    batch, device = pooled.shape[0], pooled.device
    beams = _Beams(batch, beam_size, ids.end_id, length_penalty, device)
    state = decoder.init_state(pooled, grid)
    state = decoder.reorder_state(state, torch.arange(batch, device=device).repeat_interleave(beam_size))
    tokens = torch.full((batch * beam_size,), ids.start_id, dtype=torch.long, device=device)
    for step in range(max_len):
        logits, state = decoder.step(tokens, state)
        logp = _forbid(logits.float().log_softmax(-1), ids, beams.histories, no_repeat_ngram)
        rows, tokens = beams.extend(logp, step)
        if not any(beams.live):
            break
        state = decoder.reorder_state(state, rows)
    return beams.best()


class _Beams:
    """The k beams of every image of a batch, flattened to rows `b * k + j`: their scores (total
    log-probability; -inf for a dead slot), word histories and the captions they finished."""

    def __init__(self, batch: int, k: int, end_id: int, length_penalty: float, device: torch.device):
        self.batch, self.k, self.end_id = batch, k, end_id
        self.length_penalty, self.device = length_penalty, device
        # Only the first beam of each image is live at the start, so the k beams do not start as copies.
        self.scores = torch.full((batch, k), NEG_INF, device=device)
        self.scores[:, 0] = 0.0
        self.histories: list[list[int]] = [[] for _ in range(batch * k)]
        self.live = [k] * batch
        self.finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]

    def normalised(self, score: float, length: int) -> float:
        return score / (max(length, 1) ** self.length_penalty)

    def extend(self, logp: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Take each image's best extensions of its live beams by next-word log-probabilities
        `logp` (B*k, V); returns the rows the new beams come from and their new tokens."""
        vocab_size = logp.shape[-1]
        candidates = (self.scores.reshape(-1, 1) + logp).reshape(self.batch, self.k * vocab_size)
        top_scores, top_index = candidates.topk(min(self.k, candidates.shape[-1]), dim=-1)
        kept: list[tuple[int, int, float]] = []
        for b in range(self.batch):
            kept += self._keep(b, top_scores[b].tolist(), top_index[b].tolist(), vocab_size, step)
        self.scores = torch.tensor([score for _, _, score in kept], device=self.device).reshape(
            self.batch, self.k
        )
        self.histories = [
            self.histories[row] + [token] if score > NEG_INF else [] for row, token, score in kept
        ]
        rows = torch.tensor([row for row, _, _ in kept], device=self.device)
        return rows, torch.tensor([token for _, token, _ in kept], dtype=torch.long, device=self.device)

    def _keep(
        self, b: int, scores: list[float], indices: list[int], vocab_size: int, step: int
    ) -> list[tuple[int, int, float]]:
        """Image `b`'s k (row, token, score) slots for the next step: its best candidates that do
        not end (one that ends is finished), then dead slots with a -inf score, which never
        produce candidates."""
        alive: list[tuple[int, int, float]] = []
        taken = 0
        for score, index in zip(scores, indices, strict=True):
            if taken == self.live[b] or score == NEG_INF:
                break
            taken += 1
            row, token = b * self.k + index // vocab_size, index % vocab_size
            if token == self.end_id:
                self.finished[b].append((self.normalised(score, step + 1), self.histories[row]))
            else:
                alive.append((row, token, score))
        self.live[b] = len(alive)
        return alive + [(b * self.k, self.end_id, NEG_INF)] * (self.k - len(alive))

    def best(self) -> list[list[int]]:
        """Each image's best finished caption; beams cut off by the length limit count as finished."""
        best: list[list[int]] = []
        for b in range(self.batch):
            pool = list(self.finished[b])
            for j in range(self.k):
                score, row = float(self.scores[b, j]), b * self.k + j
                if score > NEG_INF:  # cut off by the length limit: no end token in its length
                    pool.append((self.normalised(score, len(self.histories[row])), self.histories[row]))
            best.append(max(pool, key=lambda item: item[0])[1] if pool else [])
        return best


STRATEGIES: dict[str, Strategy] = {
    "greedy": Strategy(_greedy_search, 0, "the most likely word at each step"),
    "no-repeat": Strategy(
        _greedy_search, 1, "greedy, but never a word (or, with --no-repeat-ngram N, an N-gram) twice"
    ),
    "beam": Strategy(_beam_search, 0, "beam search with length normalisation (--beam-size)"),
}


def strategy_of(
    fn: Strategy | Callable[..., list[list[int]]],
    default_no_repeat_ngram: int = 0,
    description: str | None = None,
) -> Strategy:
    """A `Strategy` as given, or one around a search function (described by its docstring's first
    line); a `TypeError` for anything else."""
    if isinstance(fn, Strategy):
        return fn
    if not callable(fn):
        raise TypeError(f"{fn!r} is neither a capkit.decoding.Strategy nor a search function")
    text = description or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
    return Strategy(fn, default_no_repeat_ngram, text)


def find_strategy(name: str) -> Strategy | None:
    """The decoding registered (or offered by a `capkit.decodings` entry point) as `name`, else None."""
    from capkit import plugins

    return plugins.find(STRATEGIES, plugins.DECODING, name, strategy_of)


def strategy_names() -> list[str]:
    """Every name `--decoding` accepts: the registry's and the entry points'."""
    from capkit import plugins

    return plugins.available(STRATEGIES, plugins.DECODING)


@torch.inference_mode()
def decode(
    decoder: Any,
    pooled: torch.Tensor,
    grid: torch.Tensor | None,
    vocab: SpecialIds,
    strategy: str = "greedy",
    max_len: int = 20,
    beam_size: int = 3,
    no_repeat_ngram: int | None = None,
    length_penalty: float = 1.0,
) -> list[list[int]]:
    """Caption a batch of encoded images; returns one list of word ids per image (no special ids).

    `no_repeat_ngram=None` takes the strategy's default (1 for `no-repeat`, off otherwise);
    any N > 0 bans repeating N-grams under any strategy (e.g. beam with N=2).
    """
    chosen = find_strategy(strategy)
    if chosen is None:
        raise UserError(
            f"--decoding: unknown strategy {strategy!r}; choose one of: {', '.join(strategy_names())}"
        )
    if max_len < 1:
        raise UserError(f"--max-len must be at least 1, got {max_len}")
    if beam_size < 1:
        raise UserError(f"--beam-size must be at least 1, got {beam_size}")
    ngram = chosen.default_no_repeat_ngram if no_repeat_ngram is None else no_repeat_ngram
    if ngram < 0:
        raise UserError(f"--no-repeat-ngram must be 0 (off) or more, got {ngram}")
    was_training = decoder.training
    decoder.eval()
    try:
        return chosen.search(
            decoder,
            pooled,
            grid,
            vocab,
            max_len=max_len,
            no_repeat_ngram=ngram,
            beam_size=beam_size,
            length_penalty=length_penalty,
        )
    finally:
        decoder.train(was_training)


@torch.inference_mode()
def attention_weights(
    decoder: Any, pooled: torch.Tensor, grid: torch.Tensor, vocab: SpecialIds, caption: list[int]
) -> torch.Tensor:
    """Replay one caption through an attention decoder; returns (len(caption), HW) weights.

    Row i is the attention the decoder paid to the grid when it produced word i. Replaying
    (rather than recording during search) makes it work after any strategy, beam included.
    """
    state = decoder.init_state(pooled[:1], grid[:1])
    token = torch.tensor([vocab.start_id], device=pooled.device)
    rows = []
    for word in caption:
        _, state = decoder.step(token, state)
        if "alpha" not in state:
            raise UserError("--attention-map needs a decoder with attention (this model's decoder has none)")
        rows.append(state["alpha"][0].float().cpu())
        token = torch.tensor([word], device=pooled.device)
    return torch.stack(rows) if rows else torch.zeros(0, grid.shape[1])


@dataclass
class Samples:
    """Captions drawn from a decoder (`sample`): row `i * samples + k` is image i's k-th draw."""

    tokens: torch.Tensor  # (N, T) word ids, the end token included, pad after it
    log_probs: torch.Tensor  # (N, T) log-probability of each drawn token, with gradients; 0 where masked
    mask: torch.Tensor  # (N, T) 1.0 for the caption's tokens up to and including its end token


def sample(
    decoder: Any,
    pooled: torch.Tensor,
    grid: torch.Tensor | None,
    vocab: SpecialIds,
    samples: int = 1,
    max_len: int = 20,
) -> Samples:
    """Draw `samples` captions per image from the decoder's next-word distribution (multinomial,
    temperature 1), keeping the graph: the summed `log_probs` of a caption differentiate to its
    score-function gradient (self-critical training, `capkit.scst`).

    Through `init_state` / `step` / `reorder_state` like every decoding, so it works with every
    decoder; the decoder's mode (dropout) is left as it is. Pad, start and unknown are never drawn;
    a caption ends at the end token or after `max_len` steps. Uses torch's global random generator.
    """
    batch, device = pooled.shape[0], pooled.device
    state = decoder.init_state(pooled, grid)
    if samples > 1:  # the image is encoded once; its state is repeated for its draws
        rows = torch.arange(batch, device=device).repeat_interleave(samples)
        state = decoder.reorder_state(state, rows)
    n = batch * samples
    tokens = torch.full((n,), vocab.start_id, dtype=torch.long, device=device)
    alive = torch.ones(n, dtype=torch.bool, device=device)
    drawn, log_probs, masks = [], [], []
    for _step in range(max_len):
        logits, state = decoder.step(tokens, state)
        banned = torch.zeros(logits.shape[-1], dtype=torch.bool, device=device)
        banned[[vocab.pad_id, vocab.start_id, vocab.unk_id]] = True
        logp = logits.float().masked_fill(banned, NEG_INF).log_softmax(-1)
        choice = torch.multinomial(logp.detach().exp(), 1).squeeze(1)
        tokens = torch.where(alive, choice, torch.full_like(choice, vocab.pad_id))
        mask = alive.float()
        drawn.append(tokens)
        picked = logp.gather(1, choice.unsqueeze(1)).squeeze(1)  # finite: banned words are never drawn
        log_probs.append(torch.where(alive, picked, torch.zeros_like(picked)))
        masks.append(mask)
        alive = alive & (tokens != vocab.end_id)
        if not bool(alive.any()):
            break
    return Samples(torch.stack(drawn, 1), torch.stack(log_probs, 1), torch.stack(masks, 1))
