"""r1lite's hooks into TRL 1.16's vLLM generation (r1lite.trl_compat), run through TRL's real code, vLLM faked.

``VLLMGeneration`` is built by TRL's own ``__init__`` (so every attribute its sync reads is the one TRL sets), with
``LLM`` (colocate) and ``VLLMClient`` (server) replaced by recorders; ``sync_weights`` and ``_init_vllm`` are TRL's.
The model is a tiny random Qwen2 in nf4 with a LoRA adapter whose lora_B is non-zero; everything runs on CPU in
about a second. Skipped, with the reason, where bitsandbytes cannot quantize to nf4.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
trl_vllm = pytest.importorskip("trl.generation.vllm_generation")

from r1lite.trl_compat import dense_vllm_engine, push_dense_weights_to_vllm  # noqa: E402
from tests.helpers import frozen_4bit_state  # noqa: E402

VLLMGeneration = trl_vllm.VLLMGeneration
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 8, 16
SCALING = ALPHA / RANK  # computed here, not read from the layers
SPOT = "model.layers.1.self_attn.q_proj"  # the LoRA layer whose pushed weight is recomputed by hand


# --- fakes for vLLM ---------------------------------------------------------------------------------------------------


class FakeLLM:
    """Stands in for ``vllm.LLM``: records its constructor kwargs and every tensor TRL loads into it."""

    instances: list[FakeLLM] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.loaded: list[tuple[str, torch.Tensor]] = []
        self.prefix_cache_resets = 0
        model = SimpleNamespace(load_weights=self.loaded.extend)
        self.llm_engine = SimpleNamespace(
            model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=SimpleNamespace(model=model)))
        )
        FakeLLM.instances.append(self)

    def reset_prefix_cache(self):
        self.prefix_cache_resets += 1

    def sleep(self, level):
        raise AssertionError("sleep mode is off in these tests")


class FakeVLLMClient:
    """Stands in for ``trl.generation.vllm_client.VLLMClient``: records each update's metadata and streamed tensors."""

    def __init__(self, base_url, group_port, connection_timeout):
        self.updates: list[tuple[list, list[tuple[str, torch.Tensor]]]] = []
        self.prefix_cache_resets = 0

    def init_communicator(self, device):
        pass

    def update_named_params(self, metadata, named_params):
        self.updates.append((list(metadata), list(named_params)))

    def reset_prefix_cache(self):
        self.prefix_cache_resets += 1


def _accelerator(is_main_process=True, fsdp_version=None):
    """What TRL reads from an ``accelerate.Accelerator`` on one process, without accelerate's global state."""
    fsdp_plugin = SimpleNamespace(fsdp_version=fsdp_version) if fsdp_version else None
    return SimpleNamespace(
        state=SimpleNamespace(deepspeed_plugin=None, fsdp_plugin=fsdp_plugin),
        is_main_process=is_main_process, num_processes=1, process_index=0, local_process_index=0,
        device=torch.device("cpu"), wait_for_everyone=lambda: None,
    )  # fmt: skip


@pytest.fixture
def fake_vllm(monkeypatch):
    """TRL's vllm_generation module as if vLLM were installed, with recorders instead of the engine and client."""
    monkeypatch.setattr(trl_vllm, "is_vllm_available", lambda: True)
    monkeypatch.setattr(trl_vllm, "LLM", FakeLLM, raising=False)  # only bound at import when vLLM is installed
    monkeypatch.setattr(trl_vllm, "VLLMClient", FakeVLLMClient)
    # TRL's colocate start writes these into os.environ: recorded here so that monkeypatch restores them afterwards.
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "localhost"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_PORT", "29555")  # also keeps TRL from probing for a free port
    FakeLLM.instances.clear()
    yield
    FakeLLM.instances.clear()


def _generation(model, mode="colocate", accelerator=None) -> VLLMGeneration:
    """TRL's own VLLMGeneration.__init__ (and _init_vllm), on the fakes of `fake_vllm`."""
    return VLLMGeneration(model=model, accelerator=accelerator or _accelerator(), processing_class=None, mode=mode)


def _trainer(generation, use_vllm=True):
    """The two attributes of a GRPOTrainer that push_dense_weights_to_vllm reads."""
    return SimpleNamespace(use_vllm=use_vllm, vllm_generation=generation)


def _hooked(generation) -> bool:
    """Whether `generation` reads weights through an instance attribute instead of TRL's own method."""
    return "_iter_named_params" in vars(generation)


# --- model ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The tensors here are tiny: with the few shared cores busy, torch's thread pool costs 100x the arithmetic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def lora_4bit(bnb, qwen2_checkpoint):
    """A fresh nf4 Qwen2 + LoRA (non-zero lora_B) per test: TRL's own sync modifies the model it syncs."""
    path, _ = qwen2_checkpoint
    quant = transformers.BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )  # fmt: skip
    base = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16, quantization_config=quant, device_map="cpu"
    )
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=PROJECTIONS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(base, config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # PEFT initialises lora_B to zero: "base + delta" would equal "base"
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


def _lora_layer(model, prefix):
    return model.get_base_model().get_submodule(prefix)


def _dequantized_spot_base(model) -> torch.Tensor:
    from bitsandbytes.functional import dequantize_4bit

    weight = _lora_layer(model, SPOT).base_layer.weight
    return dequantize_4bit(weight.data, weight.quant_state).float()


def _expected_spot_weight(model) -> torch.Tensor:
    """The dense weight of SPOT by hand: dequantized nf4 base + B @ A * alpha / r, in float32."""
    layer = _lora_layer(model, SPOT)
    a, b = layer.lora_A["default"].weight.float(), layer.lora_B["default"].weight.float()
    return _dequantized_spot_base(model) + (b @ a) * SCALING


def _assert_dense_plain_weights(pairs, plain, model, dtype=torch.bfloat16) -> None:
    """`pairs` is exactly the plain model's state dict as dense `dtype` tensors (any floating dtype for None), with
    SPOT equal to its dequantized base + LoRA delta."""
    reference = plain.state_dict()
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), "a tensor was pushed twice in one sync"
    assert set(names) == set(reference)
    for name, tensor in pairs:
        assert type(tensor) is torch.Tensor, (name, type(tensor))  # not a bitsandbytes Params4bit
        assert tensor.is_floating_point() and tensor.dtype == (dtype or tensor.dtype), (name, tensor.dtype)
        assert tensor.shape == reference[name].shape, name
    weights = dict(pairs)
    expected = _expected_spot_weight(model)
    delta = expected - _dequantized_spot_base(model)
    assert delta.abs().max() > 1e-2  # the delta matters at the tolerance below: "base" alone would fail
    torch.testing.assert_close(weights[f"{SPOT}.weight"].float(), expected, rtol=2**-8, atol=1e-6)
    embed = model.get_base_model().model.embed_tokens.weight
    assert torch.equal(weights["model.embed_tokens.weight"], embed)


# --- colocate ---------------------------------------------------------------------------------------------------------


def test_colocate_trl_sync_without_the_hook_pushes_packed_uint8(fake_vllm, lora_4bit):
    """Documents the upstream bug (TRL #4973, #3654): TRL's merge/unmerge sync hands vLLM packed nf4 bytes."""
    generation = _generation(lora_4bit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns about rounding on every 4-bit merge
        generation.sync_weights()
    pushed = dict(FakeLLM.instances[-1].loaded)
    spot = pushed[f"{SPOT}.weight"]
    assert spot.dtype == torch.uint8 and spot.shape[1] == 1, (spot.dtype, spot.shape)


def test_colocate_sync_pushes_dense_weights_and_leaves_the_4bit_base_untouched(fake_vllm, lora_4bit, qwen2_checkpoint):
    _, plain = qwen2_checkpoint
    generation = _generation(lora_4bit)
    llm = FakeLLM.instances[-1]
    frozen = frozen_4bit_state(lora_4bit)
    params = dict(lora_4bit.named_parameters())  # the Parameter objects: a merge would replace the 4-bit ones

    assert push_dense_weights_to_vllm(_trainer(generation)) is True
    assert _hooked(generation)
    for sync in range(3):
        llm.loaded.clear()
        generation.sync_weights()  # TRL's own colocate sync, reading through the hook
        _assert_dense_plain_weights(llm.loaded, plain, lora_4bit)
        assert llm.prefix_cache_resets == sync + 1

    after = frozen_4bit_state(lora_4bit)
    changed = [key for key in frozen if not torch.equal(frozen[key], after[key])]
    assert not changed, f"the frozen 4-bit base was modified: {changed[:5]}"
    assert all(params[name] is param for name, param in lora_4bit.named_parameters())
    assert not any(getattr(module, "merged", False) for module in lora_4bit.modules())


# --- server -----------------------------------------------------------------------------------------------------------


def _assert_metadata_describes(metadata, streamed) -> None:
    """The server allocates its receive buffers from the metadata: it must match the streamed tensors one for one."""
    assert [name for name, _, _ in metadata] == [name for name, _ in streamed]
    for (name, dtype, shape), (_, tensor) in zip(metadata, streamed, strict=True):
        assert dtype == str(tensor.dtype).removeprefix("torch."), name
        assert shape == list(tensor.shape), name


def test_server_sync_announces_and_streams_dense_weights(fake_vllm, lora_4bit, qwen2_checkpoint):
    """TRL walks the weights once for the metadata, then streams them on every sync: both walks are the dense ones."""
    _, plain = qwen2_checkpoint
    generation = _generation(lora_4bit, mode="server")
    client = generation.vllm_client
    frozen = frozen_4bit_state(lora_4bit)

    assert push_dense_weights_to_vllm(_trainer(generation)) is True
    for sync in range(2):
        generation.sync_weights()  # TRL's own server sync, reading through the hook
        metadata, streamed = client.updates[-1]
        _assert_metadata_describes(metadata, streamed)
        assert {dtype for _, dtype, _ in metadata} == {"bfloat16"}
        _assert_dense_plain_weights(streamed, plain, lora_4bit)
        assert client.prefix_cache_resets == sync + 1

    after = frozen_4bit_state(lora_4bit)
    assert not [key for key in frozen if not torch.equal(frozen[key], after[key])]


def test_server_metadata_collected_before_the_hook_is_discarded(fake_vllm, lora_4bit, qwen2_checkpoint):
    """Metadata TRL cached from its own walk (packed uint8 shapes) must not describe the dense stream."""
    _, plain = qwen2_checkpoint
    generation = _generation(lora_4bit, mode="server")
    client = generation.vllm_client
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT warns about rounding on every 4-bit merge
        generation.sync_weights()  # TRL's own walk: caches its metadata on the generation object
    ((stale, _),) = client.updates
    assert ("uint8" in {dtype for _, dtype, _ in stale}) and generation._weight_metadata == stale  # upstream bug

    assert push_dense_weights_to_vllm(_trainer(generation)) is True
    generation.sync_weights()
    metadata, streamed = client.updates[-1]
    _assert_metadata_describes(metadata, streamed)
    # Any float dtype: PEFT's 4-bit merge above re-quantized the base from float32, so it now dequantizes to float32.
    _assert_dense_plain_weights(streamed, plain, lora_4bit, dtype=None)


# --- where the hook does not apply ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["use_vllm is False", "no vllm_generation", "not a PEFT model", "FSDP"])
def test_push_dense_weights_to_vllm_declines(fake_vllm, lora_4bit, qwen2_checkpoint, case):
    _, plain = qwen2_checkpoint
    sentinel = [("kept", "float32", [1])]
    model = plain if case == "not a PEFT model" else lora_4bit
    generation = _generation(model, accelerator=_accelerator(fsdp_version=2 if case == "FSDP" else None))
    assert generation._dist.is_fsdp == (case == "FSDP")  # TRL's own reading of the accelerator
    generation._weight_metadata = sentinel
    trainer = _trainer(None if case == "no vllm_generation" else generation, use_vllm=case != "use_vllm is False")

    assert push_dense_weights_to_vllm(trainer) is False
    assert not _hooked(generation)
    assert generation._weight_metadata is sentinel


def test_push_dense_weights_to_vllm_declines_a_trainer_without_vllm_generation():
    assert push_dense_weights_to_vllm(SimpleNamespace(use_vllm=True)) is False


# --- the colocated engine ---------------------------------------------------------------------------------------------


def test_dense_vllm_engine_starts_trls_colocated_engine_unquantized(fake_vllm, lora_4bit, qwen2_checkpoint):
    """TRL's own _init_vllm, on the 4-bit model: bitsandbytes quantization outside the block, none inside."""
    path, _ = qwen2_checkpoint
    saved = trl_vllm.is_bitsandbytes_available

    _generation(lora_4bit)
    outside = FakeLLM.instances[-1].kwargs
    with dense_vllm_engine():
        assert trl_vllm.is_bitsandbytes_available is not saved
        _generation(lora_4bit)
    inside = FakeLLM.instances[-1].kwargs

    assert trl_vllm.is_bitsandbytes_available is saved
    assert outside["quantization"] == "bitsandbytes"
    assert inside["quantization"] is None
    assert inside["model"] == outside["model"] == str(path)  # the dense qwen2_checkpoint, loaded by vLLM itself
    assert {key: value for key, value in inside.items() if key != "quantization"} == {
        key: value for key, value in outside.items() if key != "quantization"
    }


def test_dense_vllm_engine_restores_trl_on_error():
    saved = trl_vllm.is_bitsandbytes_available
    with pytest.raises(RuntimeError, match="boom"), dense_vllm_engine():
        assert trl_vllm.is_bitsandbytes_available() is False
        raise RuntimeError("boom")
    assert trl_vllm.is_bitsandbytes_available is saved
