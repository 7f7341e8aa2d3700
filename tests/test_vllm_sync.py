"""Dense vLLM weight export of LoRA models (r1lite.vllm_sync), on a tiny random Qwen2, 4-bit (nf4) and float.

The 4-bit tests need bitsandbytes able to quantize on CPU (0.45+ can); they are skipped, with the reason, otherwise.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from r1lite.vllm_sync import UnsupportedWeightSyncError, dense_named_weights, needs_dense_sync  # noqa: E402
from tests.helpers import frozen_4bit_state, tiny_qwen2_config  # noqa: E402

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 8, 16
SCALING = ALPHA / RANK  # computed here, not read from the layers, so a scaling bug in the module cannot hide


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tensors here are tiny: with the few shared cores busy, torch's thread pool costs 100x the arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _randomise_lora_b(model, seed: int = 1, std: float = 0.05) -> None:
    # PEFT initialises lora_B to zero, which would make "base + delta" indistinguishable from "base".
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def _lora(model, targets=PROJECTIONS, **kwargs):
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=targets, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = peft.get_peft_model(model, config)
    _randomise_lora_b(wrapped)
    return wrapped


def _load_4bit(path, compute_dtype, targets=PROJECTIONS):
    quant = transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )  # fmt: skip
    base = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=compute_dtype, quantization_config=quant, device_map="cpu"
    )
    return _lora(base, targets)


def _float_lora(path, **kwargs):
    base = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return _lora(base, **kwargs)


def _lora_layers(model):
    """LoRA layers by their path in the plain model (what dense_named_weights names their weights after)."""
    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            layers[name.removeprefix("base_model.model.")] = module
    return layers


def _dequantized(weight):
    from bitsandbytes.functional import dequantize_4bit

    return dequantize_4bit(weight.data, weight.quant_state)


def _assert_same_tensors(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    assert before.keys() == after.keys()
    changed = [key for key in before if not torch.equal(before[key], after[key])]
    assert not changed, f"modified: {changed[:5]}"


# --- 4-bit base -------------------------------------------------------------------------------------------------------


def test_4bit_yields_the_plain_models_names_shapes_and_dense_floats(bnb, qwen2_checkpoint):
    """What vLLM loads: exactly the plain Qwen2 state dict (names, shapes), dense floating tensors, each once."""
    path, plain = qwen2_checkpoint
    model = _load_4bit(path, torch.bfloat16)
    pairs = list(dense_named_weights(model))
    names = [name for name, _ in pairs]
    reference = plain.state_dict()

    assert len(names) == len(set(names))
    assert set(names) == set(reference)
    for name, tensor in pairs:
        assert type(tensor) is torch.Tensor, name  # not a Params4bit or other Parameter subclass
        assert tensor.is_floating_point() and tensor.layout == torch.strided, name
        assert tensor.shape == reference[name].shape, name
        assert tensor.dtype == torch.bfloat16, name


@pytest.mark.parametrize(
    ("compute_dtype", "tolerance"),
    # Summed in fp32 and rounded once: fp32 is near exact; bf16 is within half an ulp (8-bit mantissa) of the sum.
    [(torch.float32, dict(rtol=1e-6, atol=1e-7)), (torch.bfloat16, dict(rtol=2**-8, atol=1e-6))],
)
def test_4bit_adapted_weights_are_dequantized_base_plus_lora_delta(bnb, qwen2_checkpoint, compute_dtype, tolerance):
    path, plain = qwen2_checkpoint
    model = _load_4bit(path, compute_dtype)
    weights = dict(dense_named_weights(model))
    layers = _lora_layers(model)
    assert len(layers) == len(PROJECTIONS) * 2

    for prefix, layer in layers.items():
        base = _dequantized(layer.base_layer.weight).float()
        a, b = layer.lora_A["default"].weight.float(), layer.lora_B["default"].weight.float()
        delta = (b @ a) * SCALING
        # The delta must matter at this tolerance, or the check below could not tell "base" from "base + delta".
        assert delta.abs().max() > 100 * tolerance["atol"] + 4 * tolerance["rtol"] * base.abs().max()
        torch.testing.assert_close(weights[f"{prefix}.weight"].float(), base + delta, **tolerance)

    # Everything LoRA does not touch is passed through bit for bit (embeddings, norms, lm_head, q/k/v biases).
    unadapted = {name: p for name, p in model.get_base_model().named_parameters() if ".base_layer.weight" not in name}
    for name, param in unadapted.items():
        if "lora_" not in name:
            assert torch.equal(weights[name.replace(".base_layer", "")], param), name


def test_4bit_linears_without_lora_are_dequantized(bnb, qwen2_checkpoint):
    path, _ = qwen2_checkpoint
    model = _load_4bit(path, torch.bfloat16, targets=["q_proj", "v_proj"])
    weights = dict(dense_named_weights(model))
    mlp = model.get_base_model().model.layers[1].mlp
    assert type(mlp.down_proj).__name__ == "Linear4bit"  # a plain 4-bit linear, no LoRA wrapper
    expected = _dequantized(mlp.down_proj.weight)
    assert weights["model.layers.1.mlp.down_proj.weight"].shape == (64, 128)
    assert torch.equal(weights["model.layers.1.mlp.down_proj.weight"], expected)


def test_4bit_base_and_outputs_are_bit_identical_after_ten_syncs(bnb, qwen2_checkpoint):
    path, _ = qwen2_checkpoint
    model = _load_4bit(path, torch.bfloat16)
    # Train mode on purpose: in eval mode without grad, bitsandbytes repacks 4-bit weights for its AVX512-BF16 CPU
    # kernel on the first forward, which would change the very tensors compared here. Dropout is 0, so train-mode
    # logits are deterministic.
    model.train()
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(3))
    frozen = frozen_4bit_state(model)
    params = dict(model.named_parameters())  # the Parameter objects themselves: a merge would replace them
    everything = {name: p.detach().clone() for name, p in params.items()}
    with torch.no_grad():
        logits = model(ids).logits

    for _ in range(10):
        for _name, _tensor in dense_named_weights(model):
            pass

    _assert_same_tensors(frozen, frozen_4bit_state(model))
    _assert_same_tensors(everything, {name: p.detach() for name, p in model.named_parameters()})
    assert all(params[name] is p for name, p in model.named_parameters())
    assert not any(layer.merged for layer in _lora_layers(model).values())
    with torch.no_grad():
        assert torch.equal(model(ids).logits, logits)


def test_trl_merge_unmerge_round_trip_yields_packed_uint8_and_drifts_the_4bit_base(bnb, qwen2_checkpoint):
    """Contrast: TRL 1.16 syncs with merge_adapter(); read params; unmerge_adapter(). Documents the upstream bug."""
    path, _ = qwen2_checkpoint
    model = _load_4bit(path, torch.bfloat16)
    layers = _lora_layers(model)
    frozen = frozen_4bit_state(model)
    before = {prefix: _dequantized(layer.base_layer.weight).float() for prefix, layer in layers.items()}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns about rounding errors on every 4-bit merge
        model.merge_adapter()
        # What TRL yields while merged: the packed storage, not a (out, in) weight vLLM could load.
        read = {name: p.data for name, p in model.named_parameters() if name.endswith(".base_layer.weight")}
        model.unmerge_adapter()

    assert {t.dtype for t in read.values()} == {torch.uint8}
    assert all(t.shape[1] == 1 for t in read.values())
    after = {prefix: _dequantized(layer.base_layer.weight).float() for prefix, layer in layers.items()}
    drift = max((after[p] - before[p]).abs().max().item() for p in layers)
    assert drift > 1e-4, drift  # measured 2.1e-2 with this seed and lora_B std 0.05; 3e-4 even with a zero delta
    changed = [key for key in frozen if not torch.equal(frozen[key], frozen_4bit_state(model)[key])]
    assert changed


def test_4bit_weights_repacked_for_the_cpu_kernel_are_refused(bnb, qwen2_checkpoint):
    """bitsandbytes' CPU fast path rewrites the packed layout; dequantizing it as usual would give wrong weights."""
    if not bnb.functional.has_avx512bf16():
        pytest.skip("bitsandbytes repacks 4-bit weights for its CPU kernel only on AVX512-BF16 CPUs")
    path, _ = qwen2_checkpoint
    model = _load_4bit(path, torch.bfloat16).eval()
    with torch.no_grad():
        model(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(UnsupportedWeightSyncError, match="repacked"):
        list(dense_named_weights(model))


def test_needs_dense_sync(bnb, qwen2_checkpoint):
    path, plain = qwen2_checkpoint
    assert needs_dense_sync(_load_4bit(path, torch.bfloat16))
    assert needs_dense_sync(_float_lora(path))
    assert not needs_dense_sync(plain)


# --- float base -------------------------------------------------------------------------------------------------------


def test_float_model_matches_merge_and_unload_with_modules_to_save(qwen2_checkpoint):
    """On a float base the reference is PEFT's own merge; the lm_head copy trained via modules_to_save must win."""
    path, _ = qwen2_checkpoint
    model = _float_lora(path, modules_to_save=["lm_head"])
    with torch.no_grad():  # make the trained copy differ from the original, or picking the wrong one would pass
        model.get_base_model().lm_head.modules_to_save["default"].weight.add_(1.0)
    merged = dict(copy.deepcopy(model).merge_and_unload().named_parameters())
    before = {name: param.detach().clone() for name, param in model.named_parameters()}

    pairs = list(dense_named_weights(model, rename=lambda name: f"x.{name}"))
    _assert_same_tensors(before, {name: param.detach() for name, param in model.named_parameters()})
    weights = {name.removeprefix("x."): tensor for name, tensor in pairs}
    assert all(name.startswith("x.") for name, _ in pairs)
    assert weights.keys() == merged.keys()
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, merged[name], rtol=1e-6, atol=1e-7, msg=name)
    original = model.get_base_model().lm_head.original_module.weight
    assert not torch.allclose(weights["lm_head.weight"], original)


def test_float_model_respects_disabled_and_merged_adapters(qwen2_checkpoint):
    path, plain = qwen2_checkpoint
    model = _float_lora(path)
    active = dict(dense_named_weights(model))

    with model.disable_adapter():  # generation without the adapter: the base weights exactly
        # Cloned: tensors LoRA leaves alone alias the model's own weights, which merge_adapter() below changes.
        disabled = {name: tensor.clone() for name, tensor in dense_named_weights(model)}
    for name, param in plain.named_parameters():
        assert torch.equal(disabled[name], param.float()), name
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert (active[q_proj] - disabled[q_proj]).abs().max() > 1e-3

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.merge_adapter()  # the delta is in the base weight now; it must not be added a second time
    merged = dict(dense_named_weights(model))
    for name, tensor in active.items():
        torch.testing.assert_close(merged[name], tensor, rtol=1e-6, atol=1e-6, msg=name)


def test_tied_embeddings_are_yielded_once():
    """Like named_parameters() and TRL: a tied lm_head is not sent; vLLM ties it to embed_tokens itself."""
    torch.manual_seed(0)
    plain = transformers.Qwen2ForCausalLM(tiny_qwen2_config(tie_word_embeddings=True))
    names = [name for name, _ in plain.named_parameters()]
    assert "lm_head.weight" not in names
    model = _lora(copy.deepcopy(plain))
    assert [name for name, _ in dense_named_weights(model)] == names


def test_dora_is_refused_with_an_actionable_error(qwen2_checkpoint):
    path, _ = qwen2_checkpoint
    model = _float_lora(path, use_dora=True)
    with pytest.raises(UnsupportedWeightSyncError, match="DoRA.*use_dora=False") as info:
        list(dense_named_weights(model))
    assert isinstance(info.value, ValueError)


def test_lora_on_a_non_linear_layer_is_refused(qwen2_checkpoint):
    path, _ = qwen2_checkpoint
    model = _float_lora(path, targets=["q_proj", "embed_tokens"])
    with pytest.raises(UnsupportedWeightSyncError, match="embed_tokens.*Embedding.*target_modules"):
        list(dense_named_weights(model))
