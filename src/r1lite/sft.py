"""`r1lite sft`: a supervised warm-up on worked solutions in the target format, before RL.

DeepSeek-R1 started RL from a model that had seen a few thousand replies in the target format
("cold start"). Here the replies are GSM8K's own worked solutions rendered as
``<reasoning>…</reasoning><answer>…</answer>``; the loss covers the reply only, not the prompt.
The adapter it saves is the ``init_adapter`` of a later ``r1lite train``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from datasets import Dataset
from transformers.trainer_callback import ProgressCallback
from trl import SFTConfig, SFTTrainer

from r1lite import callbacks
from r1lite.config import DataArgs, ModelArgs, parse_sections
from r1lite.data import DataError, build_prompt, extract_gold, few_shot_messages, load_rows, target_reply
from r1lite.models import default_device, load_model, lora_config, resolve_dtype
from r1lite.prompts import SYSTEM_PROMPT

logger = logging.getLogger(__name__)

SFT_DEFAULTS = {
    "output_dir": "runs/sft", "max_steps": 100, "learning_rate": 2e-4, "per_device_train_batch_size": 8,
    "logging_steps": 1, "save_steps": 50, "report_to": "none", "bf16": False, "max_length": 512,
    "lr_scheduler_type": "cosine", "warmup_steps": 0.05,
}


def sft_rows(rows: list[dict], system_prompt: str | None = SYSTEM_PROMPT, few_shot: int = 0, seed: int = 0):
    """Prompt/completion pairs: the training prompt, and the worked solution in the target format."""
    import random

    usable = [r for r in rows if isinstance(r.get("question"), str) and isinstance(r.get("answer"), str)
              and extract_gold(r["answer"]) is not None]
    if not usable:
        raise DataError("no rows with a question and an answer ending in '#### <final answer>' to learn from")
    rng = random.Random(seed)
    out = []
    for row in usable:
        shots = few_shot_messages(usable, few_shot, row["question"], rng)
        out.append({
            "prompt": build_prompt(row["question"], system_prompt, shots),
            "completion": [{"role": "assistant", "content": target_reply(row["answer"])}],
        })
    logger.info("SFT: %d rows rendered in the target format (%d unusable dropped)", len(out), len(rows) - len(out))
    return out


def parse_sft_config(argv: list[str], device: str | None = None) -> tuple[ModelArgs, DataArgs, SFTConfig]:
    """A recipe plus flags -> the model and data sections and TRL's SFTConfig for this device."""
    (model_args, data_args), kwargs = parse_sections(argv, "r1lite sft", (ModelArgs, DataArgs), SFTConfig,
                                                     SFT_DEFAULTS)
    device = device or default_device()
    dtype = str(resolve_dtype(model_args.precision, device)).removeprefix("torch.")
    kwargs.update(bf16=dtype == "bfloat16", fp16=dtype == "float16", use_cpu=device == "cpu")
    return model_args, data_args, SFTConfig(**kwargs)


def sft(argv: list[str]) -> Path:
    model_args, data_args, args = parse_sft_config(argv)
    device = default_device()
    out = Path(args.output_dir)

    model, tokenizer = load_model(model_args.model, model_args.precision, model_args.load_in_4bit, device)
    rows = load_rows(data_args.dataset, data_args.dataset_split, n=data_args.max_train_samples, seed=args.seed)
    if data_args.max_train_samples:
        rows = rows[: data_args.max_train_samples]
    system_prompt = data_args.system_prompt if data_args.system_prompt is not None else SYSTEM_PROMPT
    dataset = Dataset.from_list(sft_rows(rows, system_prompt, data_args.few_shot, args.seed))
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
        peft_config=lora_config(model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout,
                                model_args.lora_target_modules),
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(callbacks.MetricsWriter(out / "metrics.jsonl"))
    trainer.add_callback(callbacks.StepProgress(desc="SFT"))
    trainer.train()
    adapter = out / "adapter"
    trainer.save_model(str(adapter))
    tokenizer.save_pretrained(adapter)
    return adapter
