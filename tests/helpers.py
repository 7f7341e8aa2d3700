"""Reward functions for tests, importable by dotted path like a user's own rewards."""

from r1lite.rewards.base import completion_texts


def length_reward(prompts, completions, **kwargs):
    """Differs between almost any two completions: gives a random model a learning signal."""
    return [len(text) / 100.0 for text in completion_texts(completions)]


def failing_reward(prompts, completions, **kwargs):
    """Raises on completions containing the letter 'e' (most), scores the rest 1.0."""
    out = []
    for text in completion_texts(completions):
        if "e" in text:
            raise ValueError("cannot score this one")
        out.append(1.0)
    return out


def short_reward(prompts, completions, **kwargs):
    """Returns one score too few."""
    return [1.0] * (len(completions) - 1)


def string_reward(prompts, completions, **kwargs):
    return ["1.0" if i == 1 else 1.0 for i in range(len(completions))]


def nan_reward(prompts, completions, **kwargs):
    return [float("nan") if i == 1 else 0.5 for i in range(len(completions))]


def none_reward(prompts, completions, **kwargs):
    return [None if i == 1 else 0.5 for i in range(len(completions))]


def slow_reward(prompts, completions, **kwargs):
    import time

    end = time.monotonic() + 5
    while time.monotonic() < end:  # pure Python: the time limit can interrupt it
        pass
    return [1.0] * len(completions)


not_a_function = 42


def tiny_qwen2_config(tie_word_embeddings: bool = False):
    """A 2-layer Qwen2 (the published recipe's architecture) small enough for 4-bit tests on a CPU."""
    from transformers import Qwen2Config

    return Qwen2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
        vocab_size=256, max_position_embeddings=128, tie_word_embeddings=tie_word_embeddings,
    )  # fmt: skip


def tiny_run_argv(model_dir, dataset, out, *extra) -> list[str]:
    """`r1lite train` flags for a run of seconds on a tiny model; flags in `extra` come later and win."""
    # fmt: off
    settings = {
        "model": model_dir, "dataset": dataset, "output_dir": out, "max_train_samples": 16, "max_steps": 2,
        "precision": "fp32", "per_device_train_batch_size": 4, "num_generations": 4, "max_completion_length": 8,
        "lora_r": 4, "lora_alpha": 8, "gradient_checkpointing": "false", "seed": 0,
    }
    # fmt: on
    return [token for key, value in settings.items() for token in (f"--{key}", str(value))] + [str(e) for e in extra]


def frozen_4bit_state(model) -> dict:
    """Clones of every tensor that defines a frozen 4-bit base: packed nf4 bytes and (double-)quantization stats."""
    state = {}
    for name, param in model.named_parameters():
        quant = getattr(param, "quant_state", None)
        if quant is None:
            continue
        state[f"{name}:packed"] = param.data.clone()
        state[f"{name}:absmax"] = quant.absmax.clone()
        state[f"{name}:code"] = quant.code.clone()
        if quant.nested:
            state[f"{name}:offset"] = quant.offset.clone()
            state[f"{name}:state2.absmax"] = quant.state2.absmax.clone()
            state[f"{name}:state2.code"] = quant.state2.code.clone()
    assert state, "no 4-bit parameters: the model was not quantized"
    return state
