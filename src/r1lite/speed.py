"""Where a GRPO step's time goes, and the fast path r1lite takes on a CPU.

Two mixins for a ``GRPOTrainer`` subclass:

- ``TimedGRPOMixin`` logs ``time/generation``, ``time/rewards``, ``time/logprobs`` (the no-grad
  old/reference log-prob passes), ``time/backward`` (the loss forward plus backward),
  ``time/optimizer`` (clipping, optimizer and scheduler step) and ``time/step`` (the whole step),
  in seconds per optimizer step, beside TRL's metrics.
- ``CPUFastPathMixin`` samples from a copy of the model with the LoRA adapter merged into its
  weights, refreshed after each optimizer step (unmerged, every adapted projection runs two more
  small matmuls and a few more ops per generated token, and on a CPU per-op overhead dominates
  decoding), draws tokens by inverse CDF, runs r1lite's grouped attention (r1lite.attention) in sampling
  and in the loss, and computes the completions' log-probabilities with CPULogProbs instead of TRL's fused
  LM head, which on a CPU scores every position.

docs/speed.md has the measured figures behind each choice.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from transformers import TrainerCallback

from r1lite.attention import use_grouped_attention

logger = logging.getLogger(__name__)

PHASES = ("generation", "rewards", "logprobs", "backward", "optimizer", "step")


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
    use_grouped_attention(copy_)  # it only generates
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


# TRL's fused LM head turns hidden states into per-token log-probabilities without materialising the logits. Where
# it has no Triton kernel, i.e. on every CPU, it (a) scores every position, prompt and padding included, and (b) folds
# each tile through a dozen fp32 elementwise passes, recomputing the tile in the backward. For the embedded model
# (vocabulary 49,152) and a GRPO batch of 8 x 290 tokens, TRL's forward + backward took 2.8 s on this CPU; projecting
# only the ~1,500 scored positions, in chunks, with torch's own logsumexp took 0.9 s for the same values.
CPU_LM_HEAD_TOKENS = 512  # positions per chunk: 512 x 49,152 fp32 logits is 100 MB, kept for the backward


class CPULogProbs:
    """Drop-in for TRL's ``ChunkedLogProbFunction.apply`` on a CPU: the same outputs, by plain autograd.

    ``log_probs`` carries gradients; ``entropy`` carries them only when ``entropy_grad`` (TRL's entropy bonus),
    otherwise it is computed without, for logging and the high-entropy mask. Fields other than these two, and
    logit softcapping, go to TRL's own function.
    """

    def __init__(self, trl_function, entropy_grad: bool = False, tokens: int = CPU_LM_HEAD_TOKENS):
        self.trl_function = trl_function
        self.entropy_grad = entropy_grad
        self.tokens = tokens

    def apply(self, hidden, weight, bias, targets, temperature, chunk_size, softcap=None, logit_scale=1.0,
              outputs=("log_probs",)):
        if softcap is not None or set(outputs) - {"log_probs", "entropy"}:
            return self.trl_function.apply(hidden, weight, bias, targets, temperature, chunk_size, softcap,
                                           logit_scale, outputs)
        scale = logit_scale / temperature
        log_probs, entropies = [], []
        for start in range(0, hidden.shape[0], self.tokens):
            logits = torch.nn.functional.linear(hidden[start : start + self.tokens], weight, bias).float()
            if scale != 1.0:
                logits = logits * scale
            log_z = torch.logsumexp(logits, dim=-1)
            log_probs.append(logits.gather(-1, targets[start : start + self.tokens, None]).squeeze(-1) - log_z)
            if "entropy" in outputs:
                with torch.set_grad_enabled(self.entropy_grad and torch.is_grad_enabled()):
                    entropies.append(log_z - (torch.softmax(logits, dim=-1) * logits).sum(-1))
        entropy = torch.cat(entropies) if entropies else None
        return torch.cat(log_probs), entropy, None, None, None


@contextmanager
def cpu_lm_head(entropy_grad: bool = False) -> Iterator[None]:
    """Inside this block, models with TRL's fused LM head score only the labelled positions, with CPULogProbs."""
    import trl.trainer.utils as trl_utils

    saved = trl_utils._ChunkedLogProbFunction, trl_utils._use_triton
    # In trl.trainer.utils, `_use_triton` only decides whether the unlabelled positions are dropped before scoring
    # (kept elsewhere so that accelerators that compile see one tile shape); a CPU compiles nothing.
    trl_utils._ChunkedLogProbFunction = CPULogProbs(saved[0], entropy_grad)
    trl_utils._use_triton = lambda device: True
    try:
        yield
    finally:
        trl_utils._ChunkedLogProbFunction, trl_utils._use_triton = saved


def _categorical(original):
    """torch.multinomial for one draw per row of CPU probabilities, by inverse CDF: the same distribution, from a
    cumulative sum and one uniform number per row. PyTorch's CPU multinomial draws one exponential variate per
    vocabulary entry: 6 ms per decoding step for 8 rows of 49,152 words, 1.2 s of a GRPO step's 8 s of sampling."""

    def multinomial(input, num_samples, replacement=False, *, generator=None, out=None):
        if num_samples != 1 or input.dim() != 2 or input.device.type != "cpu" or out is not None:
            return original(input, num_samples, replacement, generator=generator, out=out)
        cdf = input.float().cumsum(-1)
        u = torch.rand(input.shape[0], 1, generator=generator) * cdf[:, -1:]
        # right=True: the first word whose cumulative mass exceeds u, never one with probability 0.
        return torch.searchsorted(cdf, u, right=True).clamp_(max=input.shape[-1] - 1)

    return multinomial


@contextmanager
def fast_sampling() -> Iterator[None]:
    """Inside this block, one-draw torch.multinomial calls on CPU use the inverse CDF (transformers samples with it)."""
    original = torch.multinomial
    torch.multinomial = _categorical(original)
    try:
        yield
    finally:
        torch.multinomial = original


class CPUFastPathMixin:
    """Put before GRPOTrainer in the bases; ``cpu_fast_path=True`` turns on what makes a CPU step fast and small:

    - completions are sampled from a copy of the model with the LoRA adapter merged into its weights,
      refreshed the first time each optimizer step generates (one small matmul per adapted layer). The copy
      costs one more model's worth of memory. Full fine-tuning, DoRA and vLLM generation are left to TRL;
    - tokens are drawn by inverse CDF instead of PyTorch's CPU multinomial (fast_sampling);
    - the log-probabilities of completions come from CPULogProbs instead of TRL's fused LM head (cpu_lm_head);
    - attention runs r1lite's grouped formula, in sampling and in the loss (r1lite.attention).
    """

    # The parts of the fast path, each measured on its own in docs/speed.md (a subclass may drop one).
    fast_path_parts: tuple[str, ...] = (
        "merged_generation", "fast_sampling", "cpu_lm_head", "grouped_attention")

    def __init__(self, *args, cpu_fast_path: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        parts = self.fast_path_parts if cpu_fast_path else ()
        self._cpu_lm_head = "cpu_lm_head" in parts
        self._fast_sampling = "fast_sampling" in parts
        model = self.accelerator.unwrap_model(self.model)
        if "grouped_attention" in parts:
            use_grouped_attention(model)
        self._merge_layers = None
        if "merged_generation" in parts:
            self._merge_layers = lora_layers(model)
            if self._merge_layers is None:
                logger.info("no LoRA adapter on linear layers to merge: sampling from the training model")
        self._merged_model: torch.nn.Module | None = None
        self._merged_at_step = -1

    def training_step(self, *args, **kwargs):
        if not self._cpu_lm_head:
            return super().training_step(*args, **kwargs)
        with cpu_lm_head(self._entropy_bonus_enabled):  # the reference pass, the loss forward and the backward
            return super().training_step(*args, **kwargs)

    def _generate_single_turn(self, *args, **kwargs):
        if self.use_vllm:
            return super()._generate_single_turn(*args, **kwargs)
        with fast_sampling() if self._fast_sampling else nullcontext(), self._sampling_model():
            return super()._generate_single_turn(*args, **kwargs)

    @contextmanager
    def _sampling_model(self) -> Iterator[None]:
        """TRL samples from `self.model_wrapped`: point it at the merged copy, synced to this step, for one call."""
        if self._merge_layers is None:
            yield
            return
        if self._merged_model is None:
            self._merged_model = merged_copy(self.accelerator.unwrap_model(self.model))
        if self._merged_at_step != self.state.global_step:
            sync_merged(self._merged_model, self._merge_layers)
            self._merged_at_step = self.state.global_step
        training_model = self.model_wrapped
        self.model_wrapped = self._merged_model
        try:
            yield
        finally:
            self.model_wrapped = training_model
