"""Every trainer callback r1lite installs: metrics.jsonl, a progress bar that shows reward, no-signal warnings,
periodic held-out evaluation and, on a CPU, freed memory handed back after each step. All of them use
transformers' public callback API only, and only the main process writes anything."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from r1lite.host_memory import release_free_memory

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
    """Append every log record (TRL's keys plus ``step``) to metrics.jsonl, flushed at once.

    On the main process only: at the start it keeps the records up to the checkpoint a run resumes from (the
    steps after it are about to be re-run) and drops everything on a fresh start."""

    def __init__(self, path: Path, resumed_step: int = 0, is_main_process: bool = True):
        self.path = path
        if not is_main_process:
            return
        if resumed_step and path.is_file():
            kept = [line for line in path.read_text().splitlines() if _record_step(line) <= resumed_step]
            partial = path.with_name(path.name + ".partial")
            partial.write_text("".join(line + "\n" for line in kept))
            partial.replace(path)  # write, then rename: a kill here leaves the old file whole
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
            self.bar = tqdm(
                total=state.max_steps, initial=state.global_step, desc=self.desc, unit="step", dynamic_ncols=True
            )
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
                logger.warning(
                    "first step: rewards %s were constant over every completion. %s", ", ".join(constant), NO_SIGNAL_FIX
                )
        frac = logs["frac_reward_zero_std"]
        self.streak = self.streak + 1 if frac is not None and frac >= ZERO_STD_THRESHOLD else 0
        if self.patience and self.streak == self.patience:
            logger.warning(
                "frac_reward_zero_std >= %.1f for %d steps in a row: almost no group has a reward "
                "difference, so the policy gets no gradient. %s",
                ZERO_STD_THRESHOLD,
                self.streak,
                NO_SIGNAL_FIX,
            )


class StepTime(TrainerCallback):
    """``time/step`` in every log record: the mean wall time of the optimizer steps since the last one."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.seconds: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.start is not None:
            self.seconds.append(time.perf_counter() - self.start)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self.seconds and "time/step" not in logs:
            logs["time/step"] = sum(self.seconds) / len(self.seconds)
            self.seconds.clear()


class ReleaseFreeMemory(TrainerCallback):
    """After each optimizer step, hand the C heap's free blocks back to the system (r1lite.host_memory): what the
    step's micro-batches and the optimizer freed, before the next step's backward needs its peak."""

    def __init__(self):
        self.releases = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.releases += 1
        release_free_memory()


def install(
    trainer, out: Path, reward_names: list[str] | None, patience: int = 0, resumed_step: int = 0, desc: str = "GRPO"
) -> None:
    """Swap transformers' loss-only progress bar for ours and add the metrics writer (and for GRPO the warnings)."""
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(MetricsWriter(out / "metrics.jsonl", resumed_step, trainer.args.process_index == 0))
    trainer.add_callback(StepProgress(desc))
    trainer.add_callback(MarkCompleteCheckpoints())
    trainer.add_callback(RunCard())
    if reward_names is not None:
        trainer.add_callback(SignalWatch(reward_names, patience))


class PeriodicEval(TrainerCallback):
    """Evaluate the training model on held-out questions every `every` steps and at the end of training.

    The metrics go to every callback's ``on_log`` (so ``MetricsWriter`` writes them to metrics.jsonl)
    as ``eval/<metric>`` and to ``state.log_history``, like ``Trainer.log`` does, but without calling
    ``GRPOTrainer.log``: that would consume and reset the training metrics gathered for the step.
    Only the main process evaluates (generation needs no collective with DDP; recipes with ZeRO-3, whose
    forward does, are refused in preflight). Without a trainer the results are only kept in ``history``.
    """

    def __init__(self, dataset, tokenizer, every: int, *, trainer=None, prefix: str = "eval/", **generation):
        from r1lite.engine import check_generation_settings

        check_generation_settings(
            generation.get("num_generations", 1),
            generation.get("temperature", 0.0),
            generation.get("max_completion_length", 512),
            generation.get("batch_size"),
        )
        self.dataset = dataset
        self.tokenizer = tokenizer
        self.every = every
        self.trainer = trainer
        self.prefix = prefix
        self.generation = {"progress": False, **generation}
        self.history: list[dict] = []  # {"step": N, "eval/<metric>": value, ...} per evaluation

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self._evaluate(args, state, control, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.history or self.history[-1]["step"] != state.global_step:
            self._evaluate(args, state, control, model)

    def _evaluate(self, args, state, control, model) -> None:
        from r1lite.evaluate import evaluate_model

        if not state.is_world_process_zero:
            return
        # The PEFT-wrapped training model, unmerged: evaluate_model switches it to eval mode and back.
        result = evaluate_model(model, self.tokenizer, self.dataset, **self.generation)
        logs = {f"{self.prefix}{key}": value for key, value in result.metrics.items()}
        logs[f"{self.prefix}seconds"] = round(result.seconds, 1)
        self.history.append({"step": state.global_step, **logs})
        logger.info(
            "step %d: %s", state.global_step, ", ".join(f"{k}={v:.3f}" for k, v in logs.items() if isinstance(v, float))
        )
        if self.trainer is not None:
            state.log_history.append({**logs, "step": state.global_step})
            # CallbackHandler.on_log clears control.should_log, which would drop this step's training log.
            should_log = control.should_log
            self.trainer.callback_handler.on_log(args, state, control, logs)
            control.should_log = should_log


# ----------------------------------------------------------------------------------------------- faults

COMPLETE_MARKER = "r1lite-complete.json"  # written into checkpoint-N/ once the Trainer has finished writing it


class MarkCompleteCheckpoints(TrainerCallback):
    """Mark each checkpoint complete once the Trainer has written all of it; resume only trusts marked ones.

    The Trainer writes checkpoint-N/ in place, file by file (adapter, optimizer, scheduler, RNG, trainer state):
    a run killed half-way leaves a checkpoint resume would otherwise pick up. `on_save` runs after the last file;
    the marker itself is written, then renamed, so it is never half there."""

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            partial = folder / (COMPLETE_MARKER + ".partial")
            partial.write_text(json.dumps({"step": state.global_step}))
            partial.replace(folder / COMPLETE_MARKER)


class RunCard(TrainerCallback):
    """Replace the model card TRL drafts in the run directory at each checkpoint (it names a local or embedded base
    model "None") with r1lite's, which names the real base model, its licence and the system prompt."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from r1lite.model_card import write_run_cards

            write_run_cards(Path(args.output_dir))


class StopOnSignal(TrainerCallback):
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler's stop): finish the step, save a checkpoint, stop training.

    The trainer's loop saves when a callback asks for it at the end of a step; `train` then says where the
    checkpoint is and exits non-zero. A second signal stops at once (the step in flight is lost)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> StopOnSignal:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        import signal

        if self.signal is not None:  # the second one: give up the step in flight
            self.uninstall()
            signal.raise_signal(signum)
            return
        self.signal = signum
        logger.warning(
            "%s received: finishing this step, then saving a checkpoint (send it again to stop at once)",
            signal.Signals(signum).name,
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self.signal is not None:
            control.should_save = True
            control.should_training_stop = True
        return control
