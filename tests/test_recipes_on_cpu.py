"""Every shipped recipe trains one step on a CPU, as written, with its model swapped for a tiny random model of the
same architecture. The test reads each recipe file; it swaps only what docs/gpu.md says a CPU rehearsal swaps:

- the model: a tiny random model of the same architecture (Qwen2 for Qwen/*, llama for the embedded model);
- the size of the run: one step, 8-token completions, a few dozen rows of the GSM8K sample in tests/data;
- init_adapter: none (the SFT adapter a CPU recipe starts from is a file of an earlier run);
- the CUDA-only keys are left as written: r1lite itself replaces them on a CPU, with a warning each
  (load_in_4bit -> the CPU precision, use_vllm -> transformers generation, adamw_8bit -> adamw_torch).
"""

import logging
from pathlib import Path

import pytest
import yaml

from r1lite.config import RunConfig, SFTRunConfig, parse_config
from r1lite.sft import sft
from r1lite.train import train

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
SHRINK = ["--max_steps", "1", "--max_train_samples", "16", "--save_steps", "100"]


def _tiny_model_for(recipe: dict, tiny_model_dir: Path, tiny_qwen2_dir: Path) -> Path:
    model = recipe["model"]
    if model.startswith("Qwen/Qwen2"):
        return tiny_qwen2_dir
    assert model.startswith("embedded:"), f"no tiny stand-in for {model}: add one"
    return tiny_model_dir


@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_trains_one_step_on_cpu(path, tmp_path, tiny_model_dir, tiny_qwen2_dir, gsm8k_dir, caplog):
    recipe = yaml.safe_load(path.read_text())
    model = _tiny_model_for(recipe, tiny_model_dir, tiny_qwen2_dir)
    argv = [
        "--config",
        str(path),
        "--model",
        str(model),
        "--dataset",
        str(gsm8k_dir),
        "--output_dir",
        str(tmp_path / "run"),
        *SHRINK,
    ]
    caplog.set_level(logging.WARNING)
    if path.read_text().startswith("# r1lite sft"):
        adapter = sft(parse_config(SFTRunConfig, argv))
    else:
        adapter = train(parse_config(RunConfig, [*argv, "--max_completion_length", "8", "--init_adapter", ""]))
    assert (adapter / "adapter_model.safetensors").is_file()
    warnings = caplog.text
    if recipe.get("use_vllm"):
        assert "use_vllm needs a CUDA GPU here" in warnings
    if recipe.get("load_in_4bit"):
        assert "load_in_4bit needs a CUDA GPU" in warnings
    if "8bit" in str(recipe.get("optim", "")):
        assert "using adamw_torch on CPU" in warnings


def test_every_recipe_is_rehearsed():
    names = {p.name for p in RECIPES}
    assert {
        "qwen2.5-3b-gsm8k.yaml",
        "qwen2.5-3b-gsm8k-bf16.yaml",
        "qwen2.5-3b-gsm8k-multi-gpu.yaml",
        "cpu-demo.yaml",
        "cpu-sft.yaml",
        "cpu-arith.yaml",
        "cpu-zero.yaml",
    } <= names
