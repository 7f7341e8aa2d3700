"""A lean decoding forward for Llama-family models on a CPU (`LeanDecoder`), used by `r1lite.engine.decode`.

At the handful of sequences a GRPO group or a chat decodes, a decoding step of a small model is not bound by its
matrix products alone but by the operations and module calls around them, each with its fixed cost. This forward
computes the same function with fewer and larger operations and no module calls:

- the query, key and value projections multiply by one weight (their three stacked), as do the gate and up
  projections; in fp32 at up to `r1lite.kernels.MAX_ROWS` sequences (where the kernels can be built) every weight
  is laid out once in panels (`r1lite.kernels.pack`), every forward (a prefill, a row per prompt token, or a
  decoding step, a row per live sequence) runs every layer in one compiled call (`r1lite.kernels.decode_layers`),
  and the LM head multiplies through the compiled product (`panels_linear`); otherwise each weight is laid out once
  for oneDNN (`torch.ops.mkldnn._reorder_linear_weight`) for the whole call, and between the products:
- the rotary embedding turns queries and keys together, swapping the two halves of each head with one `flip`;
- attention is `r1lite.attention.grouped_attention` over the `SlotCache` as it stands, and in a prefill (several
  tokens per sequence) torch's fused `scaled_dot_product_attention`, which makes no tensor of probabilities;
- nothing goes through module calls, hooks or keyword plumbing.

It applies to the architectures it spells out (`LEAN_MODEL_TYPES`: Llama, which SmolLM2 is, and Qwen2, which
Qwen2.5 is) in their plain form: every projection a plain `nn.Linear`, SiLU gating, full attention in every layer,
no hooks on any module but r1lite's own on the LM head. Anything else (an adapter left unmerged, 4-bit layers, a
sliding window, accelerate's offload hooks) decodes through transformers' forward. It rounds where transformers'
forward rounds, in the same dtype; tests/test_decoder.py compares the logits and the greedy replies.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from r1lite import kernels
from r1lite.attention import grouped_attention

logger = logging.getLogger(__name__)

LEAN_MODEL_TYPES = ("llama", "qwen2")
LEAN_DTYPES = (torch.bfloat16, torch.float32)


@dataclass
class _Layer:
    norm1: torch.Tensor
    norm1_eps: float
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    norm2: torch.Tensor
    norm2_eps: float
    gate_up: torch.Tensor
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None


def _why_not(model) -> str | None:
    """Why `LeanDecoder` cannot stand in for this model's forward, or None where it can."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in LEAN_MODEL_TYPES:
        return f"model type {getattr(config, 'model_type', None)!r} is not one of {LEAN_MODEL_TYPES}"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(model, "lm_head"):
        return "not a plain causal LM (an adapter wrapper?)"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    if getattr(config, "use_sliding_window", False) or any(
        kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()
    ):
        return "sliding-window attention"
    if len(inner.layers) != config.num_hidden_layers:
        return "layers were added or removed"
    embed = inner.embed_tokens
    if type(embed) is not torch.nn.Embedding or embed.weight.device.type != "cpu":
        return "embeddings are not a plain CPU nn.Embedding"
    dtype = embed.weight.dtype
    if dtype not in LEAN_DTYPES:
        return f"dtype {dtype}"
    for layer in inner.layers:
        attention, mlp = layer.self_attn, layer.mlp
        projections = (
            *(attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj),
            *(mlp.gate_proj, mlp.up_proj, mlp.down_proj),
        )
        if not all(_plain_linear(linear, dtype) for linear in projections):
            return "a projection is not a plain nn.Linear of the model's dtype (an adapter, quantised layers?)"
        if hasattr(attention, "q_norm") or hasattr(attention, "k_norm"):
            return "query/key norms"
    if not _plain_linear(model.lm_head, dtype):
        return "the LM head is not a plain nn.Linear of the model's dtype"
    from r1lite.models import _contiguous_input  # the head fold's hook; models.py loads peft and transformers

    for name, module in model.named_modules():
        hooks = list(module._forward_pre_hooks.values()) + list(module._forward_hooks.values())
        if hasattr(module, "_hf_hook") or any(hook is not _contiguous_input for hook in hooks):
            return f"hooks on {name or 'the model'}"
    return None


def _plain_linear(module, dtype: torch.dtype) -> bool:
    return (
        type(module) is torch.nn.Linear
        and "forward" not in vars(module)
        and module.weight.dtype == dtype
        and module.weight.device.type == "cpu"
    )


def _stacked(*linears: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = torch.cat([linear.weight.detach() for linear in linears])
    if all(linear.bias is None for linear in linears):
        return weight, None
    bias = [
        linear.bias.detach() if linear.bias is not None else weight.new_zeros(linear.out_features) for linear in linears
    ]
    return weight, torch.cat(bias)


class LeanDecoder:
    """The forward `r1lite.engine.decode` calls, for a model `for_model` accepts: (B, Q) tokens, their positions,
    a (B, 1, Q, W) additive mask and a `SlotCache` aimed where the new keys go, to the last position's logits (B, V).

    Holds copies of the weights it stacks (q/k/v, gate/up), and of every weight where it lays them out (in panels
    for r1lite's kernels, or for oneDNN), made once: build one per `decode` call, so that a model whose weights
    changed in between (a refreshed sampling copy) is read afresh. In fp32 at up to `r1lite.kernels.MAX_ROWS` slots,
    where r1lite's kernels are available, every forward is one compiled call over every layer, a row per new token,
    which writes the new keys and values into the cache itself; a decoding step may then cover the live slots alone
    (`steps_on_some_slots`)."""

    def __init__(self, model, rows: int, whole_layers: bool = True):
        config = model.config
        inner = model.model
        self.rotary = inner.rotary_emb
        self.embed = inner.embed_tokens.weight.detach()
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.intermediate = config.intermediate_size
        self.scaling = inner.layers[0].self_attn.scaling
        self.rows = rows
        # Up to MAX_ROWS rows in fp32: r1lite's kernels, from weights laid out in panels. Otherwise oneDNN's product
        # from weights laid out for it, where this CPU's oneDNN can (`can_pack`).
        self.kernel = rows <= kernels.MAX_ROWS and self.embed.dtype == torch.float32 and kernels.available()
        self.packed = not self.kernel and can_pack(self.embed.dtype)
        # With the kernels, every forward runs every layer in one compiled call (`kernels.decode_layers`);
        # whole_layers=False keeps torch's operations between the compiled products (benchmarks compare the two).
        self.whole_layers = self.kernel and whole_layers
        self.layers = []
        for layer in inner.layers:
            attention, mlp = layer.self_attn, layer.mlp
            qkv, qkv_bias = _stacked(attention.q_proj, attention.k_proj, attention.v_proj)
            gate_up, gate_up_bias = _stacked(mlp.gate_proj, mlp.up_proj)
            self.layers.append(
                _Layer(
                    norm1=layer.input_layernorm.weight.detach(),
                    norm1_eps=layer.input_layernorm.variance_epsilon,
                    qkv=self._pack(qkv),
                    qkv_bias=qkv_bias,
                    o=self._pack(attention.o_proj.weight.detach()),
                    o_bias=_detached(attention.o_proj.bias),
                    norm2=layer.post_attention_layernorm.weight.detach(),
                    norm2_eps=layer.post_attention_layernorm.variance_epsilon,
                    gate_up=self._pack(gate_up),
                    gate_up_bias=gate_up_bias,
                    down=self._pack(mlp.down_proj.weight.detach()),
                    down_bias=_detached(mlp.down_proj.bias),
                )
            )
        if self.whole_layers:
            none = self.embed.new_empty(0)
            self.flat = [
                none if t is None else t.data if isinstance(t, kernels.Panels) else t.contiguous()
                for layer in self.layers
                for t in (
                    *(layer.norm1, layer.qkv, layer.qkv_bias, layer.o, layer.o_bias),
                    *(layer.norm2, layer.gate_up, layer.gate_up_bias, layer.down, layer.down_bias),
                )
            ]
            self.eps = [eps for layer in self.layers for eps in (layer.norm1_eps, layer.norm2_eps)]
        self.norm = inner.norm.weight.detach()
        self.norm_eps = inner.norm.variance_epsilon
        self.head = self._pack(model.lm_head.weight.detach())
        self.head_bias = _detached(model.lm_head.bias)

    @classmethod
    def for_model(cls, model, rows: int) -> LeanDecoder | None:
        """A decoder for `model`, or None where it does not apply (the reason is logged at debug level)."""
        reason = _why_not(model)
        if reason is not None:
            logger.debug("decoding through transformers' forward: %s", reason)
            return None
        try:
            return cls(model, rows)
        except (RuntimeError, NotImplementedError) as exc:  # a weight oneDNN cannot lay out though can_pack passed
            logger.debug("decoding through transformers' forward: %s", exc)
            return None

    @staticmethod
    def compiles(model) -> bool:
        """Whether a decoder for `model` at up to `r1lite.kernels.MAX_ROWS` slots runs every forward as one
        compiled call (`kernels.decode_layers`): a model `for_model` accepts, in fp32, where the kernels build."""
        return (
            _why_not(model) is None and model.model.embed_tokens.weight.dtype == torch.float32 and kernels.available()
        )

    def _pack(self, weight: torch.Tensor) -> torch.Tensor | kernels.Panels:
        if self.kernel:
            return kernels.pack(weight)
        return pack_weight(weight, self.rows) if self.packed else weight

    def _linear(self, x: torch.Tensor, weight, bias: torch.Tensor | None) -> torch.Tensor:
        if self.kernel:  # decoding steps and prefills alike
            return kernels.panels_linear(x, weight, bias)
        if self.packed:
            return packed_linear(x, weight, bias)
        return F.linear(x, weight, bias)

    @staticmethod
    def _norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        # transformers' RMSNorm: in fp32, then back to the activations' dtype before the weight.
        return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)

    @property
    def steps_on_some_slots(self) -> bool:
        """Whether a decoding step may cover the live slots alone (`SlotCache.aim` with slots): the compiled call
        reads each row's slot where it lies, where torch's attention would need the slots gathered first."""
        return self.whole_layers

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        if self.whole_layers:
            return self._compiled(tokens, mask, positions, cache)
        batch, length = tokens.shape
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        half = dim // 2
        x = F.embedding(tokens, self.embed)
        cos, sin = self._turns(x, positions)
        cos, sin = cos[:, :, None], sin[:, :, None]
        for index, layer in enumerate(self.layers):
            h = self._norm(x, layer.norm1, layer.norm1_eps)
            qkv = self._linear(h, layer.qkv, layer.qkv_bias).view(batch, length, heads + 2 * kv_heads, dim)
            qk = qkv[:, :, : heads + kv_heads]
            qk = qk * cos + qk.unflatten(-1, (2, half)).flip(-2).flatten(-2) * sin
            key = qk[:, :, heads:].transpose(1, 2)
            value = qkv[:, :, heads + kv_heads :].transpose(1, 2)
            keys, values = cache.update(key, value, index)
            query = qk[:, :, :heads].transpose(1, 2)
            if length > 1:  # a prefill: torch's fused attention, no tensor of probabilities (2x faster here)
                out = F.scaled_dot_product_attention(
                    query, keys, values, attn_mask=mask, scale=self.scaling, enable_gqa=True
                ).transpose(1, 2)
            else:
                out, _ = grouped_attention(None, query, keys, values, mask, self.scaling)
            x = x + self._linear(out.reshape(batch, length, heads * dim), layer.o, layer.o_bias)
            h = self._norm(x, layer.norm2, layer.norm2_eps)
            gate_up = self._linear(h, layer.gate_up, layer.gate_up_bias)
            gated = F.silu(gate_up[..., : self.intermediate]) * gate_up[..., self.intermediate :]
            x = x + self._linear(gated, layer.down, layer.down_bias)
        last = self._norm(x[:, -1], self.norm, self.norm_eps)
        return self._linear(last, self.head, self.head_bias)

    def _turns(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rotary embedding's cos and sin at `positions` (B, Q, D each, in x's dtype), sin with its first half
        negated: rotate_half(t) * sin == swap_halves(t) * (-sin_1, sin_2), so one swap turns queries and keys."""
        cos, sin = self.rotary(x, positions)
        half = self.head_dim // 2
        return cos, torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)

    def _compiled(self, tokens, mask, positions, cache) -> torch.Tensor:
        """Every layer in one compiled call (`r1lite.kernels.decode_layers`), a row per token, which writes the new
        keys and values into the cache itself; then the final norm and the LM head at each sequence's last token."""
        batch, length = tokens.shape
        slots, columns, keep = cache.written(len(self.layers), self.kv_heads, self.head_dim)
        tokens, positions, mask = tokens.reshape(-1), positions.reshape(-1), mask.reshape(batch * length, -1)
        if keep is not None:  # left padding: no query attends to its columns, so it is not computed
            tokens, positions, mask = tokens[keep], positions[keep], mask[keep]
        x = F.embedding(tokens, self.embed)  # (R, hidden), a fresh tensor the call updates in place
        cos, sin = self._turns(x[None], positions[None])
        x = kernels.decode_layers(
            x,
            self.flat,
            self.eps,
            cache.keys,
            cache.values,
            cos[0].contiguous(),
            sin[0].contiguous(),
            slots,
            columns,
            mask.contiguous(),
            self.heads,
            self.kv_heads,
            self.scaling,
            shared=cache.shared,
        )
        # Each sequence's last token, the last of its rows (padding is on the left).
        counts = torch.full((batch,), length, device=x.device) if keep is None else keep.view(batch, length).sum(1)
        last = x[counts.cumsum(0) - 1]
        return self._linear(self._norm(last, self.norm, self.norm_eps), self.head, self.head_bias)


def _detached(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else bias.detach()


@functools.cache
def can_pack(dtype: torch.dtype) -> bool:
    """Whether this torch, on this CPU, lays linear weights of `dtype` out once for oneDNN (`pack_weight`,
    `packed_linear`). Tried once per dtype on a small weight: oneDNN's bf16 products need AVX-512 (or AVX-NE-CONVERT),
    so on an AVX2-only CPU bf16 weights stay in torch's layout while fp32 ones are laid out."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    try:
        weight = torch.ones(8, 8, dtype=dtype)
        packed_linear(torch.ones(2, 8, dtype=dtype), pack_weight(weight, 2), None)
    except (RuntimeError, NotImplementedError) as exc:
        logger.debug("linear weights of %s stay in torch's layout: %s", dtype, exc)
        return False
    return True


def pack_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """A CPU linear weight (out, in) laid out for oneDNN's product at about `rows` rows; any number of rows works."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ weight.T + bias from the weight `pack_weight` laid out (no backward)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
