"""Batched decoding: the one generation loop behind eval, chat, rewards check and periodic evaluation.

Left-padded batches, longest prompts first so each batch pads little; a reply leaves its batch as soon
as it ends (`decode`), and each prompt is encoded once however many replies it gets. Every tensor the
loop makes lives on the model's device. A lone reply can be streamed: `generate_replies(..., streamer=...)`
feeds a transformers streamer (`TextStreamer`, `TextIteratorStreamer` or a subclass) the way `model.generate`
does, from this same loop, so a streamed reply is token for token the reply the call returns. Where vLLM is
installed and a GPU present, `vllm_generate_replies` gives the same replies from vLLM (`pick_backend` chooses).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache
from transformers.generation.logits_process import TopPLogitsWarper

from r1lite.errors import EvalError

logger = logging.getLogger(__name__)

# Sequences generated together on a CPU. 32 keeps `r1lite eval --baseline` on 64 GSM8K questions (256 new tokens) at a
# peak of 3.56 GB resident against 5.25 GB at 64, in the same time (132 s vs 128 s; the KV cache of a batch is most
# of the memory). On 200 questions 64 was 8% faster: 1.49 q/s against 1.38 (benchmarks/eval_throughput.py). On a GPU
# the batch is sized to the free memory (`auto_batch_size`).
CPU_BATCH_SIZE = 32
MAX_GPU_BATCH_SIZE = 512


@dataclass(frozen=True)
class Reply:
    text: str
    num_tokens: int  # generated tokens, the end-of-sequence token included
    clipped: bool  # cut by max_completion_length before an end-of-sequence token


def check_generation_settings(
    num_generations: int, temperature: float, max_completion_length: int, batch_size: int | None
) -> None:
    if num_generations < 1:
        raise EvalError(f"num_generations must be at least 1, got {num_generations}")
    if temperature < 0:
        raise EvalError(f"temperature must be >= 0, got {temperature}")
    if num_generations > 1 and temperature == 0:
        raise EvalError("num_generations > 1 needs a temperature > 0: greedy decoding would repeat one reply")
    if max_completion_length < 1 or (batch_size is not None and batch_size < 1):
        raise EvalError(
            f"max_completion_length and batch_size must be positive, got {max_completion_length} and {batch_size}"
        )


def _encode(tokenizer, prompt: list[dict] | str) -> list[int]:
    if isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    encoded = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(encoded["input_ids"])


def eos_ids(model, tokenizer) -> list[int]:
    configured = model.generation_config.eos_token_id
    ids = set(configured) if isinstance(configured, list) else {configured}
    return sorted(i for i in ids | {tokenizer.eos_token_id} if i is not None)


def _pick(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Next token per row: argmax, or a sample at `temperature` within the top-p nucleus (no top-k and no
    repetition penalty, as in training; a model's own generation_config is not consulted)."""
    if temperature == 0:
        return logits.argmax(-1)
    scores = logits.float() / temperature
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.multinomial(torch.softmax(scores, dim=-1), 1).squeeze(1)


def _forward(model, tokens, mask, positions, cache) -> torch.Tensor:
    # use_cache explicitly: training with gradient checkpointing switches the model's default off.
    out = model(
        input_ids=tokens,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1]  # (B, V)


def _same_device(device: torch.device, **tensors: torch.Tensor) -> None:
    """Indexing a tensor on one device with an index on another fails on CUDA only; check it on every device."""
    wrong = {name: str(t.device) for name, t in tensors.items() if t.device != device}
    if wrong:
        raise RuntimeError(f"decode: tensors {wrong} are not on the model's device {device}")


def decode(
    model,
    input_ids,
    attention_mask,
    *,
    num_generations: int,
    temperature: float,
    top_p: float,
    max_completion_length: int,
    eos: list[int],
    on_token: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
    """Generated tokens (up to and including EOS) for each row of a left-padded batch, `num_generations`
    consecutive rows per prompt. `on_token(row, token)` is called for each token as soon as it is picked.

    Unlike `generate`, a row leaves the batch as soon as it ends instead of riding along until the
    longest reply is done.
    """
    device = input_ids.device
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): left padding shifts positions
    cache = DynamicCache(config=model.config)
    logits = _forward(model, input_ids, attention_mask, positions, cache)
    if num_generations > 1:
        cache.batch_repeat_interleave(num_generations)
        logits, attention_mask, positions = (
            t.repeat_interleave(num_generations, dim=0) for t in (logits, attention_mask, positions)
        )
    rows = torch.arange(logits.shape[0], device=device)  # which output row each batch row is
    position = positions[:, -1:]  # (B, 1)
    eos_tensor = torch.tensor(eos, device=device)
    out: list[list[int]] = [[] for _ in range(len(rows))]
    for step in range(max_completion_length):
        tokens = _pick(logits, temperature, top_p)  # (B,)
        for row, token in zip(rows.tolist(), tokens.tolist(), strict=True):
            out[row].append(token)
            if on_token is not None:
                on_token(row, token)
        alive = ~torch.isin(tokens, eos_tensor)
        if step == max_completion_length - 1 or not alive.any():
            break
        if not alive.all():
            keep = alive.nonzero().squeeze(1)
            _same_device(device, rows=rows, keep=keep, attention_mask=attention_mask, position=position)
            cache.batch_select_indices(keep)
            rows, tokens, attention_mask, position = rows[keep], tokens[keep], attention_mask[keep], position[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)
        position = position + 1
        logits = _forward(model, tokens[:, None], attention_mask, position, cache)
    return out


def auto_batch_size(model, max_tokens: int) -> int:
    """Sequences per batch: 64 on a CPU; on a GPU, as many as half the free memory holds in KV cache at `max_tokens`
    tokens each (the other half for weights' activations and logits), at most 512."""
    if model.device.type != "cuda":
        return CPU_BATCH_SIZE
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    bytes_per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * torch.finfo(model.dtype).bits // 8
    free, _ = torch.cuda.mem_get_info(model.device)
    return int(max(1, min(MAX_GPU_BATCH_SIZE, free // 2 // (bytes_per_token * max_tokens))))


def generate_replies(
    model,
    tokenizer,
    prompts: Sequence[list[dict] | str],
    *,
    num_generations: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_completion_length: int = 512,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
    streamer=None,
) -> list[list[Reply]]:
    """`num_generations` replies per prompt; a batch holds `batch_size` sequences (batch_size // num_generations
    prompts). The RNG is forked: sampling here leaves the random stream of a training run that calls it untouched.

    `streamer` (one prompt, one reply): a transformers streamer fed as `model.generate` feeds one: the prompt's
    tokens first (skip them with `skip_prompt=True`), then each generated token the moment it is picked, the
    end-of-sequence token included, then `end()` once the reply is complete (not when an exception cuts it short).
    Sampling is unchanged by it: the same loop, seed and end-of-sequence handling as without one."""
    check_generation_settings(num_generations, temperature, max_completion_length, batch_size)
    if streamer is not None and (len(prompts) != 1 or num_generations != 1):
        raise EvalError(f"a streamer follows one reply: got {len(prompts)} prompts x {num_generations} replies")
    encoded = [_encode(tokenizer, prompt) for prompt in prompts]
    # Longest first: similar lengths share a batch (little padding), and memory peaks at the start.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    longest = max((len(e) for e in encoded), default=0)
    batch_size = batch_size or auto_batch_size(model, longest + max_completion_length)
    per_batch = max(1, batch_size // num_generations)
    eos = eos_ids(model, tokenizer)
    replies: list[list[Reply]] = [[] for _ in encoded]
    bar = tqdm(total=len(encoded), desc="generate", unit="q", disable=not progress, dynamic_ncols=True)
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []), torch.inference_mode():
        torch.manual_seed(seed)
        for start in range(0, len(order), per_batch):
            ids = order[start : start + per_batch]
            batch = tokenizer.pad(
                {"input_ids": [encoded[i] for i in ids]}, padding_side="left", return_tensors="pt"
            ).to(model.device)
            if streamer is not None:
                streamer.put(torch.tensor([encoded[ids[0]]]))
            generated = decode(
                model,
                batch["input_ids"],
                batch["attention_mask"],
                num_generations=num_generations,
                temperature=temperature,
                top_p=top_p,
                max_completion_length=max_completion_length,
                eos=eos,
                on_token=None if streamer is None else lambda _row, token: streamer.put(torch.tensor([token])),
            )
            for row, tokens in enumerate(generated):
                clipped = tokens[-1] not in eos
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                replies[ids[row // num_generations]].append(Reply(text, len(tokens), clipped))
            bar.update(len(ids))
    bar.close()
    if streamer is not None:
        streamer.end()
    return replies


# ----------------------------------------------------------------------------------------------- vLLM


def vllm_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


def pick_backend(backend: str) -> str:
    """'hf' or 'vllm' for a requested backend; 'auto' takes vLLM where it can run."""
    if backend == "vllm" and not vllm_available():
        raise EvalError("backend vllm needs a CUDA GPU and vLLM: pip install 'r1lite[gpu]' (or --backend hf)")
    if backend == "auto":
        return "vllm" if vllm_available() else "hf"
    return backend


def vllm_generate_replies(
    model_path: str,
    adapter: str | None,
    tokenizer,
    prompts: Sequence[list[dict] | str],
    *,
    num_generations: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_completion_length: int = 512,
    seed: int = 0,
    gpu_memory_utilization: float = 0.85,
    lora_rank: int = 64,
) -> list[list[Reply]]:
    """The same replies as `generate_replies`, from vLLM: continuous batching fills the GPU by itself."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    check_generation_settings(num_generations, temperature, max_completion_length, None)
    llm = LLM(
        model=model_path,
        tokenizer=model_path,
        seed=seed,
        enable_lora=adapter is not None,
        max_lora_rank=lora_rank,
        gpu_memory_utilization=gpu_memory_utilization,
    )
    params = SamplingParams(
        n=num_generations, temperature=temperature, top_p=top_p, max_tokens=max_completion_length, seed=seed
    )
    lora = LoRARequest("adapter", 1, adapter) if adapter else None
    token_prompts = [{"prompt_token_ids": _encode(tokenizer, prompt)} for prompt in prompts]
    outputs = llm.generate(token_prompts, params, lora_request=lora)
    return [[Reply(o.text, len(o.token_ids), o.finish_reason == "length") for o in out.outputs] for out in outputs]
