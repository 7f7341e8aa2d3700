"""Batched decoding: the one generation loop behind eval, chat, rewards check and periodic evaluation.

Continuous batching (`decode`): a fixed number of sequences decode together, each in its own slot of a
cache written in place (`SlotCache`, no copy per token); a reply leaves as soon as it ends and the next
prompts take the freed slots, longest prompts first. The system prompt every prompt starts with is
prefilled once, and each prompt once however many replies it gets. Every tensor the loop makes lives on
the model's device. A lone reply can be streamed: `generate_replies(..., streamer=...)` feeds a transformers
streamer (`TextStreamer`, `TextIteratorStreamer` or a subclass) the way `model.generate` does, from this same
loop, so a streamed reply is token for token the reply the call returns. Where vLLM is installed and a GPU
present, `vllm_generate_replies` gives the same replies from vLLM (`pick_backend` chooses). On a CPU, plain
Llama-family models (the embedded SmolLM2, Qwen2.5) decode through a lean forward of their own
(`r1lite.decoder`), the same computation in fewer operations.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers.generation.logits_process import TopPLogitsWarper

from r1lite.decoder import LeanDecoder, can_pack, pack_weight, packed_linear
from r1lite.errors import EvalError

logger = logging.getLogger(__name__)

# Sequences decoding together on a CPU (the slots of `decode`). Where every forward is one compiled call
# (`LeanDecoder.compiles`: a plain Llama-family model in fp32), a decoding step's cost per row falls as its rows grow
# (AVX2, two cores, every layer and the LM head: 2.71 ms a row at 26 rows, 2.62 at 32, 2.44 at 64;
# benchmarks/step_rows.py), and fewer, larger steps and prefills leave less to the loop around them: 64 slots. The
# whole GSM8K test split decoded in 478.6 s at 64 slots and 529.1 s at 32, back to back, with the same replies.
# Fewer where 64 sequences' cache would pass CPU_CACHE_BYTES at the longest prompt plus the new tokens asked for (the
# embedded model in fp32 takes 45 KiB a token: 64 slots up to 256 new tokens after GSM8K's longest test prompt, 46
# at 512). Through transformers' forward (an unmerged adapter: the evaluation during training) 32, since the larger
# cache would raise training's peak memory. On a GPU the slots are sized to the free memory (`auto_batch_size`).
CPU_BATCH_SIZE = 32
COMPILED_CPU_BATCH_SIZE = 64
CPU_CACHE_BYTES = 3 << 29  # 1.5 GiB
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


# Linear layers' weights in a layout oneDNN multiplies from directly. torch.nn.functional.linear on a CPU lays each
# weight out anew at every call: laying them out once per decode call made the embedded model decode 1.37x faster
# at 1 sequence, 1.16x at 8 and 1.07x at 32 (bf16, benchmarks/packed_weights.py), with the same greedy tokens.
PACKED_DTYPES = (torch.bfloat16, torch.float32)


@contextmanager
def packed_linears(model, rows: int) -> Iterator[int]:
    """Inside this block, every plain `nn.Linear` of a CPU model multiplies by a copy of its weight laid out once
    for oneDNN (for `rows` rows at a time; any number works), made on entry and dropped on exit, so that a weight
    changed between two blocks (a refreshed sampling copy) is laid out afresh. Yields how many layers it packed:
    none on other devices, without oneDNN, for a dtype this CPU's oneDNN cannot lay out (`can_pack`: bf16 on an
    AVX2-only CPU), or where a layer's forward is already replaced (accelerate's hooks).
    Calls that need a gradient, or whose input dtype differs, take the plain path. Costs one more copy of the
    packed weights while it lasts."""
    layers = [
        m
        for m in model.modules()
        if type(m) is torch.nn.Linear
        and m.weight.device.type == "cpu"
        and m.weight.dtype in PACKED_DTYPES
        and can_pack(m.weight.dtype)
        and "forward" not in vars(m)
    ]
    packed = [pack_weight(layer.weight.detach(), rows) for layer in layers]
    for layer, weight in zip(layers, packed, strict=True):
        layer.forward = functools.partial(_packed_linear, layer, weight)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward


def _packed_linear(layer: torch.nn.Linear, packed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if x.dtype != layer.weight.dtype or (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad)):
        return torch.nn.functional.linear(x, layer.weight, layer.bias)  # the packed product has no backward
    return packed_linear(x, packed, layer.bias)


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


@contextmanager
def _decoding_forward(model, slots: int) -> Iterator[Callable]:
    """The forward a decode call runs: `LeanDecoder` where it applies (plain Llama-family models on a CPU),
    else transformers' forward with the linear layers laid out once (`packed_linears`)."""
    lean = LeanDecoder.for_model(model, slots)
    if lean is not None:
        yield lean
        return
    with packed_linears(model, slots):
        yield functools.partial(_forward, model)


def _same_device(device: torch.device, **tensors: torch.Tensor) -> None:
    """Indexing a tensor on one device with an index on another fails on CUDA only; check it on every device."""
    wrong = {name: str(t.device) for name, t in tensors.items() if t.device != device}
    if wrong:
        raise RuntimeError(f"decode: tensors {wrong} are not on the model's device {device}")


class SlotCache:
    """A key/value cache written in place: one slot per sequence, one column per token, at most `capacity` columns.

    Each layer's keys and values live in one (slots, kv_heads, width, head_dim) tensor, allocated at the first write
    (in whatever dtype the model computes). Before each forward, `aim` says where the new keys go: in a decoding
    step one column per slot (of every slot, or of the live ones where the forward writes the cache itself), each
    slot at its own column; in a prefill several columns of a few slots. Attention reads all `width` columns
    (r1lite's compiled forward: those up to each sequence's own), and the caller's mask hides every column not
    written for the sequence now in that slot (`valid`). Nothing is copied per token, where `DynamicCache`
    concatenates and so copies the whole cache at every token; a slot whose reply has ended takes the next prompt;
    a prefix common to every prompt is computed once and stays in the first `shared` columns of every slot (a
    forward that writes the cache itself reads them from slot 0 alone, once for all its rows). The width grows
    with the longest live sequence in steps of `WIDTH_STEP` columns (`reserve`); where attention reads all of it
    (torch's), it is trimmed back once the longest sequences have left (`trim`), so that attention does not read
    columns that no live sequence reaches.

    It answers the one call a decoder layer makes (`update`): the model is always given positions and a ready 4-D
    mask, so it never asks the cache for its length or mask sizes. A forward that writes the cache itself asks
    `written` instead."""

    WIDTH_STEP = 64

    def __init__(self, slots: int, capacity: int, device: torch.device, dtype: torch.dtype):
        self.capacity = capacity
        self.dtype = dtype  # of the masks: the model's activations
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.valid = torch.zeros(slots, 0, dtype=torch.bool, device=device)  # columns that hold a key
        self.shared = 0  # the first columns, the same in every slot and never written again
        self._target: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int] | None = None

    @property
    def slots(self) -> int:
        return self.valid.shape[0]

    @property
    def width(self) -> int:
        return self.valid.shape[1]

    def _resize(self, width: int) -> None:
        def resized(tensor: torch.Tensor, dim: int) -> torch.Tensor:
            if width <= tensor.shape[dim]:
                return tensor.narrow(dim, 0, width).contiguous()
            extra = list(tensor.shape)
            extra[dim] = width - tensor.shape[dim]
            return torch.cat([tensor, tensor.new_zeros(extra)], dim=dim)

        self._replace_each(lambda tensor: resized(tensor, 2))
        self.valid = resized(self.valid, 1)

    def _replace_each(self, copy: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Every layer's keys and values replaced by `copy` of them, one tensor at a time, each old one dropped as
        its copy is made: a list built whole held the old cache and the new one together (`r1lite eval` of the whole
        GSM8K test split at 64 slots peaked at 3.74 GB that way, 3.19-3.48 GB this way)."""
        for tensors in (self.keys, self.values):
            for i, tensor in enumerate(tensors):
                tensors[i] = copy(tensor)

    def _rounded(self, columns: int) -> int:
        return min(self.capacity, -(-columns // self.WIDTH_STEP) * self.WIDTH_STEP)

    def reserve(self, columns: int) -> None:
        """At least `columns` columns from here on."""
        if columns > self.capacity:
            raise RuntimeError(f"SlotCache: {columns} columns asked of a cache of {self.capacity}")
        if columns > self.width:
            self._resize(self._rounded(columns))

    def trim(self, columns: int) -> None:
        """No live sequence reaches past `columns`: drop the columns beyond, once two steps of width are free."""
        if self._rounded(columns) + 2 * self.WIDTH_STEP <= self.width:
            self._resize(self._rounded(columns) + self.WIDTH_STEP)

    def aim(self, columns: torch.Tensor, slots: torch.Tensor | None = None, real: torch.Tensor | None = None) -> None:
        """The next forward writes batch row i's new keys at `columns[i]` (a row of W columns) of slot `slots[i]`;
        `slots=None`: every slot, in order, and attention then reads the cache itself (no copy). A write to every
        slot is where each sequence ends, so the width is trimmed to the furthest of them first. `real` (like
        `columns`): the tokens that are not left padding, which alone a forward that writes the cache itself
        computes (no query attends to a padding column: `valid` leaves them out)."""
        end = int(columns.max()) + 1
        if slots is None:
            self.trim(end)
        self.reserve(end)
        rows = torch.arange(self.slots, device=columns.device) if slots is None else slots
        self._target = (rows[:, None], columns, slots, end, real)

    def written(
        self, layers: int, kv_heads: int, head_dim: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """For a forward that writes the cache itself (`r1lite.kernels.decode_layers`) instead of calling `update`:
        the slot and the column of each key the aimed forward writes, batch row by batch row, a token at a time (two
        (R,) int64 tensors), and which of the aimed tokens those are (a (B * W,) bool tensor; None: all of them);
        each of `layers` layers' (slots, kv_heads, width, head_dim) tensors allocated first."""
        rows, columns, _, _, real = self._target
        while len(self.keys) < layers:
            self._new_layer(kv_heads, head_dim, self.dtype, self.valid.device)
        slots, columns = rows.expand_as(columns).reshape(-1), columns.reshape(-1)
        if real is None:
            return slots.contiguous(), columns.contiguous(), None
        keep = real.reshape(-1)
        return slots[keep].contiguous(), columns[keep].contiguous(), keep

    def _new_layer(self, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        shape = (self.slots, kv_heads, self.width, head_dim)
        self.keys.append(torch.zeros(shape, dtype=dtype, device=device))
        self.values.append(torch.zeros(shape, dtype=dtype, device=device))

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        if layer_idx == len(self.keys):
            self._new_layer(key_states.shape[1], key_states.shape[3], key_states.dtype, key_states.device)
        rows, columns, slots, end, _ = self._target
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        # Indexed assignment: on a CPU scatter_ took 40x as long for the same write.
        keys[rows, :, columns] = key_states.transpose(1, 2)
        values[rows, :, columns] = value_states.transpose(1, 2)
        if slots is None:
            return keys, values
        return keys[slots, :, :end], values[slots, :, :end]

    def copy(self, source: int, targets: torch.Tensor, start: int, end: int) -> None:
        """Columns start..end-1 of slot `source`, keys and validity, into each of `targets` (not `source` itself)."""
        if len(targets) == 0:
            return
        for tensor in (*self.keys, *self.values):  # a clone: PyTorch refuses to write a tensor from a view of itself
            tensor[targets, :, start:end] = tensor[source, :, start:end].clone()
        self.valid[targets, start:end] = self.valid[source, start:end].clone()

    def keep(self, slots: torch.Tensor) -> None:
        """Only `slots` remain, renumbered from 0 in that order (one copy of what they hold)."""
        self._replace_each(lambda tensor: tensor[slots])
        self.valid = self.valid[slots]

    def mask(self, allowed: torch.Tensor) -> torch.Tensor:
        """The additive mask: 0 where `allowed`, the dtype's minimum elsewhere."""
        blocked = torch.full(allowed.shape, torch.finfo(self.dtype).min, dtype=self.dtype, device=allowed.device)
        return blocked.masked_fill_(allowed, 0)


# Once decoding, prompts wait until an eighth of the slots are free and enter together. On the embedded model a
# prefill cost ~100 ms plus ~1 ms per token: one prompt at a time, a third of `r1lite eval`'s time went to prefills
# of ~70 tokens (200 GSM8K questions, 32 slots); waiting costs the idle slots' share of each decoding step.
REFILL_FRACTION = 8

# Attention implementations that take a ready 4-D additive mask. A model set to another one (flash attention)
# decodes with SDPA, the same attention computed another way.
MASKED_ATTENTION = ("eager", "sdpa", "r1lite_grouped")


@contextmanager
def masked_attention(model) -> Iterator[None]:
    current = model.config._attn_implementation
    if current in MASKED_ATTENTION:
        yield
        return
    model.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        model.set_attn_implementation(current)


def _common_prefix(prompts: Sequence[list[int]]) -> int:
    """Tokens every prompt starts with, leaving each at least one of its own (the one its first reply token follows)."""
    shortest = min(prompts, key=len)
    length = 0
    while length < len(shortest) - 1 and all(p[length] == shortest[length] for p in prompts):
        length += 1
    return length


def decode(
    model,
    prompts: Sequence[list[int]],
    *,
    num_generations: int,
    temperature: float,
    top_p: float,
    max_completion_length: int,
    eos: list[int],
    slots: int,
    on_token: Callable[[int, int], None] | None = None,
    on_prompt_done: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """Generated tokens (up to and including EOS) of `num_generations` replies to each prompt (token ids); reply g
    to prompt p is row p * num_generations + g. `on_token(row, token)` is called for each token as soon as it is
    picked, and `on_prompt_done(p)` once every reply to prompt p has ended.

    Continuous batching over `slots` sequences (a `SlotCache`): prompts enter in the order given as soon as there
    are slots for all their replies, and a reply leaves the moment it ends (where `generate` keeps every row until
    the longest reply is done), its slot going to the next prompt. The prefix all prompts share (a system prompt)
    is computed once; each prompt computes only the rest, once for all its replies. Once no prompt is waiting and
    half the slots are idle, the cache shrinks to the live ones, so the last replies do not pay for empty slots.
    The forward is r1lite's lean one (`r1lite.decoder.LeanDecoder`) for plain Llama-family models on a CPU, and
    transformers' otherwise, its linear layers multiplying by weights laid out once for the call (`packed_linears`).
    """
    with _decoding_forward(model, slots) as forward:
        return _decode(
            model,
            forward,
            prompts,
            num_generations,
            temperature,
            top_p,
            max_completion_length,
            eos,
            slots,
            on_token,
            on_prompt_done,
        )


def _decode(
    model,
    forward,
    prompts,
    num_generations,
    temperature,
    top_p,
    max_completion_length,
    eos,
    slots,
    on_token,
    on_prompt_done,
) -> list[list[int]]:
    n = num_generations
    if slots < n:
        raise EvalError(f"{slots} slots cannot hold the {n} replies of one prompt")
    device = model.device
    out: list[list[int]] = [[] for _ in range(len(prompts) * n)]
    if not prompts:
        return out
    shared = _common_prefix(prompts)
    # The activations' dtype: that of the input embeddings, which 4-bit loading leaves unquantised.
    dtype = model.get_input_embeddings().weight.dtype
    cache = SlotCache(slots, max(len(p) for p in prompts) + max_completion_length, device, dtype)
    columns = torch.arange(cache.capacity, device=device)
    if shared:  # computed in slot 0, copied to every slot, and never overwritten
        ids = torch.tensor([prompts[0][:shared]], device=device)
        cache.aim(columns[None, :shared], slots=torch.zeros(1, dtype=torch.long, device=device))
        allowed = columns[None, :shared] <= columns[:shared, None]  # causal
        forward(ids, cache.mask(allowed[None, None]), columns[None, :shared], cache)
        cache.valid[0, :shared] = True
        cache.copy(0, torch.arange(1, slots, device=device), 0, shared)
        cache.shared = shared

    eos_tensor = torch.tensor(eos, device=device)
    rows = torch.full((slots,), -1, dtype=torch.long, device=device)  # the reply each slot decodes; -1: idle
    # Where each slot's next key goes in its slot. An idle slot still writes one (nothing reads it): the first
    # column after the shared prefix, which a prompt entering the slot later relies on.
    column = torch.full((slots,), shared, dtype=torch.long, device=device)
    position = torch.zeros(slots, dtype=torch.long, device=device)  # the next token's position in its sequence
    made = torch.zeros(slots, dtype=torch.long, device=device)  # tokens each slot's reply has so far
    token = torch.zeros(slots, dtype=torch.long, device=device)  # the token each slot feeds next
    logits: torch.Tensor | None = None  # (slots, V): what each live slot picks its next token from
    replies_left = [n] * len(prompts)
    waiting = 0  # the next prompt to enter
    refill = max(1, slots // n // REFILL_FRACTION)  # prompts that enter together, once the slots are full
    while True:
        idle = (rows < 0).nonzero().squeeze(1)
        enter = min(len(idle) // n, len(prompts) - waiting)
        # Prompts enter a few at a time: a prefill has a fixed cost, which one prompt alone pays in full.
        if enter and (enter >= refill or enter == len(prompts) - waiting or len(idle) == cache.slots):
            groups = idle[: enter * n].view(enter, n)  # the slots of each entering prompt's replies
            rests = [prompts[p][shared:] for p in range(waiting, waiting + enter)]
            fresh = _enter(forward, cache, groups[:, 0], rests, shared, columns)
            width = max(map(len, rests))
            for i, group in enumerate(groups):
                if n > 1:
                    cache.copy(int(group[0]), group[1:], shared, shared + width)
                p = waiting + i
                rows[group] = p * n + torch.arange(n, device=device)
                column[group], position[group], made[group] = shared + width, len(prompts[p]), 0
            if logits is None:
                logits = fresh.new_empty(slots, fresh.shape[-1])
            logits[groups.reshape(-1)] = fresh.repeat_interleave(n, dim=0)
            waiting += enter
        live = (rows >= 0).nonzero().squeeze(1)
        picked = _pick(logits[live], temperature, top_p)
        made[live] += 1
        live_rows = rows[live]
        for row, t in zip(live_rows.tolist(), picked.tolist(), strict=True):
            out[row].append(t)
            if on_token is not None:
                on_token(row, t)
        ended = torch.isin(picked, eos_tensor) | (made[live] >= max_completion_length)
        for row in live_rows[ended].tolist():
            replies_left[row // n] -= 1
            if replies_left[row // n] == 0 and on_prompt_done is not None:
                on_prompt_done(row // n)
        rows[live[ended]], column[live[ended]] = -1, shared
        token[live] = picked
        going = live[~ended]
        if waiting == len(prompts):
            if len(going) == 0:
                return out
            if len(going) <= cache.slots // 2:  # nothing left to enter: shrink to the live slots
                _same_device(device, going=going, rows=rows)
                cache.keep(going)
                rows, column, position, made, token, logits = (
                    t[going] for t in (rows, column, position, made, token, logits)
                )
                going = torch.arange(len(going), device=device)
        if len(going) == 0:
            continue  # every live reply ended: prompts enter the freed slots before anything is decoded
        if getattr(forward, "steps_on_some_slots", False):  # one token for each live slot; idle ones cost nothing
            # Such a forward reads each slot's columns up to its sequence's own alone, so the cache is not trimmed
            # (each trim and later growth copied the whole cache: 0.19 s a time on the embedded model at 32 slots),
            # and the mask ends at the furthest column written.
            end = int(column[going].max()) + 1
            cache.aim(column[going, None], slots=going)
            cache.valid[going, column[going]] = True
            mask = cache.mask(cache.valid[going, None, None, :end])
            logits[going] = forward(token[going, None], mask, position[going, None], cache)
        else:  # one token for every slot; an idle slot attends to its own write alone (no row of the mask is empty)
            cache.aim(column[:, None])
            cache.valid[going, column[going]] = True
            allowed = cache.valid | (columns[None, : cache.width] == column[:, None])
            logits = forward(token[:, None], cache.mask(allowed[:, None, None, :]), position[:, None], cache)
        column[going] += 1
        position[going] += 1


def _enter(
    forward, cache: SlotCache, slots: torch.Tensor, rests: list[list[int]], shared: int, columns
) -> torch.Tensor:
    """Prefill each prompt's own tokens (after the shared prefix) into its slot: left-padded to one width W, at
    columns shared..shared+W-1, so that every prompt's last token is in the last column and its reply starts right
    after. The logits (len(rests), V) its first reply token is picked from."""
    device = slots.device
    width = max(map(len, rests))
    pad = torch.tensor([width - len(r) for r in rests], device=device)
    ids = torch.zeros(len(rests), width, dtype=torch.long, device=device)
    for i, rest in enumerate(rests):
        ids[i, width - len(rest) :] = torch.tensor(rest, dtype=torch.long, device=device)
    steps = columns[None, :width]  # (1, W)
    positions = shared + (steps - pad[:, None]).clamp(min=0)
    mine = columns[shared : shared + width]  # the columns this prefill writes
    real = steps >= pad[:, None]
    cache.aim(mine[None, :].expand(len(rests), -1), slots=slots, real=real)
    cache.valid[slots, shared:] = False  # what the slot's previous sequence wrote
    cache.valid[slots, shared : shared + width] = real
    # Query j (column shared+j) sees the valid columns up to its own, and always itself (a padding query too, so
    # that no row of the mask is empty).
    seen = columns[: shared + width]
    allowed = (cache.valid[slots, None, : shared + width] & (seen[None, None, :] <= mine[None, :, None])) | (
        seen[None, None, :] == mine[None, :, None]
    )
    return forward(ids, cache.mask(allowed[:, None]), positions, cache)


def _cache_bytes_per_token(model) -> int:
    """Bytes of keys and values one token takes in the cache, over every layer, in the model's dtype."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * torch.finfo(model.dtype).bits // 8


def auto_batch_size(model, max_tokens: int) -> int:
    """Sequences decoding together. On a CPU: where every forward is one compiled call, as many as fill
    CPU_CACHE_BYTES of cache at `max_tokens` tokens each, from CPU_BATCH_SIZE to COMPILED_CPU_BATCH_SIZE, and
    CPU_BATCH_SIZE otherwise. On a GPU, as many as half the free memory holds in cache at `max_tokens` tokens each
    (the other half for weights' activations and logits), at most 512."""
    if model.device.type != "cuda":
        if not LeanDecoder.compiles(model):
            return CPU_BATCH_SIZE
        fits = CPU_CACHE_BYTES // (_cache_bytes_per_token(model) * max_tokens)
        return int(min(COMPILED_CPU_BATCH_SIZE, max(CPU_BATCH_SIZE, fits)))
    free, _ = torch.cuda.mem_get_info(model.device)
    return int(max(1, min(MAX_GPU_BATCH_SIZE, free // 2 // (_cache_bytes_per_token(model) * max_tokens))))


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
    """`num_generations` replies per prompt, `batch_size` sequences decoding at a time (at least the replies to
    one prompt). The RNG is forked: sampling here leaves the random stream of a training run that calls it untouched.

    `streamer` (one prompt, one reply): a transformers streamer fed as `model.generate` feeds one: the prompt's
    tokens first (skip them with `skip_prompt=True`), then each generated token the moment it is picked, the
    end-of-sequence token included, then `end()` once the reply is complete (not when an exception cuts it short).
    Sampling is unchanged by it: the same loop, seed and end-of-sequence handling as without one."""
    check_generation_settings(num_generations, temperature, max_completion_length, batch_size)
    if streamer is not None and (len(prompts) != 1 or num_generations != 1):
        raise EvalError(f"a streamer follows one reply: got {len(prompts)} prompts x {num_generations} replies")
    encoded = [_encode(tokenizer, prompt) for prompt in prompts]
    # Longest first: memory peaks at the start, and the short prompts at the end fill the slots the last long
    # replies leave.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    longest = max((len(e) for e in encoded), default=0)
    slots = max(num_generations, batch_size or auto_batch_size(model, longest + max_completion_length))
    eos = eos_ids(model, tokenizer)
    bar = tqdm(total=len(encoded), desc="generate", unit="q", disable=not progress, dynamic_ncols=True)
    if streamer is not None:
        streamer.put(torch.tensor([encoded[0]]))
    with (
        torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []),
        torch.inference_mode(),
        masked_attention(model),
    ):
        torch.manual_seed(seed)
        generated = decode(
            model,
            [encoded[i] for i in order],
            num_generations=num_generations,
            temperature=temperature,
            top_p=top_p,
            max_completion_length=max_completion_length,
            eos=eos,
            slots=slots,
            on_token=None if streamer is None else lambda _row, token: streamer.put(torch.tensor([token])),
            on_prompt_done=lambda _p: bar.update(1),
        )
    bar.close()
    replies: list[list[Reply]] = [[] for _ in encoded]
    for row, tokens in enumerate(generated):
        clipped = tokens[-1] not in eos
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        replies[order[row // num_generations]].append(Reply(text, len(tokens), clipped))
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
