"""Recipes parse and build a GRPOConfig; bad keys and values fail with a message naming them."""

from pathlib import Path

import pytest
import yaml

from r1lite.config import ConfigError, parse_run_config
from r1lite.train import build_grpo_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"cpu-demo.yaml", "qwen2.5-3b-gsm8k.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses_and_builds_a_trainer_config(recipe):
    first_line = recipe.read_text().splitlines()[0]
    assert first_line.startswith("# r1lite ") and str(recipe.name) in first_line  # the command that runs it
    if first_line.startswith("# r1lite sft "):
        from r1lite.sft import parse_sft_config

        _, _, sft_args = parse_sft_config(["--config", str(recipe)], device="cpu")
        assert sft_args.max_steps > 0 and sft_args.use_cpu
        return
    config = parse_run_config(["--config", str(recipe)])
    args = build_grpo_config(config, device="cpu")
    assert args.num_generations >= 2
    assert args.per_device_train_batch_size % args.num_generations == 0
    assert args.use_cpu and not args.use_vllm  # GPU-only settings are replaced on CPU


def test_qwen_recipe_maps_the_published_settings():
    config = parse_run_config(["--config", str(Path(RECIPES[0]).parent / "qwen2.5-3b-gsm8k.yaml")])
    m, g = config.model, config.grpo
    assert (m.model, m.load_in_4bit, m.lora_r, m.lora_alpha) == ("Qwen/Qwen2.5-3B-Instruct", True, 64, 64)
    assert m.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert g["use_vllm"] and g["vllm_gpu_memory_utilization"] == 0.5
    assert (g["learning_rate"], g["adam_beta1"], g["adam_beta2"], g["weight_decay"]) == (5e-6, 0.9, 0.99, 0.1)
    assert g["warmup_steps"] == 0.1 and g["lr_scheduler_type"] == "cosine" and g["optim"] == "adamw_8bit"
    assert (g["num_generations"], g["max_completion_length"], g["max_steps"], g["save_steps"]) == (8, 200, 250, 250)
    assert g["max_grad_norm"] == 0.1 and g["beta"] == 0.04 and g["loss_type"] == "grpo"
    assert config.data.max_prompt_length == 256
    config.model.precision = "fp32"  # bf16/fp16 flags would make GRPOConfig look for a GPU on this machine
    args = build_grpo_config(config, device="cuda")  # on a GPU the 8-bit optimizer and vLLM stay
    assert args.optim == "adamw_8bit" and args.use_vllm and args.warmup_steps == 0.1


def test_cli_overrides_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"max_steps": 10, "learning_rate": 1e-5, "lora_r": 8}))
    config = parse_run_config(["--config", str(recipe), "--max_steps", "2", "--output_dir", str(tmp_path / "o")])
    assert config.grpo["max_steps"] == 2 and config.grpo["learning_rate"] == 1e-5 and config.model.lora_r == 8
    assert config.output_dir == tmp_path / "o"


def test_resolved_config_round_trips(tmp_path):
    config = parse_run_config(["--lora_r", "16", "--few_shot", "2", "--max_steps", "3"])
    config.save(tmp_path / "config.yaml")
    again = parse_run_config(["--config", str(tmp_path / "config.yaml")])
    assert again.to_flat_dict() == config.to_flat_dict()


@pytest.mark.parametrize(
    "recipe, argv, match",
    [
        ({"max_stepz": 2}, [], "unknown key 'max_stepz'.*max_steps"),
        ({"max_steps": "many"}, [], "max_steps.*invalid int value"),
        ({"lora_r": {"a": 1}}, [], "lora_r.*mapping"),
        ({}, ["--no_such_flag", "1"], "--no_such_flag"),
        ({}, ["--learning_rate", "fast"], "learning_rate"),
        ({"reward_set": "best"}, [], "reward_set"),
        ({"precision": "int3"}, [], "precision"),
        ({"per_device_train_batch_size": 3}, [], "divisible by num_generations"),
        ({"lora_r": 0}, [], "lora_r must be positive"),
        ({"few_shot": -1}, [], "few_shot"),
        ({"on_reward_error": "ignore"}, [], "on_reward_error"),
    ],
)
def test_bad_keys_and_values_name_the_key(tmp_path, recipe, argv, match):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match=match):
        parse_run_config(["--config", str(path), *argv])


def test_recipe_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        parse_run_config(["--config", str(path)])
    with pytest.raises(ConfigError, match="not found"):
        parse_run_config(["--config", str(tmp_path / "missing.yaml")])
