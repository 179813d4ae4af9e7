"""capkit's multi-process training is data-parallel: two torchrun ranks end with identical decoder
weights, equal to one process trained on the same global batches (token-weighted loss, no dropout)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DUMP = """
import os, sys
from safetensors.torch import save_file
import capkit.training as training

built = []
build = training.build_decoder
training.build_decoder = lambda *a, **k: built.append(build(*a, **k)) or built[-1]
training.train(training.TrainConfig(**eval(sys.argv[1])))
state = {k: v.detach().contiguous() for k, v in built[0].state_dict().items()}
save_file(state, f"{sys.argv[2]}/rank{os.environ.get('RANK', '0')}.safetensors")
"""


def _run(tmp_path: Path, tiny_data: Path, name: str, nproc: int, batch_size: int) -> Path:
    dump = tmp_path / f"{name}-weights"
    dump.mkdir()
    script = tmp_path / "dump_train.py"
    script.write_text(DUMP)
    # one epoch: the decoder then holds the best (only) epoch's weights on every rank; 20 training
    # captions of two lengths make 3 global batches of 8, 8 and 4 with unequal token counts per rank
    cfg = dict(
        data=str(tiny_data),
        decoder="lstm",
        epochs=1,
        batch_size=batch_size,
        min_count=1,
        output=str(tmp_path / name),
        cache_dir=str(tmp_path / "cache"),
        decoder_config={"embed_dim": 16, "hidden_dim": 16, "dropout": 0.0},
    )
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    launcher += ["--master_port", "29521"] if nproc > 1 else ["--standalone"]
    proc = subprocess.run(
        [*launcher, str(script), repr(cfg), str(dump)],
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dump


def test_two_ranks_train_one_decoder_equal_to_one_process(tiny_data, tmp_path):
    from safetensors.torch import load_file

    two = _run(tmp_path, tiny_data, "two", nproc=2, batch_size=4)
    one = _run(tmp_path, tiny_data, "one", nproc=1, batch_size=8)
    rank0, rank1 = load_file(str(two / "rank0.safetensors")), load_file(str(two / "rank1.safetensors"))
    single = load_file(str(one / "rank0.safetensors"))
    assert rank0.keys() == rank1.keys() == single.keys() and len(rank0) > 4
    for name, value in rank0.items():
        assert (value == rank1[name]).all(), f"{name} differs between the ranks"
        # the same global batches in another summation order: float32 rounding only
        assert (value - single[name]).abs().max() < 1e-5, name
