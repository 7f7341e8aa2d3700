"""The CPU fast path: merged generation samples from the same model, settings respect the user, and every
GRPO step logs where its time went."""

import json

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer

from r1lite.attention import GROUPED_ATTENTION
from r1lite.data import prepare
from r1lite.models import lora_config
from r1lite.speed import (
    PHASES,
    CPUFastPathMixin,
    TimedGRPOMixin,
    lora_layers,
    merged_copy,
    sync_merged,
)
from tests.helpers import length_reward

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ----------------------------------------------------------------------------------------------- merging


@pytest.fixture()
def lora_model(tiny_model_dir):
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora_config(4, 8, 0.0, TARGETS))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # a fresh adapter is a no-op; give it an effect to merge
                param.normal_(std=0.05)
    return model


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_merged_copy_computes_what_the_adapter_computes(lora_model):
    ids = torch.randint(0, 1000, (2, 12))
    base_before = {n: p.clone() for n, p in lora_model.named_parameters() if "lora" not in n}
    layers = lora_layers(lora_model)
    assert layers and len(layers) == 2 * len(TARGETS)  # 2 layers in the tiny llama
    merged = merged_copy(lora_model)
    assert merged.config._attn_implementation == GROUPED_ATTENTION  # it only generates, on a CPU
    sync_merged(merged, layers)
    torch.testing.assert_close(_logits(merged, ids), _logits(lora_model, ids), atol=1e-5, rtol=1e-4)
    # The training model keeps its own, unmerged weights.
    assert all(torch.equal(p, base_before[n]) for n, p in lora_model.named_parameters() if "lora" not in n)
    assert not any(layer.merged for layer in layers.values())


def test_sync_follows_adapter_updates(lora_model):
    ids = torch.randint(0, 1000, (2, 12))
    layers = lora_layers(lora_model)
    merged = merged_copy(lora_model)
    with torch.no_grad():
        for name, param in lora_model.named_parameters():
            if "lora_A" in name:
                param.mul_(2.0)  # an optimizer step's worth of change
    assert not torch.allclose(_logits(merged, ids), _logits(lora_model, ids), atol=1e-4)
    sync_merged(merged, layers)
    torch.testing.assert_close(_logits(merged, ids), _logits(lora_model, ids), atol=1e-5, rtol=1e-4)


def test_merged_copy_does_not_run_the_training_model(lora_model):
    from trl.trainer.utils import add_fused_lm_head

    # GRPOTrainer patches the base model's forward with a closure over that very model.
    add_fused_lm_head(lora_model.get_base_model())
    merged = merged_copy(lora_model)
    sync_merged(merged, lora_layers(lora_model))
    calls = []
    lora_model.get_base_model().lm_head.register_forward_hook(lambda *args: calls.append(1))
    ids = torch.randint(0, 1000, (2, 12))
    merged_logits = _logits(merged, ids)
    assert not calls, "sampling ran the training model instead of the merged copy"
    torch.testing.assert_close(merged_logits, _logits(lora_model, ids), atol=1e-5, rtol=1e-4)


def test_lora_layers_refuses_what_it_cannot_merge(tiny_model_dir):
    assert lora_layers(AutoModelForCausalLM.from_pretrained(tiny_model_dir)) is None


# ----------------------------------------------------------------------------------------------- timing


class _TimedTrainer(TimedGRPOMixin, CPUFastPathMixin, GRPOTrainer):
    pass


@pytest.fixture(scope="module")
def timed_run(tmp_path_factory, tiny_model_dir, gsm8k_rows):
    dataset, _ = prepare(gsm8k_rows[:16])
    args = GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("timed")), use_cpu=True, bf16=False, max_steps=2,
        per_device_train_batch_size=4, num_generations=4, max_completion_length=8, learning_rate=1e-2,
        beta=0.04, gradient_checkpointing=False, logging_steps=1, report_to="none", save_strategy="no", seed=0,
    )
    trainer = _TimedTrainer(
        model=str(tiny_model_dir), reward_funcs=[length_reward], args=args, train_dataset=dataset,
        peft_config=lora_config(4, 8, 0.0, TARGETS), cpu_fast_path=True,
    )
    trainer.train()
    return trainer


def test_every_step_logs_its_phase_times(timed_run):
    steps = [record for record in timed_run.state.log_history if "reward" in record]
    assert len(steps) == 2
    for record in steps:
        times = {phase: record[f"time/{phase}"] for phase in PHASES}
        assert all(seconds >= 0 for seconds in times.values()), times
        # beta > 0: the reference pass runs, so every phase took some time.
        assert all(times[p] > 0 for p in ("generation", "rewards", "logprobs", "backward", "optimizer")), times
        parts = sum(times[p] for p in PHASES if p != "step")
        assert parts <= times["step"] * 1.01, times


def test_generation_used_the_merged_copy(timed_run):
    assert timed_run._merged_model is not None
    assert timed_run._merged_at_step == 1  # refreshed for the second step's rollout
    assert timed_run.model_wrapped is not timed_run._merged_model  # restored after generating
    assert timed_run.model.config._attn_implementation == GROUPED_ATTENTION  # in the loss passes too
    assert torch.multinomial.__module__ == "torch"  # fast_sampling restored it


def test_train_logs_phase_times_to_metrics_jsonl(tmp_path, tiny_model_dir, gsm8k_dir):
    from r1lite import train as train_module
    from r1lite.config import parse_run_config

    assert issubclass(train_module.R1Trainer, TimedGRPOMixin)
    argv = [
        "--model", str(tiny_model_dir), "--dataset", str(gsm8k_dir / "train.jsonl"), "--output_dir", str(tmp_path),
        "--max_train_samples", "8", "--max_steps", "1", "--precision", "fp32", "--per_device_train_batch_size", "4",
        "--num_generations", "4", "--max_completion_length", "8", "--lora_r", "4", "--lora_alpha", "8",
        "--rewards", "tests.helpers:length_reward", "--seed", "0",
    ]
    train_module.train(parse_run_config(argv))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in records if "reward" in r)
    assert all(step[f"time/{phase}"] >= 0 for phase in PHASES)


@pytest.mark.parametrize("entropy_grad", [False, True])
def test_cpu_lm_head_computes_what_trls_fused_head_computes(tiny_model_dir, entropy_grad):
    import trl.trainer.utils as trl_utils
    from trl.trainer.utils import add_fused_lm_head

    from r1lite.speed import CPULogProbs, cpu_lm_head

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    ids = torch.randint(0, 1000, (3, 40))
    labels = ids.clone()
    labels[:, :10] = -100  # prompt positions are not scored
    labels[0, 30:] = -100  # nor padding

    def run():
        model.zero_grad()
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        loss = out.log_probs.sum() + (0.1 * out.entropy.sum() if entropy_grad else 0)
        loss.backward()
        return [out.log_probs.detach(), out.entropy.detach()] + [p.grad.clone() for p in model.parameters()]

    reference = run()
    with cpu_lm_head(entropy_grad):
        assert isinstance(trl_utils._ChunkedLogProbFunction, CPULogProbs)
        ours = run()
    assert not isinstance(trl_utils._ChunkedLogProbFunction, CPULogProbs)  # restored
    assert reference[0][0, 30:].eq(0).all() and ours[0][0, 30:].eq(0).all()
    for a, b in zip(reference, ours, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_cpu_lm_head_chunks_agree_and_hand_other_outputs_to_trl():
    from trl.kernels import ChunkedLogProbFunction

    from r1lite.speed import CPULogProbs

    torch.manual_seed(0)
    hidden, weight, targets = torch.randn(37, 16), torch.randn(50, 16), torch.randint(0, 50, (37,))
    args = (hidden, weight, None, targets, 1.0, 32)
    whole = CPULogProbs(ChunkedLogProbFunction, tokens=1000).apply(*args, outputs=("log_probs", "entropy"))
    chunked = CPULogProbs(ChunkedLogProbFunction, tokens=5).apply(*args, outputs=("log_probs", "entropy"))
    torch.testing.assert_close(whole[0], chunked[0])
    torch.testing.assert_close(whole[1], chunked[1])
    torch.testing.assert_close(whole[0], torch.log_softmax(hidden @ weight.T, -1).gather(-1, targets[:, None])[:, 0])
    # Fields CPULogProbs does not compute come from TRL's function.
    is_top1 = CPULogProbs(ChunkedLogProbFunction).apply(*args, outputs=("log_probs", "is_top1"))[4]
    assert torch.equal(is_top1, (hidden @ weight.T).argmax(-1) == targets)


def test_fast_sampling_draws_from_the_same_distribution_and_restores_torch():
    from r1lite.speed import fast_sampling

    original = torch.multinomial
    probs = torch.tensor([[0.1, 0.0, 0.2, 0.3, 0.4]]).repeat(40_000, 1)
    generator = torch.Generator().manual_seed(0)
    with fast_sampling():
        assert torch.multinomial is not original
        draws = torch.multinomial(probs, num_samples=1, generator=generator)
        weights = torch.multinomial(probs * 7, num_samples=1)  # unnormalised weights, as torch accepts
        several = torch.multinomial(probs[:3], num_samples=2)  # not one draw per row: torch's own
    assert torch.multinomial is original
    assert draws.shape == (40_000, 1) and several.shape == (3, 2)
    frequencies = torch.bincount(draws[:, 0], minlength=5) / 40_000
    assert frequencies[1] == 0  # a word with probability 0 is never drawn
    torch.testing.assert_close(frequencies, probs[0], atol=0.01, rtol=0)  # 4-5 standard errors
    torch.testing.assert_close(torch.bincount(weights[:, 0], minlength=5) / 40_000, probs[0], atol=0.01, rtol=0)


def test_grouped_attention_trains_like_the_default_attention(tiny_model_dir):
    from r1lite.attention import use_grouped_attention

    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (3, 20))
    mask = torch.ones_like(ids)
    mask[0, :6] = 0  # left padding

    def grads(model):
        model.zero_grad()
        logits = model(input_ids=ids, attention_mask=mask).logits
        logits[mask.bool()].logsumexp(-1).sum().backward()
        return [logits.detach()[mask.bool()]] + [p.grad.clone() for p in model.parameters()]

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reference = grads(model)
    assert use_grouped_attention(model)
    assert model.config._attn_implementation == GROUPED_ATTENTION
    for a, b in zip(reference, grads(model), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    model.config.attention_dropout = 0.1
    assert not use_grouped_attention(model)  # the formula has no dropout
