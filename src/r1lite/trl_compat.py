"""Every use of TRL's private names, fenced in one module and checked against the TRL release it was written for.

TRL renames exactly these internals from one minor release to the next. Kept here, a rename breaks in one
place, loudly (`check_trl_version` refuses any other release), instead of a patch silently ceasing to apply.
The rest of r1lite uses TRL's public API only; the trainer used on a GPU is TRL's own GRPOTrainer.

What is reached into, and why:
- ``HookedGRPOTrainer`` wraps four private steps of ``GRPOTrainer`` (sampling, rewards, log-prob passes, the
  rollout) with public-named hooks that r1lite's CPU trainer and phase timing override, and appends to
  ``_metrics`` (the per-step metrics TRL averages and logs);
- ``cpu_lm_head`` swaps ``trl.trainer.utils._ChunkedLogProbFunction`` and ``_use_triton`` for the CPU log-prob
  path (r1lite.cpu_fast_path.CPULogProbs);
- ``push_dense_weights_to_vllm`` replaces ``VLLMGeneration._iter_named_params`` so that a LoRA model on a 4-bit
  base sends vLLM dense weights instead of packed 4-bit ones (r1lite.vllm_sync), and ``dense_vllm_engine``
  hides bitsandbytes from ``trl.generation.vllm_generation`` while the trainer starts its colocated engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
import trl
from trl import GRPOTrainer

from r1lite.errors import CompatError

TRL_RELEASE = (1, 16)  # major, minor: the release whose internals this module was read against


def check_trl_version(version: str | None = None) -> None:
    """Refuse a TRL release other than the one these internals were read from."""
    version = version or trl.__version__
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError as exc:
        raise CompatError(f"cannot read the TRL version '{version}'") from exc
    if major_minor != TRL_RELEASE:
        wanted = ".".join(map(str, TRL_RELEASE))
        raise CompatError(
            f"r1lite's CPU trainer and vLLM weight sync were written for TRL {wanted}.x, and TRL {version} is "
            f"installed: pip install 'trl=={wanted}.*', or train with TRL's own trainer (cpu_fast_path: false)"
        )


class HookedGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` with public hook points around its private steps; subclasses override the hooks only.

    Hooks (each returns a context manager that the step runs inside):
    - ``generation_context()``: sampling with transformers (not with vLLM);
    - ``rewards_context()``: scoring a batch with every reward function;
    - ``logprobs_context()``: the no-grad log-probability passes (old policy, reference);
    - ``rollout_context()``: a whole rollout (generation, rewards, log-probs, advantages);
    - ``training_step_context()``: one micro-step (rollout, loss forward and backward).
    ``sampling_model()`` may return a model to sample from instead of the training model, and
    ``sample(model, prompt_ids)`` may draw the completions itself (None: TRL's ``generate`` draws them), and
    ``score(...)`` may compute the completions' log-probabilities itself (None: TRL's forward computes them).
    """

    def __init__(self, *args, **kwargs):
        check_trl_version()
        super().__init__(*args, **kwargs)

    # ---- hooks: no-ops here
    def generation_context(self) -> AbstractContextManager:
        return nullcontext()

    def rewards_context(self) -> AbstractContextManager:
        return nullcontext()

    def logprobs_context(self) -> AbstractContextManager:
        return nullcontext()

    def rollout_context(self) -> AbstractContextManager:
        return nullcontext()

    def training_step_context(self) -> AbstractContextManager:
        return nullcontext()

    def sampling_model(self) -> torch.nn.Module | None:
        return None

    def sample(self, model: torch.nn.Module | None, prompt_ids: list[list[int]]) -> list[list[int]] | None:
        """Completion token ids (up to and including EOS) for each of `prompt_ids`, drawn from `model` (the
        `sampling_model()`, None where there is none) as TRL's sampling settings say; None to let TRL sample.
        Called inside ``generation_context()`` for text-only prompts when not sampling with vLLM."""
        return None

    def score(
        self, model, input_ids, attention_mask, logits_to_keep: int, batch_size: int | None, compute_entropy: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Per-token log-probabilities of the last `logits_to_keep` tokens of each row under `model` (TRL's fused
        LM head, at TRL's temperature), and their entropies where `compute_entropy`; None to let TRL compute them.
        Called for every log-prob pass and the loss forward of text-only batches (no MoE auxiliary loss)."""
        return None

    # ---- what the hooks may read or write
    @property
    def entropy_bonus_enabled(self) -> bool:
        return bool(self._entropy_bonus_enabled)

    def record_metric(self, name: str, value: float) -> None:
        """Add a value to this step's training metrics; TRL averages each over the logged steps."""
        self._metrics["train"][name].append(value)

    # ---- TRL's private steps, wrapped
    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, *args, **kwargs):
        if self.use_vllm:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, *args, **kwargs)
        with self.generation_context():
            model = self.sampling_model()
            if images is None and not multimodal_fields:
                completions = self.sample(model, prompt_ids)
                if completions is not None:
                    return completions, None  # TRL's own generate returns no log-probabilities either
            with self._sampling_from(model):
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, *args, **kwargs)

    def _calculate_rewards(self, *args, **kwargs):
        with self.rewards_context():
            return super()._calculate_rewards(*args, **kwargs)

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **multimodal,
    ):
        # The loss forward is part of the training step; the no-grad passes are log-prob passes.
        with nullcontext() if torch.is_grad_enabled() else self.logprobs_context():
            if not compute_aux_loss and all(value is None for value in multimodal.values()):
                scored = self.score(model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy)
                if scored is not None:
                    return (*scored, None)
            return super()._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size,
                compute_entropy=compute_entropy,
                compute_aux_loss=compute_aux_loss,
                **multimodal,
            )

    def _prepare_inputs(self, *args, **kwargs):
        with self.rollout_context():
            return super()._prepare_inputs(*args, **kwargs)

    def training_step(self, *args, **kwargs):
        with self.training_step_context():
            return super().training_step(*args, **kwargs)

    @contextmanager
    def _sampling_from(self, model: torch.nn.Module | None) -> Iterator[None]:
        """TRL samples from `self.model_wrapped`: point it at `model` for one call."""
        if model is None:
            yield
            return
        training_model, self.model_wrapped = self.model_wrapped, model
        try:
            yield
        finally:
            self.model_wrapped = training_model


@contextmanager
def cpu_lm_head(log_probs_function) -> Iterator[None]:
    """Inside this block, models with TRL's fused LM head score only the labelled positions, with
    `log_probs_function` (an object with TRL's ``ChunkedLogProbFunction.apply`` signature)."""
    import trl.trainer.utils as trl_utils

    saved = trl_utils._ChunkedLogProbFunction, trl_utils._use_triton
    # In trl.trainer.utils, `_use_triton` only decides whether the unlabelled positions are dropped before scoring
    # (kept elsewhere so that accelerators that compile see one tile shape); a CPU compiles nothing.
    trl_utils._ChunkedLogProbFunction = log_probs_function
    trl_utils._use_triton = lambda device: True
    try:
        yield
    finally:
        trl_utils._ChunkedLogProbFunction, trl_utils._use_triton = saved


def trl_log_probs_function():
    """TRL's own fused log-prob function (what `cpu_lm_head` replaces), for the cases it still handles."""
    import trl.trainer.utils as trl_utils

    return trl_utils._ChunkedLogProbFunction


def push_dense_weights_to_vllm(trainer: GRPOTrainer) -> bool:
    """Make the trainer push dense weights (base + LoRA delta, dequantized where 4-bit) to vLLM at each sync,
    without merging into the training model. Returns False (TRL's own sync stays) where that does not apply:
    no vLLM, a model that is not PEFT LoRA, or FSDP.

    TRL's sync merges the adapter into the 4-bit layers in place and pushes their packed uint8 data, which vLLM
    rejects (TRL issues #4973, #3654), and the merge/unmerge round trip re-quantizes the frozen base every step.
    Both colocate and server mode read the weights through ``VLLMGeneration._iter_named_params``."""
    from r1lite.vllm_sync import dense_named_weights, needs_dense_sync

    check_trl_version()
    generation = getattr(trainer, "vllm_generation", None)
    if not trainer.use_vllm or generation is None or generation._dist.is_fsdp or not needs_dense_sync(generation.model):
        return False
    model = generation.model

    def iter_named_params():
        # A no-op except under ZeRO-3, where it gathers the shards; every process iterates (a collective).
        with generation._dist.gather_params(list(model.parameters())):
            yield from dense_named_weights(model, rename=generation._fix_param_name_to_vllm)

    generation._iter_named_params = iter_named_params
    generation._weight_metadata = None  # server mode: describe the dense shapes and dtypes, not TRL's
    return True


@contextmanager
def dense_vllm_engine() -> Iterator[None]:
    """While a GRPOTrainer is built: start a colocated vLLM engine on the dense checkpoint even when the training
    model is 4-bit. TRL would start it with bitsandbytes quantization, into which dense weights cannot be loaded
    (and which vLLM 0.28+ only has through a plugin). Costs vLLM a 16-bit copy of the weights."""
    import trl.generation.vllm_generation as vllm_generation

    check_trl_version()
    saved = vllm_generation.is_bitsandbytes_available
    vllm_generation.is_bitsandbytes_available = lambda: False  # what TRL consults to pick quantization="bitsandbytes"
    try:
        yield
    finally:
        vllm_generation.is_bitsandbytes_available = saved
