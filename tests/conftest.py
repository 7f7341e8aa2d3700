"""Shared fixtures: a GSM8K sample kept in the repository, the full copy where one lies beside the checkout,
and a tiny llama built from the embedded tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# The first 64 train and 24 test rows of GSM8K "main" (MIT, see its LICENSE): every smoke test runs in a bare clone.
FIXTURE_GSM8K = Path(__file__).resolve().parent / "data" / "gsm8k"
# The whole data set, for the few checks that need all of it (answer checker vs 5,276 labelled solutions).
SHARED_GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    return FIXTURE_GSM8K


@pytest.fixture(scope="session")
def full_gsm8k_dir() -> Path:
    if not (SHARED_GSM8K / "train.jsonl").is_file():
        pytest.skip(f"the full GSM8K copy is not beside the checkout ({SHARED_GSM8K})")
    return SHARED_GSM8K


@pytest.fixture(scope="session")
def gsm8k_rows(gsm8k_dir) -> list[dict]:
    with (gsm8k_dir / "train.jsonl").open() as f:
        return [json.loads(line) for _, line in zip(range(64), f, strict=False)]


@pytest.fixture(scope="session")
def embedded_dir(tmp_path_factory) -> Path:
    """The embedded model materialised once per test session into a private cache."""
    from r1lite.models import materialise_embedded

    return materialise_embedded("smollm2-135m-instruct", tmp_path_factory.mktemp("cache") / "smollm2")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_dir) -> Path:
    """A randomly initialised 2-layer llama with the embedded model's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory, embedded_dir) -> Path:
    """A randomly initialised 2-layer Qwen2 (the published recipe's architecture), with the embedded tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-qwen2")
    Qwen2ForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
