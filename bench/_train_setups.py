"""The configurations bench/fa_adapt_train.py times: ours, the source's setup and TRL's
SFTTrainer, each built as its own code builds it, plus the counting and clock it times them with."""

from __future__ import annotations

import random
import time
from typing import Any

from _fa_adapt import use_peft_token_forward

METHODS = ("lora", "prompt", "freeze")


class Counting:
    """Wraps a data collator and records, per batch, padded / non-pad / labeled (trained) tokens."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches: list[dict[str, int]] = []

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(rows)
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        self.batches.append(
            {
                "rows": int(ids.shape[0]),
                "padded": int(ids.numel()),
                "real": int(mask.sum()) if mask is not None else int(ids.numel()),
                "trained": int((batch["labels"][:, 1:] != -100).sum()),
            }
        )
        return batch


def clock_callback() -> Any:
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.begin = self.end = 0.0
            self.sync = None

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001, ANN201
            if self.sync:
                self.sync()
            self.begin = time.perf_counter()

        def on_train_end(self, args, state, control, **kw):  # noqa: ANN001, ANN201
            if self.sync:
                self.sync()
            self.end = time.perf_counter()

    return Clock()


def measured_rows(tokenizer: Any, max_length: int, n: int, batch_size: int) -> tuple[list[Any], list[Any]]:
    """(measured rows, warm-up rows): a fixed random sample of the train split, and the shortest others."""
    from fa_adapt import data as chat_data

    conversations, stats = chat_data.load_conversations(None)
    examples = chat_data.tokenize_conversations(tokenizer, conversations, max_length, stats)
    train, _ = chat_data.split_train_validation(examples, 42)
    picked = set(random.Random(0).sample(range(len(train)), min(n, len(train))))
    measured = [train[i] for i in sorted(picked)]
    others = sorted((r for i, r in enumerate(train) if i not in picked), key=lambda r: len(r["input_ids"]))
    return measured, others[:1]


def our_trainer_class() -> Any:
    """What `adapt finetune` trains with: its Trainer subclass, with the labeled-positions loss."""
    from fa_adapt.trainer import ChatTrainer

    return ChatTrainer


def training_args(
    out: str, batch_size: int, lr: float, device: str, grouped: bool, dtype: str, trl: bool = False
) -> Any:
    common = dict(
        output_dir=out,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        num_train_epochs=1,
        lr_scheduler_type="linear",
        logging_strategy="no",
        eval_strategy="no",
        save_strategy="no",
        seed=42,
        data_seed=42,
        train_sampling_strategy="group_by_length" if grouped else "random",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=device == "cpu",
        bf16=dtype == "bf16",  # autocast, from fp32 trained tensors (CPU and GPU alike)
    )
    if trl:
        from trl import SFTConfig

        return SFTConfig(**common, gradient_checkpointing=False, max_length=None, dataset_num_proc=None)
    from transformers import TrainingArguments

    return TrainingArguments(**common)


def build(
    config: str, model_name: str | None, batch_size: int, max_length: int, trl_token_rows: bool
) -> dict[str, Any]:
    # config: setup-method-dtype, e.g. ours-lora-bf16
    """Model, tokenizer, trainer class and collator of one configuration (nothing trained yet)."""
    from fa_adapt import training
    from fa_adapt.collator import ChatCollator
    from fa_adapt.config import resolve_config
    from fa_adapt.methods import get_method

    setup, method, dtype = config.split("-")
    cfg = resolve_config(
        method=method,
        model=model_name,
        output="/tmp/bench-unused",
        batch_size=batch_size,
        compute_dtype=dtype,
    )
    if setup == "trl":
        from peft import LoraConfig as PeftLoraConfig

        from fa_adapt.chatml import add_chatml_tokens
        from fa_adapt.loading import load_model, load_tokenizer

        tokenizer = load_tokenizer(model_name)
        model = load_model(model_name, dtype=dtype)
        new_ids = add_chatml_tokens(tokenizer, model)
        lora = get_method("lora").settings
        peft_config = PeftLoraConfig(
            task_type="CAUSAL_LM",
            r=lora.lora_r,
            lora_alpha=lora.lora_alpha,
            lora_dropout=lora.lora_dropout,
            target_modules=list(lora.target_modules),
            # TRL 1.16's fused LM head reads lm_head.bias, which PEFT's TrainableTokensWrapper (the tied
            # ChatML rows) lacks: AttributeError. Without the rows the step costs the same to within
            # the two rows' update, so the speed comparison stands; --trl-token-rows tries with them
            trainable_token_indices=list(new_ids) if trl_token_rows else None,
        )
        return dict(
            model=model,
            tokenizer=tokenizer,
            peft_config=peft_config,
            lr=cfg.lr,
            setup=setup,
            method=method,
            dtype=dtype,
        )
    model, tokenizer, _, _ = training.prepare_model(cfg)
    if setup == "source":
        from transformers import Trainer

        use_peft_token_forward(model)  # the source's PEFT setup, not fa_adapt's row-only forward

        collator = ChatCollator(tokenizer.pad_token_id, pad_to_multiple_of=max_length)
        return dict(
            model=model,
            tokenizer=tokenizer,
            cls=Trainer,
            collator=collator,
            lr=cfg.lr,
            batch=1,
            grouped=False,
            setup=setup,
            method=method,
            dtype=dtype,
        )
    return dict(
        model=model,
        tokenizer=tokenizer,
        cls=our_trainer_class(),
        collator=ChatCollator(tokenizer.pad_token_id),
        lr=cfg.lr,
        batch=batch_size,
        grouped=True,
        setup=setup,
        method=method,
        dtype=dtype,
    )
