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


def _tiny_random_model(tmp_path_factory, embedded_dir: Path, architecture: str) -> Path:
    """A randomly initialised 2-layer model of `architecture` (llama, qwen2) with the embedded model's tokenizer and
    chat template: seconds to train, the same code paths as the real thing."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    # fmt: off
    config = AutoConfig.for_model(
        architecture, vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    # fmt: on
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp(f"tiny-{architecture}")
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_dir) -> Path:
    """A tiny random llama: the embedded model's architecture."""
    return _tiny_random_model(tmp_path_factory, embedded_dir, "llama")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory, embedded_dir) -> Path:
    """A tiny random Qwen2: the published recipe's architecture."""
    return _tiny_random_model(tmp_path_factory, embedded_dir, "qwen2")


@pytest.fixture(scope="session")
def bnb():
    """bitsandbytes, where it imports and quantizes to nf4 on this machine (it does on x86 CPUs)."""
    import torch

    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    try:
        from bitsandbytes.functional import dequantize_4bit, quantize_4bit

        packed, state = quantize_4bit(torch.randn(64, 64), quant_type="nf4", compress_statistics=True)
        assert dequantize_4bit(packed, state).shape == (64, 64)
    except Exception as exc:  # noqa: BLE001 - any failure means "no usable 4-bit backend here"
        pytest.skip(f"bitsandbytes {bnb.__version__} cannot quantize to nf4 on this machine: {exc!r}")
    return bnb


@pytest.fixture(scope="module")
def qwen2_checkpoint(tmp_path_factory):
    """A random tiny Qwen2 saved in bf16, the dtype the recipe loads; also returned as the plain model (the names
    and shapes vLLM loads)."""
    import torch
    from transformers import Qwen2ForCausalLM

    from tests.helpers import tiny_qwen2_config

    torch.manual_seed(0)
    plain = Qwen2ForCausalLM(tiny_qwen2_config()).to(torch.bfloat16)
    path = tmp_path_factory.mktemp("tiny-qwen2-bf16")
    plain.save_pretrained(path)
    return path, plain
