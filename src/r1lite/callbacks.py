"""Trainer callbacks: metrics.jsonl, a progress bar that shows reward, and no-signal warnings."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

logger = logging.getLogger(__name__)

ZERO_STD_THRESHOLD = 0.9
NO_SIGNAL_FIX = (
    "GRPO learns only from differences within a group. Fixes: a cold start (few_shot: 1 or an SFT warm-up "
    "with init_adapter), the corrected rewards (reward_set: default), a higher temperature, or more "
    "num_generations."
)


def _clean(value):
    """JSON has no NaN: TRL reports a reward that was None for a whole batch as NaN or None."""
    return None if isinstance(value, float) and math.isnan(value) else value


class MetricsWriter(TrainerCallback):
    """Append every log record (TRL's keys plus ``step``) to metrics.jsonl, flushed at once."""

    def __init__(self, path: Path, resumed_step: int = 0):
        self.path = path
        if resumed_step and path.is_file():
            # Steps after the checkpoint are about to be re-run: drop their records to avoid duplicates.
            kept = [line for line in path.read_text().splitlines() if _record_step(line) <= resumed_step]
            path.write_text("".join(line + "\n" for line in kept))
        elif not resumed_step and path.exists():
            path.unlink()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        record = {"step": state.global_step, **{k: _clean(v) for k, v in logs.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def _record_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 1 << 62  # an unreadable (truncated) line is dropped


def format_rate(logs: dict) -> float | None:
    """Share of completions in the strict format, from the strict-format reward's mean."""
    for key, value in logs.items():
        if key.startswith("rewards/strict_format") and key.endswith("/mean") and value is not None:
            return value / 0.5
    return None


class StepProgress(TrainerCallback):
    """One bar for the run: step, seconds per step, and the mean reward and strict-format rate
    (GRPO) or the loss (SFT)."""

    def __init__(self, desc: str = "GRPO"):
        self.desc = desc
        self.bar = None
        self.last = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=self.desc, unit="step",
                            dynamic_ncols=True)
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is None or not logs or ("reward" not in logs and "loss" not in logs):
            return
        now = time.perf_counter()
        postfix = {"s/step": f"{(now - self.last) / max(1, args.logging_steps):.1f}"}
        self.last = now
        if logs.get("reward") is not None:
            postfix["reward"] = f"{logs['reward']:.3f}"
            rate = format_rate(logs)
            if rate is not None:
                postfix["format"] = f"{rate:.0%}"
        elif logs.get("loss") is not None:
            postfix["loss"] = f"{logs['loss']:.3f}"
        self.bar.set_postfix(postfix, refresh=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


class SignalWatch(TrainerCallback):
    """Warn when rewards carry no learning signal: constant rewards at the first step, or zero-variance groups."""

    def __init__(self, reward_names: list[str], patience: int):
        self.reward_names = reward_names
        self.patience = patience
        self.streak = 0
        self.checked_first = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "frac_reward_zero_std" not in logs:
            return
        if not self.checked_first:
            self.checked_first = True
            constant = [n for n in self.reward_names if logs.get(f"rewards/{n}/std") == 0.0]
            if constant:
                logger.warning("first step: rewards %s were constant over every completion. %s",
                               ", ".join(constant), NO_SIGNAL_FIX)
        frac = logs["frac_reward_zero_std"]
        self.streak = self.streak + 1 if frac is not None and frac >= ZERO_STD_THRESHOLD else 0
        if self.patience and self.streak == self.patience:
            logger.warning("frac_reward_zero_std >= %.1f for %d steps in a row: almost no group has a reward "
                           "difference, so the policy gets no gradient. %s", ZERO_STD_THRESHOLD, self.streak,
                           NO_SIGNAL_FIX)


def install(trainer, out: Path, reward_funcs, patience: int, resumed_step: int = 0) -> None:
    """Swap transformers' loss-only progress bar for ours and add the metrics writer and warnings."""
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(MetricsWriter(out / "metrics.jsonl", resumed_step))
    trainer.add_callback(StepProgress())
    trainer.add_callback(SignalWatch([f.__name__ for f in reward_funcs], patience))
