"""Self-critical sequence training (Rennie et al. 2017): the decoder is tuned by policy gradient
on the CIDEr-D of its own captions, after (or without) the cross-entropy epochs.

Each step takes `--scst-batch-size` training images, draws `--scst-samples` captions per image
(`capkit.decoding.sample`: multinomial, through the decoders' common interface) and scores each
against that image's references with CIDEr-D (`capkit.cider`, document frequencies from the
training captions, counted once). The baseline (`BASELINES`, `--scst-baseline`) is the reward of
the image's greedy caption, or the mean reward of its other samples; the loss is
-(reward - baseline) * the summed log-probability of a caption's tokens, its end token included,
averaged over the captions. Dropout is off while sampling: the policy trained is the one decoded.

After every epoch the greedy captions of the validation images are scored (document frequencies
from their own references, as `caption-eval` does); the best epoch by validation CIDEr-D is kept,
the cross-entropy start counting as epoch 0, and `--patience` epochs without a better one stop
the phase. Every epoch ends with a checkpoint (`capkit.checkpoints`), so `--resume` continues a
stopped run; images are ordered and captions drawn from seeds of (seed, epoch), so a resumed run
ends where an uninterrupted one ends. Scores in metrics.json and reward.png are ×100.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from adapt import console
from adapt.errors import UserError
from capkit import runs
from capkit.checkpoints import TrainState, save_checkpoint
from capkit.cider import CiderD, References
from capkit.data import ImageRecord
from capkit.decoding import decode, sample
from capkit.examples import evaluate_loss
from capkit.vocab import SPECIALS, Vocab, clean_caption

if TYPE_CHECKING:
    from capkit.train_config import TrainConfig
    from capkit.training import _Run

EVAL_BATCH = 256  # validation images decoded at once

Baseline = Callable[[np.ndarray, np.ndarray], np.ndarray]


def greedy_baseline(rewards: np.ndarray, greedy: np.ndarray) -> np.ndarray:
    """Each image's greedy caption's reward, for all its samples (Rennie et al.'s baseline)."""
    return np.broadcast_to(greedy[:, None], rewards.shape)


def mean_of_others(rewards: np.ndarray, greedy: np.ndarray) -> np.ndarray:
    """For each sample, the mean reward of the image's other samples (needs 2 or more)."""
    k = rewards.shape[1]
    return (rewards.sum(1, keepdims=True) - rewards) / (k - 1)


# keyed by the names `--scst-baseline` accepts; each maps rewards (images, samples) and the greedy
# captions' rewards (images,) to a baseline per sample
BASELINES: dict[str, Baseline] = {"greedy": greedy_baseline, "mean": mean_of_others}


@dataclass
class ScstState:
    """Where the self-critical phase stands after its last finished epoch (validation CIDEr-D ×100)."""

    epoch: int = 0
    best_cider: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    initial_cider: float | None = None

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any], patience: int) -> ScstState:
        """The state a checkpoint holds, `finished` judged by this run's `patience` (a larger
        --scst-epochs extends a finished phase, as --epochs does for cross-entropy)."""
        state = cls(**{f.name: saved[f.name] for f in fields(cls)})
        state.history = [dict(h) for h in state.history]
        state.finished = state.bad_epochs >= patience
        return state

    def record(self, row: dict[str, Any], cider: float, patience: int, max_epochs: int) -> bool:
        """Add an epoch's history `row`; returns whether its validation CIDEr-D is the best so far."""
        self.history.append(row)
        self.epoch = row["epoch"]
        improved = cider > self.best_cider + 1e-6
        if improved:
            self.best_cider, self.best_epoch, self.bad_epochs = cider, self.epoch, 0
        else:
            self.bad_epochs += 1
        self.finished = self.bad_epochs >= patience or self.epoch >= max_epochs
        return improved


class ImageSet:
    """The images of a split with features and their references as CIDEr-D vectors; a scorer
    whose document frequencies come from these references."""

    def __init__(self, records: Sequence[ImageRecord], row_of: dict[Path, int], vocab: Vocab, feats: Any):
        kept = [r for r in records if r.image in row_of]
        self.rows = torch.tensor([row_of[r.image] for r in kept], dtype=torch.long)
        self.pooled, self.grid = feats.pooled, feats.grid
        references = [[clean_caption(c) for c in r.captions] for r in kept]  # the vocabulary's words
        self.scorer = CiderD(references)
        self.refs: References = self.scorer.references(references)
        # vocabulary id -> scorer word id; the special ids (end, pad) become 0, the scorer's padding
        self.lookup = np.array(
            [0] * len(SPECIALS) + [self.scorer.encode(w)[0] for w in vocab.words[len(SPECIALS) :]],
            dtype=np.int64,
        )

    def __len__(self) -> int:
        return len(self.rows)

    def features(self, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled and grid (float32) features of images `index` of this set."""
        rows = self.rows[index]
        return self.pooled[rows].to(device), self.grid[rows].to(device, torch.float32)

    def score(self, tokens: torch.Tensor | list[list[int]], index: np.ndarray) -> np.ndarray:
        """CIDEr-D (the toolkit's scale, ×10) of captions given as vocabulary ids, a padded tensor
        (end and pad tokens end a caption) or lists, each against image `index[i]`'s references."""
        if isinstance(tokens, torch.Tensor):
            ids = tokens.detach().cpu().numpy()
        else:
            ids = np.zeros((len(tokens), max((len(t) for t in tokens), default=0)), dtype=np.int64)
            for row, caption in enumerate(tokens):
                ids[row, : len(caption)] = caption
        return self.scorer.score(self.lookup[ids], index, self.refs)


class Objective:
    """The self-critical loss of a batch of images: called inside the training module's forward
    (`capkit.training._TrainingLoss`), so multi-process runs all-reduce its gradients."""

    def __init__(self, images: ImageSet, vocab: Vocab, samples: int, baseline: str, max_len: int):
        self.images, self.vocab, self.samples, self.max_len = images, vocab, samples, max_len
        self.baseline = BASELINES[baseline]

    def __call__(
        self, decoder: Any, pooled: torch.Tensor, grid: torch.Tensor, index: torch.Tensor
    ) -> dict[str, Any]:
        was_training = decoder.training
        decoder.eval()  # dropout off: the captions drawn are the decoded policy's
        try:
            drawn = sample(decoder, pooled, grid, self.vocab, self.samples, self.max_len)
        finally:
            decoder.train(was_training)
        greedy_ids = decode(decoder, pooled, grid, self.vocab, strategy="greedy", max_len=self.max_len)
        index_np = index.cpu().numpy()
        rewards = self.images.score(drawn.tokens, np.repeat(index_np, self.samples)).reshape(-1, self.samples)
        greedy = self.images.score(greedy_ids, index_np)
        advantage = torch.as_tensor(
            (rewards - self.baseline(rewards, greedy)).reshape(-1), dtype=torch.float32, device=pooled.device
        )
        loss = -(advantage * drawn.log_probs.sum(1)).mean()
        return {"loss": loss, "sampled": float(rewards.mean()), "greedy": float(greedy.mean())}


@torch.no_grad()
def validation_cider(
    decoder: Any, images: ImageSet, vocab: Vocab, max_len: int, device: torch.device
) -> float:
    """Mean CIDEr-D ×100 of the greedy captions of every image of `images`."""
    scores = []
    for start in range(0, len(images), EVAL_BATCH):
        index = torch.arange(start, min(start + EVAL_BATCH, len(images)))
        pooled, grid = images.features(index, device)
        ids = decode(decoder, pooled, grid, vocab, strategy="greedy", max_len=max_len)
        scores.append(images.score(ids, index.numpy()))
    return float(np.concatenate(scores).mean()) * 100


@dataclass
class _Phase:
    """What the self-critical epochs of a run share."""

    state: ScstState
    train: ImageSet
    val: ImageSet
    objective: Objective


def run_phase(run: _Run) -> None:
    """The self-critical epochs of a run (none unless `--scst-epochs`), from the best cross-entropy
    weights or from where a resumed run's checkpoint left them; leaves the state in `run.scst_state`."""
    if not run.cfg.scst_epochs:
        return
    phase = _set_up(run)
    while not phase.state.finished and phase.state.epoch < run.cfg.scst_epochs:
        _epoch(run, phase)
    run.scst_state = phase.state


def _set_up(run: _Run) -> _Phase:
    """The image sets, the optimizer (`--scst-lr`) and the state: a resumed run's, or a new one
    whose epoch 0 is the best cross-entropy weights' validation CIDEr-D."""
    cfg, data, device = run.cfg, run.data, run.accelerator.device
    train = ImageSet(data.train_records, data.row_of, data.vocab, data.train_set)
    val = ImageSet(data.val_records, data.row_of, data.vocab, data.val_set)
    optimizer = torch.optim.AdamW(run.decoder.parameters(), lr=cfg.scst_lr, weight_decay=cfg.weight_decay)
    if run.resumed_scst is not None:
        optimizer.load_state_dict(run.resumed_scst["optimizer"])
        for group in optimizer.param_groups:  # a changed --scst-lr applies (the note says so)
            group["lr"] = cfg.scst_lr
        state = ScstState.from_checkpoint(run.resumed_scst["state"], cfg.patience)
        run.log(f"resuming self-critical training after epoch {state.epoch}")
    else:
        run.decoder.load_state_dict(run.best_weights)
        cider = round(validation_cider(run.decoder, val, data.vocab, cfg.max_length, device), 4)
        state = ScstState(best_cider=cider, initial_cider=cider)
        run.log(f"self-critical training from validation CIDEr-D {cider:.2f} (greedy, ×100)")
    run.optimizer = run.accelerator.prepare(optimizer)
    objective = Objective(train, data.vocab, cfg.scst_samples, cfg.scst_baseline, cfg.max_length)
    return _Phase(state, train, val, objective)


def _epoch(run: _Run, phase: _Phase) -> None:
    """The next self-critical epoch: its steps, validation CIDEr-D and loss, early stopping's
    count, the best weights and the checkpoint."""
    cfg, state, device = run.cfg, phase.state, run.accelerator.device
    epoch = state.epoch + 1
    started = time.perf_counter()
    loss, sampled, greedy, steps = _run_steps(run, phase, epoch)
    if not math.isfinite(loss):
        raise UserError(
            f"self-critical training diverged at epoch {epoch}; lower --scst-lr (now {cfg.scst_lr})"
        )
    cider = validation_cider(run.decoder, phase.val, run.data.vocab, cfg.max_length, device)
    val_loss = evaluate_loss(run.decoder, run.data.val_set, EVAL_BATCH, device)
    row = {
        "epoch": epoch,
        "loss": round(loss, 5),
        "reward_sampled": round(sampled * 100, 4),
        "reward_greedy": round(greedy * 100, 4),
        "val_cider_d": round(cider, 4),
        "val_loss": round(val_loss, 5),
        "steps": steps,
        "seconds": round(time.perf_counter() - started, 2),
    }
    improved = state.record(row, row["val_cider_d"], cfg.patience, cfg.scst_epochs)
    if improved:
        run.best_weights = {k: v.detach().cpu().clone() for k, v in run.decoder.state_dict().items()}
    run.log(
        f"self-critical epoch {epoch}: reward {row['reward_sampled']:.2f} sampled · {row['reward_greedy']:.2f} greedy"
        f" · validation CIDEr-D {cider:.2f}" + (" (best)" if improved else "")
    )
    if run.main:
        data = run.data
        save_checkpoint(
            run.out / runs.CHECKPOINT, cfg, data.vocab, run.decoder, run.optimizer, run.best_weights,
            run.state, scst=asdict(state),
        )  # fmt: skip
    run.accelerator.wait_for_everyone()


def _run_steps(run: _Run, phase: _Phase, epoch: int) -> tuple[float, float, float, int]:
    """The optimizer steps of `epoch`; returns the mean loss, sampled reward and greedy reward
    (toolkit scale) over all processes and the number of steps. Each of `world` processes takes
    every world-th image of a global batch."""
    cfg, accelerator = run.cfg, run.accelerator
    world, rank = accelerator.num_processes, accelerator.process_index
    seed = cfg.seed * 1000 + 500 + epoch  # apart from the cross-entropy epochs' seeds
    order = torch.randperm(len(phase.train), generator=torch.Generator().manual_seed(seed)).tolist()
    torch.manual_seed(seed)  # the same captions drawn after a resume
    global_batch = cfg.scst_batch_size * world
    steps = math.ceil(len(order) / global_batch)
    run.model.train()
    totals = np.zeros(3)
    with console.progress(
        f"self-critical epoch {epoch}/{cfg.scst_epochs}", steps, enabled=run.main
    ) as advance:
        for s in range(steps):
            chunk = order[s * global_batch : (s + 1) * global_batch]
            mine = chunk[rank::world]
            index = torch.tensor(mine or chunk[:1])  # every process must step, even on a short tail
            pooled, grid = phase.train.features(index, accelerator.device)
            out = run.model(pooled, grid, index, objective=phase.objective)
            # DDP averages over processes: weighting by each one's share of the images makes that
            # the mean over the global batch (a process that only keeps in step weighs 0)
            loss = out["loss"] * (world * len(mine) / len(chunk))
            run.optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
            run.optimizer.step()
            totals += [float(out["loss"].detach()), out["sampled"], out["greedy"]]
            advance(1)
    means = accelerator.reduce(torch.tensor(totals / steps, device=accelerator.device), "mean")
    return (*(float(m) for m in means), steps)


def scst_metrics(state: ScstState, cfg: TrainConfig) -> dict[str, Any]:
    """The self-critical phase's part of metrics.json (CIDEr-D ×100)."""
    return {
        "init_from": cfg.init_from,
        "baseline": cfg.scst_baseline,
        "samples_per_image": cfg.scst_samples,
        "lr": cfg.scst_lr,
        "initial_val_cider_d": state.initial_cider,
        "best_val_cider_d": state.best_cider,
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "stopped_early": state.epoch < cfg.scst_epochs,
        "train_seconds": round(sum(h["seconds"] for h in state.history), 1),
        "history": state.history,
    }


def start_checkpoint(cfg: TrainConfig) -> dict[str, Any]:
    """`--init-from RUN`: the run's best weights, vocabulary and cross-entropy record as a
    checkpoint whose cross-entropy phase is over; `cfg.decoder_config` is taken from the run."""
    folder = Path(str(cfg.init_from))
    if cfg.output and folder.resolve() == Path(cfg.output).resolve():
        raise UserError(f"--init-from {folder}: give another --output (the run starts from it)")
    try:
        captioner = runs.load_captioner(folder)
    except UserError as err:
        raise UserError(f"--init-from {err}") from None
    for key in ("decoder", "encoder"):
        if captioner.config[key] != getattr(cfg, key):
            raise UserError(
                f"--init-from {folder} was trained with --{key} {captioner.config[key]}, not {getattr(cfg, key)}"
            )
    cfg.decoder_config = dict(captioner.config.get("decoder_config", {}))
    metrics = runs.read_metrics(folder) if (folder / runs.METRICS).is_file() else {}
    state = TrainState(
        epoch=metrics.get("epochs_run", 0),
        best_val=metrics.get("best_val_loss", math.inf),
        best_epoch=metrics.get("best_epoch", 0),
        history=metrics.get("history", []),
        finished=True,
        initial_val_loss=metrics.get("initial_val_loss"),
    )
    # float32 whatever the run stored (the shipped default is float16)
    weights = {
        k: v.float() if v.is_floating_point() else v for k, v in captioner.decoder.state_dict().items()
    }
    return {
        "config": captioner.config,
        "vocab": captioner.vocab.words,
        "model": weights,
        "best_model": weights,
        **asdict(state),
        "scst": None,  # present: the cross-entropy phase is over
        "init_from": str(folder),
    }
