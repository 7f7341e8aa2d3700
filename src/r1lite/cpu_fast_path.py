"""The trainer r1lite uses on a CPU: the same GRPO loss and sampling distribution as TRL's, in far less time.

``CPUFastGRPOTrainer`` (a TimedGRPOTrainer, so it logs time/<phase>) turns on seven parts, each measured on
its own in docs/speed.md:

- ``merged_generation``: completions are sampled from a copy of the model with the LoRA adapter merged into
  its weights, refreshed the first time each optimizer step generates. Unmerged, every adapted projection
  runs two more small matmuls and a few more ops per generated token, and on a CPU per-op overhead
  dominates decoding. The copy costs one more model's worth of memory;
- ``fast_sampling``: tokens are drawn by inverse CDF instead of PyTorch's CPU multinomial;
- ``cpu_lm_head``: the completions' log-probabilities come from ``CPULogProbs`` instead of TRL's fused LM
  head, which on a CPU scores every position;
- ``grouped_attention``: r1lite.attention's grouped formula, in sampling and in the loss;
- ``shared_prompt``: the log-prob passes and the loss forward run each prompt once for the group of completions
  that share it, whose positions then attend to its keys and values (``r1lite.attention.PromptKV``), instead of
  once per completion: the same values, in fewer FLOPs wherever the prompt is a large part of each row (a
  one-shot prompt is two thirds of it). Needs the grouped attention, and non-reentrant checkpointing if any;
- ``fused_lora``: in the loss forward and the backward (the reference pass runs without the adapter), each LoRA
  layer adds its adapter's product into the base layer's output in one ``addmm`` (its scaling as addmm's
  alpha) instead of a matmul, a scaling and an addition over the whole output: two fewer elementwise passes per
  layer forward, one fewer in its backward, the same values up to rounding. fp32 only (``FusedLoRA``);
- ``slot_decoding``: the merged copy samples through r1lite.engine's decoding loop (the one eval uses) instead
  of ``generate``: keys written in place rather than concatenated per token, the prompt prefilled once for
  all its completions, and finished completions leaving the batch. Same distribution (temperature, then
  top-p); where TRL is set to sample with anything else (top-k, min-p, a repetition penalty, extra generation
  kwargs, a cache implementation), TRL's ``generate`` samples.

On a GPU, or with ``cpu_fast_path: false``, r1lite trains with TRL's own GRPOTrainer instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial

import torch
from torch import nn

from r1lite.attention import GROUPED_ATTENTION, PromptKV, use_grouped_attention
from r1lite.callbacks import ReleaseFreeMemory
from r1lite.engine import decode, masked_attention
from r1lite.host_memory import release_free_memory
from r1lite.models import lora_layers, merged_copy, refresh_merged
from r1lite.timing import TimedGRPOTrainer
from r1lite.trl_compat import cpu_lm_head, trl_log_probs_function

logger = logging.getLogger(__name__)

# TRL's fused LM head turns hidden states into per-token log-probabilities without materialising the logits. Where
# it has no Triton kernel, i.e. on every CPU, it (a) scores every position, prompt and padding included, and (b) folds
# each tile through a dozen fp32 elementwise passes, recomputing the tile in the backward. For the embedded model
# (vocabulary 49,152) and a GRPO batch of 8 x 290 tokens, TRL's forward + backward took 2.8 s on this CPU; projecting
# only the ~1,500 scored positions, in chunks, with torch's own logsumexp took 0.9 s for the same values.
CPU_LM_HEAD_TOKENS = 512  # positions per chunk: 512 x 49,152 fp32 logits is 100 MB, kept for the backward

FAST_PATH_PARTS = (
    "merged_generation",
    "fast_sampling",
    "cpu_lm_head",
    "grouped_attention",
    "fused_lora",
    "slot_decoding",
    "shared_prompt",
)


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
        self.calls = 0  # how many times it scored: tests check that the fast path engaged

    def apply(
        self,
        hidden,
        weight,
        bias,
        targets,
        temperature,
        chunk_size,
        softcap=None,
        logit_scale=1.0,
        outputs=("log_probs",),
    ):
        if softcap is not None or set(outputs) - {"log_probs", "entropy"}:
            return self.trl_function.apply(
                hidden, weight, bias, targets, temperature, chunk_size, softcap, logit_scale, outputs
            )
        self.calls += 1
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


class InverseCDFSampler:
    """torch.multinomial for one draw per row of CPU probabilities, by inverse CDF: the same distribution, from a
    cumulative sum and one uniform number per row. PyTorch's CPU multinomial draws one exponential variate per
    vocabulary entry: 6 ms per decoding step for 8 rows of 49,152 words, 1.2 s of a GRPO step's 8 s of sampling."""

    def __init__(self, original):
        self.original = original
        self.calls = 0

    def __call__(self, input, num_samples, replacement=False, *, generator=None, out=None):
        if num_samples != 1 or input.dim() != 2 or input.device.type != "cpu" or out is not None:
            return self.original(input, num_samples, replacement, generator=generator, out=out)
        self.calls += 1
        cdf = input.float().cumsum(-1)
        u = torch.rand(input.shape[0], 1, generator=generator) * cdf[:, -1:]
        # right=True: the first word whose cumulative mass exceeds u, never one with probability 0.
        return torch.searchsorted(cdf, u, right=True).clamp_(max=input.shape[-1] - 1)


@contextmanager
def fast_sampling(sampler: InverseCDFSampler | None = None) -> Iterator[InverseCDFSampler]:
    """Inside this block, one-draw torch.multinomial calls on CPU use the inverse CDF (transformers samples with it)."""
    original = torch.multinomial
    sampler = sampler or InverseCDFSampler(original)
    torch.multinomial = sampler
    try:
        yield sampler
    finally:
        torch.multinomial = original


class FusedLoRA:
    """PEFT's LoRA Linear forward, for layers with one plain active adapter (no dropout, bias or variant such as
    DoRA, one dtype, no autocast), with the adapter's product added into the base layer's output by ``addmm``.
    Anything else goes to PEFT's own forward. ``installed()`` puts it on `layers` for the length of a block."""

    def __init__(self, layers):
        self.layers = list(layers)
        self.calls = 0  # fused forwards run: tests check that the part engaged

    def forward(self, layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        name = None if args or kwargs else _plain_adapter(layer, x)
        if name is None:
            return type(layer).forward(layer, x, *args, **kwargs)
        self.calls += 1
        result = layer.base_layer(x)
        down = layer.lora_A[name](x)
        out = torch.addmm(
            result.reshape(-1, result.shape[-1]),
            down.reshape(-1, down.shape[-1]),
            layer.lora_B[name].weight.t(),
            alpha=layer.scaling[name],
        )
        return out.view(result.shape)

    @contextmanager
    def installed(self) -> Iterator[None]:
        # An instance attribute: nn.Module.__call__ looks `forward` up on the instance first. Gradient
        # checkpointing's replay runs inside the same block (the backward), so it replays the same operations.
        for layer in self.layers:
            layer.forward = partial(self.forward, layer)
        try:
            yield
        finally:
            for layer in self.layers:
                vars(layer).pop("forward", None)


def _plain_adapter(layer, x: torch.Tensor) -> str | None:
    """The one active adapter of a PEFT LoRA layer if it is plain LoRA on enabled, unmerged weights, with no dropout,
    no bias on B, no variant such as DoRA, the dtype of `x` and the base weight throughout, and no autocast."""
    adapters = [a for a in layer.active_adapters if a in layer.lora_A]
    if layer.disable_adapters or layer.merged or len(adapters) != 1:
        return None
    name = adapters[0]
    lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
    plain = (
        name not in layer.lora_variant
        and isinstance(layer.lora_dropout[name], nn.Identity)
        and lora_b.bias is None
        and x.dtype == layer.base_layer.weight.dtype == lora_a.weight.dtype == lora_b.weight.dtype
        and not torch.is_autocast_enabled(x.device.type)
    )
    return name if plain else None


class CPUFastGRPOTrainer(TimedGRPOTrainer):
    """GRPO on a CPU with the fast path's parts (module docstring); ``parts`` picks a subset for measurements."""

    def __init__(self, *args, parts: tuple[str, ...] = FAST_PATH_PARTS, **kwargs):
        unknown = set(parts) - set(FAST_PATH_PARTS)
        if unknown:
            raise ValueError(f"unknown fast-path parts {sorted(unknown)}; known: {', '.join(FAST_PATH_PARTS)}")
        super().__init__(*args, **kwargs)
        self.parts = tuple(parts)
        model = self.accelerator.unwrap_model(self.model)
        if "grouped_attention" in parts:
            use_grouped_attention(model)
        layers = lora_layers(model)
        self.fused_lora = FusedLoRA((layers or {}).values())
        self.merge_layers = layers if "merged_generation" in parts else None
        if "merged_generation" in parts and self.merge_layers is None:
            logger.info("no LoRA adapter on linear layers to merge: sampling from the training model")
        self.merged_model: torch.nn.Module | None = None
        self.merged_at_step = -1
        self.merge_refreshes = 0
        self.sampler = InverseCDFSampler(torch.multinomial)
        self.slot_decodes = 0  # how many batches the engine sampled: tests check that it engaged
        self.shared_prompt_passes = 0  # how many passes ran each prompt once: likewise
        self.memory_releases = 0  # how many times freed memory went back to the system before a backward
        self.add_callback(ReleaseFreeMemory())  # and after each optimizer step
        self.log_probs = CPULogProbs(trl_log_probs_function(), self.entropy_bonus_enabled)

    def generation_context(self):
        stack = ExitStack()
        stack.enter_context(super().generation_context())
        if "fast_sampling" in self.parts:
            stack.enter_context(fast_sampling(self.sampler))
        return stack

    def compute_loss(self, *args, **kwargs):
        loss = super().compute_loss(*args, **kwargs)
        # The step's peak comes in the backward. The heap's free blocks (sampling's and the loss forward's
        # temporaries) go back to the system just before it, and again after the optimizer step (the callback):
        # every page handed back is faulted in again later (r1lite.host_memory), so nowhere else. Once per
        # micro-batch, so once per step in the CPU recipes.
        self.memory_releases += 1
        release_free_memory()
        return loss

    def training_step_context(self):
        stack = ExitStack()
        stack.enter_context(super().training_step_context())
        if "cpu_lm_head" in self.parts:  # the reference pass, the loss forward and the backward
            stack.enter_context(cpu_lm_head(self.log_probs))
        if "fused_lora" in self.parts:
            stack.enter_context(self.fused_lora.installed())
        return stack

    def sampling_model(self) -> torch.nn.Module | None:
        """The merged copy, synced to this step's adapter."""
        if self.merge_layers is None:
            return None
        if self.merged_model is None:
            self.merged_model = merged_copy(self.accelerator.unwrap_model(self.model))
            use_grouped_attention(self.merged_model)  # it only generates
        if self.merged_at_step != self.state.global_step:
            refresh_merged(self.merged_model, self.merge_layers)
            self.merged_at_step = self.state.global_step
            self.merge_refreshes += 1
        return self.merged_model

    def _engine_samples_alike(self) -> bool:
        """Whether TRL's sampling settings are all r1lite.engine applies: temperature and top-p."""
        args = self.args
        return (
            self.temperature > 0
            and not self.top_k
            and not self.min_p
            and self.repetition_penalty in (None, 1.0)
            and not args.generation_kwargs
            and args.cache_implementation is None
            and not getattr(self, "use_transformers_continuous_batching", False)
        )

    def sample(self, model, prompt_ids):
        """The merged copy's completions from r1lite.engine.decode (``slot_decoding``); None otherwise."""
        if "slot_decoding" not in self.parts or model is None or not self._engine_samples_alike():
            return None
        # TRL's sampler repeats each prompt for its completions, consecutively: prefill each once.
        n = _run_length(prompt_ids)
        self.slot_decodes += 1
        with torch.no_grad(), masked_attention(model):
            return decode(
                model,
                prompt_ids[::n],
                num_generations=n,
                temperature=self.temperature,
                top_p=self.top_p,
                max_completion_length=self.max_completion_length,
                eos=list(self.eos_token_ids),
                slots=len(prompt_ids),
            )

    def _shares_prompts(self, model) -> bool:
        """Whether the passes can run each prompt once: the grouped attention (it takes the prompt's keys), and no
        reentrant checkpointing (its replay would not send the gradient back to the prompt's pass)."""
        if "shared_prompt" not in self.parts:
            return False
        if self.accelerator.unwrap_model(model).config._attn_implementation != GROUPED_ATTENTION:
            return False
        checkpointing = self.args.gradient_checkpointing_kwargs or {"use_reentrant": False}
        return not (self.args.gradient_checkpointing and checkpointing.get("use_reentrant", True))

    def score(self, model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy):
        """The completions' log-probabilities with each prompt run once for its group (``shared_prompt``)."""
        prompt_width = input_ids.shape[1] - logits_to_keep
        if prompt_width < 2 or not self._shares_prompts(model):
            return None
        batch_size = batch_size or len(input_ids)
        chunks = [slice(start, start + batch_size) for start in range(0, len(input_ids), batch_size)]
        prompts = torch.cat([input_ids[:, :prompt_width], attention_mask[:, :prompt_width]], 1).tolist()
        repeats = [_run_length(prompts[c]) for c in chunks]
        if min(repeats) < 2:
            return None
        self.shared_prompt_passes += 1
        logps, entropies = [], []
        for chunk, n in zip(chunks, repeats, strict=True):
            ids, mask = input_ids[chunk], attention_mask[chunk]
            with self.accelerator.autocast():
                chunk_logps, chunk_entropy = _score_with_shared_prompt(model, ids, mask, prompt_width, n)
            logps.append(chunk_logps[:, -logits_to_keep:])
            if compute_entropy:
                entropies.append(chunk_entropy[:, -logits_to_keep:])
        return torch.cat(logps), torch.cat(entropies) if compute_entropy else None


def _score_with_shared_prompt(model, ids, mask, prompt_width: int, repeats: int):
    """Per-token log-probabilities and entropies of `ids` (TRL's fused LM head) from two passes: the prompts but
    their last token, one row per group of `repeats`, then every row from the last prompt token on, attending to
    the first pass's keys and values. Positions are those of the one-pass forward (0, 1, ... with padding)."""
    head = prompt_width - 1  # the last prompt token stays in the second pass: it predicts the first completion token
    kv = PromptKV(mask[::repeats, :head] == 0, repeats)
    model(
        input_ids=ids[::repeats, :head],
        attention_mask=mask[::repeats, :head],
        use_cache=False,
        logits_to_keep=1,
        record_prompt=kv,
    )
    tail_ids, tail_mask = ids[:, head:], mask[:, head:]
    labels = tail_ids.masked_fill(tail_mask == 0, -100)
    labels[:, 0] = -100  # what precedes the first completion token is not scored
    positions = torch.arange(head, ids.shape[1], device=ids.device).expand(len(ids), -1)
    outputs = model(
        input_ids=tail_ids,
        attention_mask=tail_mask,
        position_ids=positions,
        labels=labels,
        fused_lm_head=True,
        prompt_kv=kv,
    )
    return outputs.log_probs, outputs.entropy


def _run_length(items: list) -> int:
    """The length r of the runs `items` is made of (items[i] == items[i - i % r] for every i), the longest such; 1
    where the runs differ in length."""
    run = 1
    while run < len(items) and items[run] == items[0]:
        run += 1
    if len(items) % run or any(items[i] != items[i - i % run] for i in range(len(items))):
        return 1
    return run
