"""Dense, read-only weight export of a PEFT LoRA model, for pushing weights to vLLM.

TRL 1.16 syncs a PEFT model to vLLM by calling ``merge_adapter()``, reading every base parameter and calling
``unmerge_adapter()``. With a bitsandbytes 4-bit base that is wrong twice over: the merge re-quantizes the LoRA delta
into the frozen nf4 weights (and the unmerge re-quantizes again), so the frozen base drifts a little on every sync; and
the tensors it reads are the packed ``uint8`` storage of ``Params4bit``, which vLLM's weight loaders reject (TRL issues
#4973 and #3654).

:func:`dense_named_weights` computes what a merged model would contain without touching the model: for every LoRA
linear layer, the dequantized (or float) base weight plus the active adapters' deltas, summed in float32 and rounded
once. Everything else is read as is. The names are those of the plain (non-PEFT) model, i.e. what vLLM loads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

__all__ = ["UnsupportedWeightSyncError", "dense_named_weights", "needs_dense_sync"]


class UnsupportedWeightSyncError(ValueError):
    """The model holds a layer whose dense weights this module cannot compute exactly.

    Raised instead of yielding approximate or packed tensors: a silently wrong sync makes vLLM sample from a different
    policy than the one being trained, which shows up only as a slow, unexplained drop in reward.
    """


def needs_dense_sync(model: nn.Module) -> bool:
    """Whether vLLM weight sync for `model` should use :func:`dense_named_weights` instead of TRL's merge/unmerge.

    True for a PEFT LoRA model whose base is bitsandbytes 4-bit (TRL's path cannot work there at all), and for any
    other PEFT LoRA model that is not sharded (merge/unmerge also drifts a bf16 base by rounding, and the dense path
    is exact). False for non-PEFT models and sharded float ones (FSDP, DeepSpeed ZeRO-3), where TRL's gather logic is
    needed and this module would only see shards.
    """
    if not _is_lora_peft_model(model):
        return False
    return _has_4bit_weights(model) or _sharding(model) is None


def dense_named_weights(
    model: nn.Module, rename: Callable[[str], str] = lambda name: name, dtype: torch.dtype | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every weight of the model vLLM serves, as dense floating tensors.

    Args:
        model: a ``peft.PeftModel`` with LoRA adapters (bitsandbytes 4-bit or float base), or a plain model.
        rename: applied to each name last, e.g. TRL's VLLMGeneration's own name fixer to strip wrapper
            prefixes such as ``_checkpoint_wrapped_module.``.
        dtype: cast every yielded tensor to this dtype. ``None`` keeps each tensor in the dtype the dense model has:
            a 4-bit weight comes back in the dtype it was quantized from (its ``quant_state.dtype``, the load dtype).

    Names are those of the underlying transformers model (no ``base_model.model.``, ``.base_layer`` or
    ``modules_to_save.<adapter>.``); tied parameters are yielded once, like ``named_parameters()``. Merged LoRA
    weights and dequantized weights are fresh tensors; all other tensors share storage with the model and must not be
    written to. The model itself is never modified.

    Raises:
        UnsupportedWeightSyncError: for DoRA and other LoRA variants, non-linear LoRA layers, non-LoRA PEFT tuners,
            trainable-token adapters, 8-bit or other non-float quantized weights, and sharded (FSDP/ZeRO-3) parameters.
    """
    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    if _sharding(root) == "fsdp":
        raise UnsupportedWeightSyncError(
            "dense_named_weights cannot read FSDP-sharded parameters; keep TRL's FSDP sync path for this model."
        )
    for name, tensor in _walk(root, prefix="", seen=set()):
        if dtype is not None:
            tensor = tensor.to(dtype)
        yield rename(name), tensor


# --- module tree walk -------------------------------------------------------------------------------------------------


def _walk(module: nn.Module, prefix: str, seen: set[int]) -> Iterator[tuple[str, torch.Tensor]]:
    """Pre-order walk mirroring ``named_parameters()``, but resolving PEFT wrappers structurally.

    Walking modules (instead of string-editing parameter names as TRL does) lets us see which base layer a LoRA
    adapter belongs to, and which copy of a ``modules_to_save`` module is actually live.
    """
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import AuxiliaryTrainingWrapper, ModulesToSaveWrapper

    if isinstance(module, LoraLayer):
        yield from _lora_layer_weights(module, prefix, seen)
        return
    if isinstance(module, BaseTunerLayer):
        raise UnsupportedWeightSyncError(
            f"{prefix}: {type(module).__name__} is not a LoRA layer; only LoRA adapters can be synced to vLLM densely."
        )
    if isinstance(module, ModulesToSaveWrapper):
        # The wrapper's own path is the module's path in the plain model; its live copy holds the weights.
        yield from _walk(_live_module_to_save(module), prefix, seen)
        return
    if isinstance(module, AuxiliaryTrainingWrapper):
        raise UnsupportedWeightSyncError(
            f"{prefix}: {type(module).__name__} (e.g. trainable_token_indices) is not supported by the dense vLLM "
            "sync; train the full embedding via modules_to_save instead."
        )
    for name, param in module.named_parameters(recurse=False):
        if _first_time(param, seen):
            yield _join(prefix, name), _dense(param, _join(prefix, name))
    for child_name, child in module.named_children():
        yield from _walk(child, _join(prefix, child_name), seen)


def _live_module_to_save(wrapper: nn.Module) -> nn.Module:
    """The copy a ``ModulesToSaveWrapper`` runs in forward: the adapter's copy, or the original when not applicable."""
    active = wrapper.active_adapters
    if wrapper.disable_adapters or not active or any(name not in wrapper.modules_to_save for name in active):
        return wrapper.original_module
    return wrapper.modules_to_save[active[0]]


def _lora_layer_weights(layer: nn.Module, prefix: str, seen: set[int]) -> Iterator[tuple[str, torch.Tensor]]:
    """The base layer's parameters under the layer's own path, with the LoRA deltas folded into weight and bias."""
    base = layer.get_base_layer()
    if not isinstance(base, nn.Linear):  # bitsandbytes' Linear4bit/Linear8bitLt subclass nn.Linear too
        raise UnsupportedWeightSyncError(
            f"{prefix}: LoRA on {type(base).__name__} is not supported by the dense vLLM sync (only nn.Linear); "
            "remove this module from target_modules or fall back to TRL's merge_adapter sync."
        )
    add, subtract = _adapters_to_fold(layer)
    for adapter in add + subtract:
        _check_plain_lora(layer, adapter, prefix)
    for name, param in base.named_parameters():
        if not _first_time(param, seen):
            continue
        full_name = _join(prefix, name)
        if name == "weight":
            yield full_name, _folded_weight(layer, base, add, subtract, full_name)
        elif name == "bias":
            yield full_name, _folded_bias(layer, param, add, subtract)
        else:
            yield full_name, _dense(param, full_name)


def _adapters_to_fold(layer: nn.Module) -> tuple[list[str], list[str]]:
    """Adapters whose delta to add to, and to subtract from, the stored base weight to get what forward() computes.

    PEFT's forward uses the stored base weight alone when the layer is merged (the merged adapters are already in it),
    and the unmerged base when adapters are disabled. So the effective weight is
    ``stored + sum(wanted - merged) - sum(merged - wanted)``; in the usual training state nothing is merged and this
    is just ``stored + active deltas``.
    """
    merged = [name for name in layer.merged_adapters if name in layer.lora_A]
    if layer.disable_adapters:
        wanted = []
    elif merged:
        wanted = merged
    else:
        wanted = [name for name in layer.active_adapters if name in layer.lora_A]
    add = [name for name in wanted if name not in merged]
    subtract = [name for name in merged if name not in wanted]
    return add, subtract


def _check_plain_lora(layer: nn.Module, adapter: str, prefix: str) -> None:
    """Refuse LoRA variants whose merged weight is not ``W + B @ A * scaling``."""
    if layer.use_dora.get(adapter, False) or adapter in getattr(layer, "lora_variant", {}):
        variant = "DoRA" if layer.use_dora.get(adapter, False) else type(layer.lora_variant[adapter]).__name__
        raise UnsupportedWeightSyncError(
            f"{prefix}: adapter {adapter!r} uses {variant}, which the dense vLLM sync does not support (its merged "
            "weight is not base + B @ A * scaling). Train with use_dora=False, or fall back to TRL's merge_adapter "
            "sync with a float (non-quantized) base."
        )


# --- tensor math ------------------------------------------------------------------------------------------------------


@torch.no_grad()
def _folded_weight(layer: nn.Module, base: nn.Linear, add: list[str], subtract: list[str], name: str) -> torch.Tensor:
    """Dense base weight plus/minus LoRA deltas, accumulated in float32 and rounded once to the dense dtype."""
    dense = _dense(base.weight, name)
    if not add and not subtract:
        return dense
    # copy=True: for a float32 base, .float() would alias the model's weight and += would write into it.
    total = dense.to(torch.float32, copy=True)
    for adapter in add:
        total += _delta(layer, adapter, total, name)
    for adapter in subtract:
        total -= _delta(layer, adapter, total, name)
    return total.to(dense.dtype)


def _delta(layer: nn.Module, adapter: str, like: torch.Tensor, name: str) -> torch.Tensor:
    """The adapter's delta in float32 on `like`'s device, checked against `like`'s shape."""
    # get_delta_weight is PEFT's own definition of the delta (scaling, rslora, fan_in_fan_out); it is exact float32
    # when the adapter weights are float32, which PEFT's autocast_adapter_dtype default ensures.
    delta = layer.get_delta_weight(adapter)
    if delta.shape != like.shape:
        raise UnsupportedWeightSyncError(
            f"{name}: LoRA delta of adapter {adapter!r} has shape {tuple(delta.shape)}, the base weight "
            f"{tuple(like.shape)}; this layer type is not supported by the dense vLLM sync."
        )
    return delta.to(device=like.device, dtype=torch.float32)


@torch.no_grad()
def _folded_bias(layer: nn.Module, bias: torch.Tensor, add: list[str], subtract: list[str]) -> torch.Tensor:
    """The base bias plus the scaled lora_B bias of adapters trained with ``lora_bias=True``."""
    add = [name for name in add if layer.lora_bias.get(name, False)]
    subtract = [name for name in subtract if layer.lora_bias.get(name, False)]
    if not add and not subtract:
        return bias.detach()
    total = bias.detach().float().clone()
    for adapter in add:
        total += layer.lora_B[adapter].bias.to(total.device, torch.float32) * layer.scaling[adapter]
    for adapter in subtract:
        total -= layer.lora_B[adapter].bias.to(total.device, torch.float32) * layer.scaling[adapter]
    return total.to(bias.dtype)


@torch.no_grad()
def _dense(param: torch.Tensor, name: str) -> torch.Tensor:
    """The parameter as a dense floating tensor: 4-bit weights dequantized (a new tensor), float ones as they are."""
    from peft.utils.integrations import dequantize_bnb_weight, get_bnb_param_type

    kind = get_bnb_param_type(param)
    if kind == "4bit":
        if getattr(param.quant_state, "packing_format_for_cpu", False):
            # bitsandbytes >= 0.49 repacks a Linear4bit for its AVX512-BF16 CPU kernel on the first eval-mode, no-grad
            # forward. dequantize_4bit does not understand that layout and would return wrong values without error.
            raise UnsupportedWeightSyncError(
                f"{name}: bitsandbytes repacked this 4-bit weight for its CPU kernel (an eval-mode no-grad forward on "
                "an AVX512-BF16 CPU); the dense vLLM sync reads only the standard layout. Sync before any eval forward "
                "on CPU, or run the 4-bit model on a GPU."
            )
        # Reads weight.data and weight.quant_state only; PEFT's dequantize_module_weight is avoided because on CPU it
        # re-assigns module.weight (a new Parameter object), which would modify the model.
        return dequantize_bnb_weight(param)
    if kind == "8bit":
        raise UnsupportedWeightSyncError(
            f"{name}: bitsandbytes 8-bit weights are not supported by the dense vLLM sync (vLLM has no matching "
            "in-flight 8-bit mode either); load the base in 4-bit or in bf16."
        )
    if not torch.is_floating_point(param):
        raise UnsupportedWeightSyncError(
            f"{name}: {param.dtype} parameter of type {type(param).__name__} is not a dense float weight (a quantized "
            "format this module does not dequantize); vLLM would reject or misread it."
        )
    if getattr(param, "ds_numel", param.numel()) != param.numel():
        raise UnsupportedWeightSyncError(
            f"{name}: DeepSpeed ZeRO-3 partition; call dense_named_weights inside deepspeed.zero.GatheredParameters."
        )
    return param.detach()


# --- model inspection -------------------------------------------------------------------------------------------------


def _is_lora_peft_model(model: nn.Module) -> bool:
    try:
        from peft import PeftModel, PeftType
    except ImportError:  # without peft there can be no PEFT model
        return False
    if not isinstance(model, PeftModel):
        return False
    return any(config.peft_type == PeftType.LORA for config in model.peft_config.values())


def _has_4bit_weights(model: nn.Module) -> bool:
    from peft.utils.integrations import get_bnb_param_type

    return any(get_bnb_param_type(param) == "4bit" for param in model.parameters())


def _sharding(model: nn.Module) -> str | None:
    """'fsdp' (FSDP1 wrappers or FSDP2 DTensors), 'zero3' (DeepSpeed partitioned params) or None."""
    if any(type(module).__name__ == "FullyShardedDataParallel" for module in model.modules()):
        return "fsdp"
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed support: no DTensors can exist
        DTensor = ()  # noqa: N806 - an empty isinstance target
    for param in model.parameters():
        if isinstance(param, DTensor):
            return "fsdp"
        if hasattr(param, "ds_id"):
            return "zero3"
    return None


def _first_time(param: torch.Tensor, seen: set[int]) -> bool:
    # Tied parameters (e.g. embed_tokens/lm_head) are one object; vLLM expects them once, as named_parameters() gives.
    if id(param) in seen:
        return False
    seen.add(id(param))
    return True


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
