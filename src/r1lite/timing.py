"""Where a GRPO step's time goes, on any device.

- ``callbacks.StepTime``, a plain callback for any trainer: ``time/step``, the wall time of each optimizer step.
- ``TimedGRPOTrainer`` splits the step into phases, in seconds per optimizer step: ``time/generation``,
  ``time/rewards``, ``time/logprobs`` (the no-grad old/reference log-prob passes), ``time/backward`` (the loss
  forward plus backward) and ``time/optimizer`` (clipping, optimizer and scheduler step). It rests on the hooks
  of r1lite.trl_compat; the CPU trainer is one, and benchmarks use it to time TRL's own step.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from transformers import TrainerCallback

from r1lite.trl_compat import HookedGRPOTrainer

PHASES = ("generation", "rewards", "logprobs", "backward", "optimizer", "step")


class PhaseClock:
    """Seconds per phase, summed over the micro-steps of one optimizer step."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.step_start = time.perf_counter()
        self.last_backward_end: float | None = None

    @contextmanager
    def measure(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    def restart(self) -> None:
        self.seconds.clear()
        self.step_start = time.perf_counter()
        self.last_backward_end = None

    def finish(self) -> dict[str, float]:
        now = time.perf_counter()
        if self.last_backward_end is not None:  # what follows the last backward: clip, optimizer, scheduler
            self.seconds["optimizer"] += now - self.last_backward_end
        self.seconds["step"] = now - self.step_start
        return {f"time/{phase}": self.seconds.get(phase, 0.0) for phase in PHASES}


class _FlushPhaseTimes(TrainerCallback):
    """Hands each step's phase times to the trainer's metrics just before the step is logged."""

    def __init__(self, trainer: TimedGRPOTrainer) -> None:
        self.trainer = trainer

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer.phase_clock.restart()

    def on_step_end(self, args, state, control, **kwargs):
        for key, seconds in self.trainer.phase_clock.finish().items():
            self.trainer.record_metric(key, seconds)


class TimedGRPOTrainer(HookedGRPOTrainer):
    """A GRPO trainer that logs ``time/<phase>`` per optimizer step (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.phase_clock = PhaseClock()
        self.add_callback(_FlushPhaseTimes(self))

    def generation_context(self):
        return self.phase_clock.measure("generation")

    def rewards_context(self):
        return self.phase_clock.measure("rewards")

    def logprobs_context(self):
        return self.phase_clock.measure("logprobs")

    def rollout_context(self):
        return self.phase_clock.measure("rollout")

    @contextmanager
    def training_step_context(self) -> Iterator[None]:
        # The micro-step minus its rollout is the loss forward and backward.
        clock = self.phase_clock
        start, rollout_before = time.perf_counter(), clock.seconds["rollout"]
        try:
            yield
        finally:
            clock.last_backward_end = time.perf_counter()
            clock.seconds["backward"] += clock.last_backward_end - start - (clock.seconds["rollout"] - rollout_before)
