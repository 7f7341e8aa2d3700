"""Where a GRPO step's time goes, and the fast path r1lite takes on a CPU.

Two mixins for a ``GRPOTrainer`` subclass and one function for its settings:

- ``TimedGRPOMixin`` logs ``time/generation``, ``time/rewards``, ``time/logprobs`` (the no-grad
  old/reference log-prob passes), ``time/backward`` (the loss forward plus backward),
  ``time/optimizer`` (clipping, optimizer and scheduler step) and ``time/step`` (the whole step),
  in seconds per optimizer step, beside TRL's metrics.
- ``CPUFastPathMixin`` samples from a copy of the model with the LoRA adapter merged into its
  weights, refreshed after each optimizer step (unmerged, every adapted projection runs two more
  small matmuls and a few more ops per generated token, and on a CPU per-op overhead dominates
  decoding), and runs TRL's fused LM head with CPU-sized tiles (half the peak memory here).
- ``cpu_fast_defaults`` would pick GRPOConfig settings for a CPU; none beats TRL's defaults today.

docs/speed.md has the measured figures behind each choice.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

PHASES = ("generation", "rewards", "logprobs", "backward", "optimizer", "step")


def cpu_fast_defaults(grpo: dict[str, Any]) -> dict[str, Any]:
    """GRPOConfig keyword arguments for the CPU fast path: a copy of `grpo`, unchanged.

    No GRPOConfig-level setting measured so far beats TRL's default on a CPU within the memory target
    (docs/speed.md): turning gradient checkpointing off saves about one forward pass per step but takes the
    embedded model's peak memory past 4 GB; a static KV cache, transformers' continuous batching and
    torch.compile generate no faster. The fast path is CPUFastPathMixin's, and a recipe that wants the
    memory-for-speed trade sets `gradient_checkpointing: false` itself.
    """
    return dict(grpo)


# ----------------------------------------------------------------------------------------------- timing


class _PhaseClock:
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

    def __init__(self, trainer) -> None:
        self.trainer = trainer

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer._phase_clock.restart()

    def on_step_end(self, args, state, control, **kwargs):
        # GRPOTrainer.log averages each list in _metrics over the logged steps: seconds per step.
        for key, seconds in self.trainer._phase_clock.finish().items():
            self.trainer._metrics["train"][key].append(seconds)


class TimedGRPOMixin:
    """Put before GRPOTrainer in the bases: logs time/<phase> seconds per optimizer step.

    It wraps TRL's own hooks: ``_generate_single_turn`` (sampling), ``_calculate_rewards``,
    ``_get_per_token_logps_and_entropies`` (counted as ``logprobs`` when called without gradients, i.e. the
    old/reference passes; with gradients it is the loss forward, part of ``backward``) and ``training_step``
    (whose time minus the rollout in ``_prepare_inputs`` is the loss forward and backward).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._phase_clock = _PhaseClock()
        self.add_callback(_FlushPhaseTimes(self))

    def _generate_single_turn(self, *args, **kwargs):
        with self._phase_clock.measure("generation"):
            return super()._generate_single_turn(*args, **kwargs)

    def _calculate_rewards(self, *args, **kwargs):
        with self._phase_clock.measure("rewards"):
            return super()._calculate_rewards(*args, **kwargs)

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        if torch.is_grad_enabled():
            return super()._get_per_token_logps_and_entropies(*args, **kwargs)
        with self._phase_clock.measure("logprobs"):
            return super()._get_per_token_logps_and_entropies(*args, **kwargs)

    def _prepare_inputs(self, *args, **kwargs):
        with self._phase_clock.measure("rollout"):
            return super()._prepare_inputs(*args, **kwargs)

    def training_step(self, *args, **kwargs):
        start, rollout_before = time.perf_counter(), self._phase_clock.seconds["rollout"]
        try:
            return super().training_step(*args, **kwargs)
        finally:
            clock = self._phase_clock
            clock.last_backward_end = time.perf_counter()
            clock.seconds["backward"] += clock.last_backward_end - start - (clock.seconds["rollout"] - rollout_before)


# ----------------------------------------------------------------------------------------------- generation


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module] | None:
    """The LoRA-wrapped linear layers of a PEFT model by their name in the base model, or None when the
    adapter cannot be merged into plain weights (not a PEFT LoRA model, DoRA, or non-Linear targets)."""
    from peft import PeftModel
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    if not isinstance(model, PeftModel):
        return None
    layers = {}
    for name, module in model.get_base_model().named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if type(module) is not LoraLinear or any(module.use_dora.get(a) for a in module.active_adapters):
            return None
        layers[name] = module
    return layers or None


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A plain copy of a PEFT model's base model with room for merged weights (filled by `sync_merged`)."""
    with torch.no_grad():
        copy_ = copy.deepcopy(model).merge_and_unload()
    # GRPOTrainer replaces the model's forward (its fused LM head) by a closure over the original model: a deep
    # copy keeps that closure, and would keep running the training model. Sampling needs the class's forward.
    vars(copy_).pop("forward", None)
    copy_.requires_grad_(False)
    copy_.eval()
    if getattr(copy_, "is_gradient_checkpointing", False):
        copy_.gradient_checkpointing_disable()
    return copy_


@torch.no_grad()
def sync_merged(target: torch.nn.Module, layers: dict[str, torch.nn.Module]) -> None:
    """target.<name>.weight = base weight + LoRA delta of every active adapter, summed in fp32 and rounded
    once. Merging into the training weights and unmerging afterwards would round twice per step, and in
    bf16 that drift adds up over a run."""
    for name, layer in layers.items():
        merged = layer.base_layer.weight.float()
        if not layer.disable_adapters:
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    merged = merged + layer.get_delta_weight(adapter).float()
        weight = target.get_submodule(name).weight
        weight.copy_(merged.to(weight.dtype))


# TRL's fused LM head folds [tokens x vocabulary] tiles of logits in fp32 through plain torch ops wherever it has
# no Triton kernel, i.e. on every CPU. Its GPU-sized tiles (4096 tokens x 32768 words) hold a whole 8 x 280-token
# GRPO batch at once: about 1 GB of temporaries per pass. Smaller tiles do the same arithmetic in a tenth.
CPU_LM_HEAD_TILE = (1024, 8192)


@contextmanager
def lm_head_tiles(tokens: int, words: int) -> Iterator[None]:
    """Run TRL's fused LM head (forward and backward) with [tokens x words] tiles inside this block."""
    import trl.kernels.chunked_logprob as kernel
    import trl.trainer.utils as trl_utils

    saved = kernel.TOKEN_CHUNK_SIZE, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE
    kernel.TOKEN_CHUNK_SIZE, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = tokens, words
    try:
        yield
    finally:
        kernel.TOKEN_CHUNK_SIZE, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = saved


class CPUFastPathMixin:
    """Put before GRPOTrainer in the bases; ``cpu_fast_path=True`` turns on what makes a CPU step fast and small:

    - completions are sampled from a copy of the model with the LoRA adapter merged into its weights,
      refreshed the first time each optimizer step generates (one small matmul per adapted layer). The copy
      costs one more model's worth of memory. Full fine-tuning, DoRA and vLLM generation are left to TRL;
    - TRL's fused LM head runs with CPU-sized tiles (CPU_LM_HEAD_TILE).
    """

    # The parts of the fast path, each measured on its own in docs/speed.md (a subclass may drop one).
    fast_path_parts: tuple[str, ...] = ("merged_generation", "lm_head_tiles")

    def __init__(self, *args, cpu_fast_path: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        parts = self.fast_path_parts if cpu_fast_path else ()
        self._small_lm_head_tiles = "lm_head_tiles" in parts
        self._merge_layers = None
        if "merged_generation" in parts:
            self._merge_layers = lora_layers(self.accelerator.unwrap_model(self.model))
            if self._merge_layers is None:
                logger.info("no LoRA adapter on linear layers to merge: sampling from the training model")
        self._merged_model: torch.nn.Module | None = None
        self._merged_at_step = -1

    def training_step(self, *args, **kwargs):
        if not self._small_lm_head_tiles:
            return super().training_step(*args, **kwargs)
        with lm_head_tiles(*CPU_LM_HEAD_TILE):  # covers the reference pass, the loss forward and the backward
            return super().training_step(*args, **kwargs)

    def _generate_single_turn(self, *args, **kwargs):
        if self._merge_layers is None or self.use_vllm:
            return super()._generate_single_turn(*args, **kwargs)
        if self._merged_model is None:
            self._merged_model = merged_copy(self.accelerator.unwrap_model(self.model))
        if self._merged_at_step != self.state.global_step:
            sync_merged(self._merged_model, self._merge_layers)
            self._merged_at_step = self.state.global_step
        # TRL samples from `self.model_wrapped`; point it at the merged copy for this call only.
        training_model = self.model_wrapped
        self.model_wrapped = self._merged_model
        try:
            return super()._generate_single_turn(*args, **kwargs)
        finally:
            self.model_wrapped = training_model
