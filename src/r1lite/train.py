"""`r1lite train`: GRPO on TRL's GRPOTrainer, with a run directory a person can read afterwards.

A run directory holds ``config.yaml`` (the resolved recipe), ``metrics.jsonl`` (one JSON object per
logged step, TRL's metric keys), ``samples.jsonl`` (completions with their rewards every few steps),
``checkpoint-N/`` every ``save_steps`` and the final LoRA adapter in ``adapter/``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

from transformers.trainer_utils import get_last_checkpoint
from trl import GRPOConfig, GRPOTrainer

from r1lite import callbacks
from r1lite.config import RunConfig
from r1lite.data import load_prepared
from r1lite.models import ModelError, attach_adapter, default_device, load_model, lora_config, resolve_dtype
from r1lite.prompts import SYSTEM_PROMPT
from r1lite.rewards import build_reward_funcs
from r1lite.rewards.base import completion_text
from r1lite.speed import CPUFastPathMixin, TimedGRPOMixin

logger = logging.getLogger(__name__)


def adapt_to_device(grpo: dict[str, Any], precision: str, device: str) -> dict[str, Any]:
    """GRPOConfig keyword arguments for this device: precision flags, and GPU-only settings replaced on CPU."""
    grpo = dict(grpo)
    dtype = str(resolve_dtype(precision, device)).removeprefix("torch.")
    grpo["bf16"], grpo["fp16"] = dtype == "bfloat16", dtype == "float16"
    if device == "cpu":
        grpo["use_cpu"] = True
        if grpo.get("use_vllm"):
            logger.warning("use_vllm needs a CUDA GPU here; generating with transformers instead")
            grpo["use_vllm"] = False
        if "8bit" in str(grpo.get("optim", "")) and importlib.util.find_spec("bitsandbytes") is None:
            logger.warning("optim %s needs bitsandbytes (CUDA); using adamw_torch on CPU", grpo["optim"])
            grpo["optim"] = "adamw_torch"
    return grpo


def preflight(args: GRPOConfig) -> None:
    """Fail before loading a model on what would otherwise fail deep inside TRL."""
    if args.use_vllm and importlib.util.find_spec("vllm") is None:
        raise ModelError("use_vllm: true needs vLLM on this machine: pip install 'r1lite[gpu]' (or set use_vllm false)")
    if "8bit" in str(args.optim) and importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(f"optim {args.optim} needs bitsandbytes: pip install 'r1lite[gpu]' (or optim adamw_torch)")


def build_grpo_config(config: RunConfig, device: str | None = None) -> GRPOConfig:
    device = device or default_device()
    return GRPOConfig(**adapt_to_device(config.grpo, config.model.precision, device))


class R1Trainer(TimedGRPOMixin, CPUFastPathMixin, GRPOTrainer):
    """GRPOTrainer that logs time/<phase> per step, takes the CPU fast path when asked, and writes
    sample completions with their rewards to samples.jsonl."""

    def __init__(self, *args, samples_path: Path, sample_every: int, golds: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self._samples_path = samples_path
        self._sample_every = sample_every
        self._golds = golds

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        step = self.state.global_step
        if self.model.training and self._sample_every and (step == 1 or step % self._sample_every == 0):
            self._write_samples(step)
        super().log(logs, start_time)

    def _write_samples(self, step: int, per_step: int = 2) -> None:
        prompts, completions = list(self._logs["prompt"]), list(self._logs["completion"])
        rewards = {name: list(values) for name, values in self._logs["rewards"].items()}
        with self._samples_path.open("a") as f:
            for i in range(min(per_step, len(completions))):
                question = completion_text(prompts[i])
                scores = {name: values[i] for name, values in rewards.items()}
                record = {
                    "step": step, "question": question, "gold": self._golds.get(question, ""),
                    "completion": completion_text(completions[i]), "rewards": scores,
                    "reward": sum(v for v in scores.values() if v == v),  # skip NaN (None rewards)
                }
                f.write(json.dumps(record) + "\n")


def train(config: RunConfig) -> Path:
    """Run GRPO as configured; return the directory of the saved adapter."""
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    device = default_device()
    args = build_grpo_config(config, device)
    preflight(args)
    checkpoint = _checkpoint_to_resume(out) if config.run.resume else None
    config.save(out / "config.yaml")

    m, d = config.model, config.data
    model, tokenizer = load_model(m.model, m.precision, m.load_in_4bit, device)
    dataset = load_prepared(
        d.dataset, d.dataset_split, d.system_prompt if d.system_prompt is not None else SYSTEM_PROMPT,
        d.few_shot, d.max_train_samples, tokenizer, d.max_prompt_length, args.seed,
    )
    peft_config = None
    if m.init_adapter:
        model = attach_adapter(model, m.init_adapter, trainable=True)
    elif m.use_lora:
        peft_config = lora_config(m.lora_r, m.lora_alpha, m.lora_dropout, m.lora_target_modules)

    reward_funcs = build_reward_funcs(config.rewards.reward_set, config.rewards.rewards,
                                      config.rewards.on_reward_error)
    if args.reward_weights is not None and len(args.reward_weights) != len(reward_funcs):
        raise ValueError(f"reward_weights has {len(args.reward_weights)} values for {len(reward_funcs)} rewards")
    trainer = R1Trainer(
        model=model, reward_funcs=reward_funcs, args=args, train_dataset=dataset, processing_class=tokenizer,
        peft_config=peft_config, samples_path=out / "samples.jsonl", sample_every=config.run.sample_every,
        cpu_fast_path=device == "cpu" and config.run.cpu_fast_path,
        golds={row_question(p): a for p, a in zip(dataset["prompt"], dataset["answer"], strict=True)},
    )
    callbacks.install(trainer, out, reward_funcs, config.run.zero_std_patience, resumed_step=_step_of(checkpoint))
    if config.run.eval_every:
        trainer.add_callback(_periodic_eval(config, tokenizer, trainer, args.seed))
    trainer.train(resume_from_checkpoint=checkpoint)
    adapter_dir = out / "adapter"
    trainer.save_model(str(adapter_dir))
    tokenizer.save_pretrained(adapter_dir)
    logger.info("Saved adapter to %s", adapter_dir)
    return adapter_dir


def _periodic_eval(config: RunConfig, tokenizer, trainer, seed: int):
    """Held-out evaluation during training, prompted exactly as the training rows."""
    from r1lite.evaluate import PeriodicEval

    d, r = config.data, config.run
    held_out = load_prepared(
        d.dataset, r.eval_split, d.system_prompt if d.system_prompt is not None else SYSTEM_PROMPT, d.few_shot,
        r.eval_limit, tokenizer, d.max_prompt_length, seed,
    )
    return PeriodicEval(held_out, tokenizer, r.eval_every, trainer=trainer, max_new_tokens=r.eval_max_new_tokens)


def row_question(prompt: list[dict]) -> str:
    """The asked question of a conversational prompt: its last message."""
    return completion_text(prompt)


def _checkpoint_to_resume(out: Path) -> str | None:
    checkpoint = get_last_checkpoint(str(out)) if out.is_dir() else None
    if checkpoint is None:
        logger.warning("resume: no checkpoint-N directory in %s, starting from scratch", out)
    else:
        logger.info("Resuming from %s", checkpoint)
    return checkpoint


def _step_of(checkpoint: str | None) -> int:
    return int(Path(checkpoint).name.split("-")[-1]) if checkpoint else 0
