"""Data-parallel training really is: two torchrun ranks end with identical trainable tensors, equal
to one process trained on the same global batches.

Before the fix, the step-0 `trainer.evaluate()` marked the bare model as prepared, so accelerate
never wrapped it in DDP: each rank trained its own copy on half of the data. The freeze method is
used because it has no dropout, so both set-ups see the same forward passes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DUMP = '''
import sys
from safetensors.torch import save_file
from transformers import TrainerCallback
from fa_adapt import finetune

class DumpTrainable(TrainerCallback):
    """Each rank writes its trainable tensors when training ends."""
    def on_train_end(self, args, state, control, model=None, **kwargs):
        tensors = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, f"{sys.argv[2]}/rank{args.process_index}.safetensors")

finetune(callbacks=[DumpTrainable()], **eval(sys.argv[1]))
'''


def _settings(tiny_model_dir, chat_jsonl, out: Path, batch_size: int) -> dict:
    # 20 training rows: one length-grouped megabatch for either batch size, so a global batch of 4
    # holds the same rows in one process (4) as in two (2 + 2)
    return dict(
        method="freeze",
        model=str(tiny_model_dir),
        data=str(chat_jsonl),
        output=str(out),
        quantization="none",
        # fp32: the two runs must agree to 1e-5, and bf16 on a bf16-capable CPU rounds each run's
        # differently ordered gradient sums apart by more (bf16 is checked in test_dtype.py)
        compute_dtype="fp32",
        max_steps=3,
        batch_size=batch_size,
        lr=1e-3,
        logging_steps=1,
        eval_steps=100,
    )


def _run(tmp_path: Path, settings: dict, dump: Path, nproc: int) -> None:
    script = tmp_path / "dump_run.py"
    script.write_text(DUMP)
    dump.mkdir()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    launcher += ["--master_port", "29519"] if nproc > 1 else ["--standalone"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [*launcher, str(script), repr(settings), str(dump)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_ranks_train_one_model_equal_to_one_process(tiny_model_dir, chat_jsonl, tmp_path):
    from safetensors.torch import load_file

    _run(tmp_path, _settings(tiny_model_dir, chat_jsonl, tmp_path / "ddp", 2), tmp_path / "two", 2)
    _run(tmp_path, _settings(tiny_model_dir, chat_jsonl, tmp_path / "one", 4), tmp_path / "one-dump", 1)
    rank0 = load_file(str(tmp_path / "two" / "rank0.safetensors"))
    rank1 = load_file(str(tmp_path / "two" / "rank1.safetensors"))
    single = load_file(str(tmp_path / "one-dump" / "rank0.safetensors"))
    assert rank0.keys() == rank1.keys() == single.keys() and len(rank0) > 10
    for name, value in rank0.items():
        # DDP all-reduces the gradients, so both ranks take bit-identical optimizer steps
        assert (value == rank1[name]).all(), f"{name} differs between the ranks"
        # one process sums the same rows in another order: float32 rounding only (lr 1e-3, 3 steps)
        assert (value - single[name]).abs().max() < 1e-5, name
