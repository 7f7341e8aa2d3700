"""Recipes parse and build a GRPOConfig; bad keys and values fail with a message naming them."""

from pathlib import Path

import pytest
import yaml

from r1lite.config import ChatConfig, EvalConfig, RewardsCheckConfig, RunConfig, SFTRunConfig, parse_config
from r1lite.errors import ConfigError, R1liteError
from r1lite.sft import build_sft_config
from r1lite.train import build_grpo_config


def parse_run_config(argv):
    return parse_config(RunConfig, argv)


RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"cpu-demo.yaml", "qwen2.5-3b-gsm8k.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses_and_builds_a_trainer_config(recipe):
    first_line = recipe.read_text().splitlines()[0]
    assert first_line.startswith("# r1lite ") and str(recipe.name) in first_line  # the command that runs it
    if first_line.startswith("# r1lite sft "):
        sft_args = build_sft_config(parse_config(SFTRunConfig, ["--config", str(recipe)]), device="cpu")
        assert sft_args.max_steps > 0 and sft_args.use_cpu
        return
    config = parse_run_config(["--config", str(recipe)])
    args = build_grpo_config(config, device="cpu")
    assert args.num_generations >= 2
    assert args.generation_batch_size % args.num_generations == 0
    assert args.use_cpu and not args.use_vllm  # GPU-only settings are replaced on CPU


def test_qwen_recipe_maps_the_published_settings():
    config = parse_run_config(["--config", str(Path(RECIPES[0]).parent / "qwen2.5-3b-gsm8k.yaml")])
    m, lora, g = config.model, config.lora, config.trl
    assert (m.model, m.load_in_4bit, lora.lora_r, lora.lora_alpha) == ("Qwen/Qwen2.5-3B-Instruct", True, 64, 64)
    assert lora.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert g["use_vllm"] and g["vllm_mode"] == "colocate"
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
    assert config.trl["max_steps"] == 2 and config.trl["learning_rate"] == 1e-5 and config.lora.lora_r == 8
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
        ({"rewards": ["corectness"]}, [], "unknown reward 'corectness'"),
        ({"rewards": ["nosuchpkg.mod:fn"]}, [], "cannot import"),
        ({"reward_weights": [1.0, 2.0]}, [], "reward_weights has 2 values for 5 rewards"),
        ({"eval_split": "test"}, [], "'eval_split' is now dataset_test_split"),
        ({"init_adapter": "a", "use_lora": False}, [], "init_adapter needs use_lora"),
        ({"resume": True, "overwrite": True}, [], "exclude each other"),
        ({"max_train_samples": 0}, [], "max_train_samples must be positive"),
        ({"torch_dtype": "float8"}, [], "torch_dtype"),
        ({"bnb_4bit_quant_storage": "bfloat16"}, [], "applies to 4-bit loading"),
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


def test_malformed_yaml_names_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("max_steps: 2\nlearning_rate: [1e-5\nlora_r: 8\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+, column \d+"):
        parse_run_config(["--config", str(path)])


def test_every_error_class_derives_from_one_base():
    import inspect

    import r1lite.errors as errors

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(classes) >= 7
    assert all(issubclass(c, R1liteError) for c in classes)


def test_group_arithmetic_counts_every_process(monkeypatch):
    # 4 per device x 1 process holds one group of 4; with 3 processes the batch of 12 holds three.
    argv = ["--per_device_train_batch_size", "4", "--num_generations", "8"]
    with pytest.raises(ConfigError, match=r"4 x 1 x 1 = 4 must be divisible by num_generations \(8\)"):
        parse_run_config(argv)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert parse_run_config(argv).trl["num_generations"] == 8  # 4 x 2 = 8: one whole group


@pytest.mark.parametrize("cls", [RunConfig, SFTRunConfig, EvalConfig, ChatConfig, RewardsCheckConfig])
def test_the_same_idea_has_the_same_name_in_every_command(cls):
    from r1lite.config import build_parser

    keys = {a.dest for a in build_parser(cls)._actions}
    for old in ("split", "limit", "n", "num_samples", "max_new_tokens", "dataset_split", "eval_split"):
        assert old not in keys, f"{cls.prog} still has --{old}"
    if cls not in (SFTRunConfig,):
        assert {"num_generations", "max_completion_length", "temperature"} <= keys
    if cls is not ChatConfig:
        assert {"dataset", "dataset_train_split", "dataset_test_split", "model", "precision"} <= keys


def test_generation_defaults_per_command():
    chat = parse_config(ChatConfig, ["hello there"])
    assert chat.chat.question == "hello there"
    assert (chat.generation.temperature, chat.generation.top_p, chat.generation.max_completion_length) == (
        0.8,
        0.95,
        1024,
    )
    assert parse_config(EvalConfig, []).generation.temperature == 0.0  # greedy with one reply
    assert parse_config(EvalConfig, ["--num_generations", "4"]).generation.temperature == 0.8
    check = parse_config(RewardsCheckConfig, [])
    assert (check.data.max_train_samples, check.generation.num_generations) == (4, 8)


@pytest.mark.parametrize(
    "cls, argv, match",
    [
        (EvalConfig, ["--baseline"], "pass --adapter"),
        (EvalConfig, ["--max_eval_samples", "0"], "max_eval_samples must be positive"),
        (EvalConfig, ["--max_eval_samples", "-3"], "max_eval_samples must be positive"),
        (EvalConfig, ["--num_generations", "2", "--temperature", "0"], "temperature > 0"),
        (EvalConfig, ["--top_p", "1.5"], "top_p"),
        (EvalConfig, ["--backend", "tpu"], "backend"),
        (ChatConfig, ["   "], "the question is empty"),
        (RewardsCheckConfig, ["--num_generations", "1"], "at least 2"),
        (RewardsCheckConfig, ["--rewards", "nope"], "unknown reward 'nope'"),
        (SFTRunConfig, ["--init_adapter", "x"], "init_adapter is for r1lite train"),
    ],
)
def test_every_command_validates_before_loading_anything(cls, argv, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(cls, argv)


def test_sft_saves_a_config_that_parses_again(tmp_path):
    config = parse_config(SFTRunConfig, ["--max_steps", "3", "--lora_r", "8", "--output_dir", str(tmp_path)])
    config.save(tmp_path / "config.yaml")
    again = parse_config(SFTRunConfig, ["--config", str(tmp_path / "config.yaml")])
    assert again.to_flat_dict() == config.to_flat_dict() and again.trl["max_steps"] == 3
