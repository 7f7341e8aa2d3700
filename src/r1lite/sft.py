"""`r1lite sft`: a supervised warm-up on worked solutions in the target format, before RL.

DeepSeek-R1 started RL from a model that had seen a few thousand replies in the target format
("cold start"). Here the replies are GSM8K's own worked solutions rendered as
``<reasoning>…</reasoning><answer>…</answer>``; the loss covers the reply only, not the prompt. Rows,
prompts and few-shot examples are prepared exactly as for ``r1lite train`` (r1lite.data). The adapter
it saves is the ``init_adapter`` of a later ``r1lite train``; the run directory holds ``config.yaml``
and ``metrics.jsonl`` as a GRPO run's does.
"""

from __future__ import annotations

import logging
from pathlib import Path

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from r1lite import callbacks
from r1lite.config import SFTRunConfig
from r1lite.data import target_reply
from r1lite.models import default_device, lora_config
from r1lite.train import (
    check_outlets,
    finish_run,
    load_model_and_rows,
    precision_flags,
    run_until_done_or_signal,
    start_run,
    step_of,
)

logger = logging.getLogger(__name__)


def sft_rows(prepared: Dataset) -> Dataset:
    """Prompt/completion pairs: the training prompt, and the worked solution in the target format."""
    return Dataset.from_list(
        [
            {"prompt": row["prompt"], "completion": [{"role": "assistant", "content": target_reply(row["solution"])}]}
            for row in prepared
        ]
    )


def build_sft_config(config: SFTRunConfig, device: str | None = None) -> SFTConfig:
    """SFTConfig for this device; the precision flags it resolves are written back into config.trl (config.yaml
    shows what ran)."""
    device = device or default_device()
    config.trl = {**config.trl, **precision_flags(config.model.precision, device)}
    return SFTConfig(**config.trl)


def sft(config: SFTRunConfig) -> Path:
    """Run the warm-up as configured; return the directory of the saved adapter."""
    device = default_device()
    args = build_sft_config(config, device)
    check_outlets(args)
    out = config.output_dir
    checkpoint = start_run(config, args)

    lora = config.lora
    model, tokenizer, prepared = load_model_and_rows(config, args, device)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=sft_rows(prepared),
        processing_class=tokenizer,
        peft_config=lora_config(lora.lora_r, lora.lora_alpha, lora.lora_dropout, lora.lora_target_modules),
    )
    callbacks.install(trainer, out, reward_names=None, resumed_step=step_of(checkpoint), desc="SFT")
    if device == "cpu":  # the host heap holds the activations: keep it to what the next step needs
        trainer.add_callback(callbacks.ReleaseFreeMemory())
    run_until_done_or_signal(trainer, checkpoint, out)
    return finish_run(trainer, tokenizer, out)
