"""preflight: combinations that would fail deep inside TRL, vLLM or bitsandbytes stop before a model loads, with
one line that says what runs instead."""

from types import SimpleNamespace

import pytest

from r1lite.config import RunConfig, parse_config
from r1lite.errors import ConfigError, ModelError
from r1lite.train import preflight


def _args(**overrides):
    return SimpleNamespace(**{"use_vllm": False, "optim": "adamw_torch", "vllm_mode": "colocate", **overrides})


def _config(*argv):
    return parse_config(RunConfig, list(argv))


@pytest.fixture(autouse=True)
def _no_launcher(monkeypatch):
    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_DEEPSPEED_ZERO_STAGE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


def test_a_plain_run_passes():
    preflight(_args(), _config(), "cpu")
    preflight(_args(), _config("--load_in_4bit", "true"), "cpu")  # replaced by the CPU precision, with a warning


def test_vllm_missing_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "vllm" else real(name))
    with pytest.raises(ModelError, match=r"pip install 'r1lite\[gpu\]' \(or set use_vllm false\)"):
        preflight(_args(use_vllm=True), _config(), "cuda")


def test_full_fine_tuning_of_a_4bit_model_is_refused():
    with pytest.raises(ConfigError, match="set use_lora true"):
        preflight(_args(), _config("--load_in_4bit", "true", "--use_lora", "false"), "cuda")


@pytest.mark.parametrize(
    "env, name", [({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "zero3"), ({"ACCELERATE_USE_FSDP": "true"}, "fsdp")]
)
def test_4bit_with_sharding(monkeypatch, env, name):
    import r1lite.train as train_module

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(train_module.importlib.util, "find_spec", lambda n: object())  # vLLM, bitsandbytes present
    with pytest.raises(ConfigError, match=f"4-bit base with {name} needs bnb_4bit_quant_storage"):
        preflight(_args(), _config("--load_in_4bit", "true"), "cuda")
    stored = _config("--load_in_4bit", "true", "--bnb_4bit_quant_storage", "bfloat16")
    preflight(_args(), stored, "cuda")  # PEFT's QLoRA + ZeRO-3/FSDP route
    with pytest.raises(ConfigError, match="vLLM weight sync needs whole 4-bit layers"):
        preflight(_args(use_vllm=True), stored, "cuda")
    with pytest.raises(ConfigError, match="eval_every runs on the main process alone"):
        preflight(_args(), _config("--eval_every", "5"), "cuda")


def test_colocate_with_more_processes_than_gpus(monkeypatch):
    import r1lite.train as train_module

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(train_module, "_gpu_count", lambda: 1)
    monkeypatch.setattr(train_module.importlib.util, "find_spec", lambda name: object())  # as if vLLM were there
    with pytest.raises(ConfigError, match="2 processes on 1 GPU"):
        preflight(_args(use_vllm=True), _config(), "cuda")
    preflight(_args(use_vllm=True, vllm_mode="server"), _config(), "cuda")
    monkeypatch.setattr(train_module, "_gpu_count", lambda: 2)
    preflight(_args(use_vllm=True), _config(), "cuda")
