"""The CPU trainer: merged generation samples from the same model, each part of the fast path provably engages,
the plain trainer is TRL's own, and every step logs where its time went."""

import json

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer

from r1lite.attention import GROUPED_ATTENTION
from r1lite.callbacks import ReleaseFreeMemory
from r1lite.cpu_fast_path import FAST_PATH_PARTS, CPUFastGRPOTrainer, CPULogProbs, FusedLoRA, fast_sampling
from r1lite.data import prepare
from r1lite.decoder import LeanDecoder
from r1lite.models import lora_config, lora_layers, merged_copy, refresh_merged
from r1lite.timing import PHASES
from r1lite.trl_compat import cpu_lm_head, trl_log_probs_function
from tests.helpers import length_reward, tiny_run_argv

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
    refresh_merged(merged, layers)
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
    refresh_merged(merged, layers)
    torch.testing.assert_close(_logits(merged, ids), _logits(lora_model, ids), atol=1e-5, rtol=1e-4)


def test_merged_copy_does_not_run_the_training_model(lora_model):
    from trl.trainer.utils import add_fused_lm_head

    # GRPOTrainer patches the base model's forward with a closure over that very model.
    add_fused_lm_head(lora_model.get_base_model())
    merged = merged_copy(lora_model)
    refresh_merged(merged, lora_layers(lora_model))
    calls = []
    lora_model.get_base_model().lm_head.register_forward_hook(lambda *args: calls.append(1))
    ids = torch.randint(0, 1000, (2, 12))
    merged_logits = _logits(merged, ids)
    assert not calls, "sampling ran the training model instead of the merged copy"
    torch.testing.assert_close(merged_logits, _logits(lora_model, ids), atol=1e-5, rtol=1e-4)


def test_lora_layers_refuses_what_it_cannot_merge(tiny_model_dir):
    assert lora_layers(AutoModelForCausalLM.from_pretrained(tiny_model_dir)) is None


# ----------------------------------------------------------------------------------------------- timing


def _grpo_args(out, **overrides):
    return GRPOConfig(
        **{
            "output_dir": str(out),
            "use_cpu": True,
            "bf16": False,
            "max_steps": 2,
            "per_device_train_batch_size": 4,
            "num_generations": 4,
            "max_completion_length": 8,
            "learning_rate": 1e-2,
            "beta": 0.04,
            "gradient_checkpointing": False,
            "logging_steps": 1,
            "report_to": "none",
            "save_strategy": "no",
            "seed": 0,
            **overrides,
        }
    )


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory, tiny_model_dir, gsm8k_rows):
    import r1lite.attention as attention

    dataset, _ = prepare(gsm8k_rows[:16])
    # Count the calls of each part: a renamed TRL internal would make a part silently stop applying.
    calls = {"grouped_attention": 0, "lean_decoder": 0}
    real = attention.grouped_attention
    lean_call = LeanDecoder.__call__

    def counted(*args, **kwargs):
        calls["grouped_attention"] += 1
        return real(*args, **kwargs)

    def counted_lean(*args):
        calls["lean_decoder"] += 1
        return lean_call(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attention, "grouped_attention", counted)  # what use_grouped_attention registers
        patch.setattr(LeanDecoder, "__call__", counted_lean)
        trainer = CPUFastGRPOTrainer(
            model=str(tiny_model_dir),
            reward_funcs=[length_reward],
            # As `r1lite train` runs it: gradient checkpointing, which hooks the model's input embeddings.
            args=_grpo_args(
                tmp_path_factory.mktemp("fast"),
                gradient_checkpointing=True,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            ),
            train_dataset=dataset,
            peft_config=lora_config(4, 8, 0.0, TARGETS),
        )
        trainer.train()
    attention.use_grouped_attention(trainer.model)  # register the real function again for later tests
    trainer.test_calls = calls
    return trainer


def test_every_step_logs_its_phase_times(fast_run):
    steps = [record for record in fast_run.state.log_history if "reward" in record]
    assert len(steps) == 2
    for record in steps:
        times = {phase: record[f"time/{phase}"] for phase in PHASES}
        # beta > 0: the reference pass runs, so every phase took some time.
        assert all(times[p] > 0 for p in ("generation", "rewards", "logprobs", "backward", "optimizer")), times
        parts = sum(times[p] for p in PHASES if p != "step")
        assert parts <= times["step"] * 1.01, times


def test_every_part_of_the_fast_path_engaged(fast_run):
    assert fast_run.parts == FAST_PATH_PARTS
    # merged generation: a copy made once, refreshed once per step's rollout, and never left in place.
    assert fast_run.merged_model is not None and fast_run.merge_refreshes == 2
    assert fast_run.model_wrapped is not fast_run.merged_model
    # fast sampling: one inverse-CDF draw per decoding step (8 tokens at most, 2 steps), torch restored after.
    assert 2 <= fast_run.sampler.calls <= 2 * 8 and torch.multinomial.__module__ == "torch"
    # CPU log-probs: the reference pass and the loss forward of each of the 2 steps.
    assert fast_run.log_probs.calls >= 4
    # slot decoding: the engine drew each step's completions, through the lean decoder.
    assert fast_run.slot_decodes == 2
    assert fast_run.test_calls["lean_decoder"] > 0
    # shared prompts: the reference pass and the loss forward of each step ran each prompt once.
    assert fast_run.shared_prompt_passes == 4
    # grouped attention, in sampling and in the loss passes.
    assert fast_run.test_calls["grouped_attention"] > 0
    assert fast_run.model.config._attn_implementation == GROUPED_ATTENTION
    # freed memory back to the system before each of the 2 steps' backward, and after each optimizer step.
    assert fast_run.memory_releases == 2
    after_steps = [cb for cb in fast_run.callback_handler.callbacks if isinstance(cb, ReleaseFreeMemory)]
    assert len(after_steps) == 1 and after_steps[0].releases == 2
    # fused LoRA products in the loss forward (and its replay) of every adapted layer, and PEFT's forward after.
    assert fast_run.fused_lora.calls >= 2 * len(fast_run.fused_lora.layers) > 0
    assert not any("forward" in vars(layer) for layer in fast_run.fused_lora.layers)


def test_no_part_engages_when_left_out(tmp_path, tiny_model_dir, gsm8k_rows):
    dataset, _ = prepare(gsm8k_rows[:8])
    trainer = CPUFastGRPOTrainer(
        model=str(tiny_model_dir),
        reward_funcs=[length_reward],
        args=_grpo_args(tmp_path, max_steps=1),
        train_dataset=dataset,
        peft_config=lora_config(4, 8, 0.0, TARGETS),
        parts=(),
    )
    trainer.train()
    assert trainer.merged_model is None and trainer.sampler.calls == 0 and trainer.log_probs.calls == 0
    assert trainer.slot_decodes == 0 and trainer.shared_prompt_passes == 0 and trainer.fused_lora.calls == 0
    assert trainer.model.config._attn_implementation != GROUPED_ATTENTION
    with pytest.raises(ValueError, match="unknown fast-path parts"):
        CPUFastGRPOTrainer(
            model=str(tiny_model_dir),
            reward_funcs=[length_reward],
            args=_grpo_args(tmp_path),
            train_dataset=dataset,
            parts=("warp_drive",),
        )


def _sampler(tmp_path, tiny_model_dir, gsm8k_rows, parts, **overrides):
    dataset, _ = prepare(gsm8k_rows[:8])
    return CPUFastGRPOTrainer(
        model=str(tiny_model_dir),
        reward_funcs=[length_reward],
        args=_grpo_args(tmp_path, **overrides),
        train_dataset=dataset,
        peft_config=lora_config(4, 8, 0.0, TARGETS),
        parts=parts,
    )


def _training(tmp_path, tiny_model_dir, gsm8k_rows, checkpointing: bool):
    """A trainer with every part, its model in training mode (with non-reentrant checkpointing if asked) and an
    adapter that has an effect: a fresh one is a no-op, which would leave the prompt's pass no gradient to pass on."""
    trainer = _sampler(tmp_path, tiny_model_dir, gsm8k_rows, FAST_PATH_PARTS, gradient_checkpointing=checkpointing)
    trainer.model.train()
    if checkpointing:
        trainer.model.gradient_checkpointing_enable({"use_reentrant": False})
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.05)
    return trainer


def _draw(trainer, prompt_ids):
    torch.manual_seed(3)
    return trainer._generate_single_turn(prompt_ids, None, {}, 4)


def _spread_logits(trainer, factor: float = 8.0) -> None:
    """Scale the (tied) embeddings, and so the logits: the tiny random model's logits are nearly equal over its whole
    vocabulary (std 0.1), where top-p's sort reorders near-equal probabilities on fp32 rounding alone."""
    with torch.no_grad():
        trainer.model.get_input_embeddings().weight.mul_(factor)


def test_slot_decoding_draws_what_trls_generate_draws(tmp_path, tiny_model_dir, gsm8k_rows):
    """Same weights, seed and settings (temperature, top-p): the engine's completions are TRL's, token for token.
    The tiny random model never ends a completion early, so both loops draw the same random numbers. The two
    forwards round differently in fp32 (logits 1e-7 apart), so the logits are spread out first (`_spread_logits`)."""
    prompt_ids = [[5, 17, 230, 9]] * 4 + [[5, 17, 41]] * 4  # two prompts, 4 completions each, as TRL lays them out
    settings = {"max_completion_length": 6, "temperature": 0.7, "top_p": 0.9}
    everything = _sampler(tmp_path / "engine", tiny_model_dir, gsm8k_rows, FAST_PATH_PARTS, **settings)
    without = tuple(part for part in FAST_PATH_PARTS if part != "slot_decoding")
    trl_generate = _sampler(tmp_path / "trl", tiny_model_dir, gsm8k_rows, without, **settings)
    _spread_logits(everything)
    _spread_logits(trl_generate)
    drawn, logprobs = _draw(everything, prompt_ids)
    assert everything.slot_decodes == 1 and logprobs is None
    expected, _ = _draw(trl_generate, prompt_ids)
    assert trl_generate.slot_decodes == 0
    assert drawn == expected
    assert all(len(completion) == 6 for completion in drawn)
    assert len({tuple(c) for c in drawn[:4]}) > 1  # sampled, not four copies of one completion


def test_slot_decoding_leaves_other_sampling_settings_to_trl(tmp_path, tiny_model_dir, gsm8k_rows):
    trainer = _sampler(tmp_path, tiny_model_dir, gsm8k_rows, FAST_PATH_PARTS, top_k=5, max_completion_length=4)
    completions, _ = _draw(trainer, [[5, 17, 230, 9]] * 4)
    assert trainer.slot_decodes == 0 and len(completions) == 4


def _train_argv(tiny_model_dir, gsm8k_dir, out, *extra):
    return tiny_run_argv(
        tiny_model_dir,
        gsm8k_dir / "train.jsonl",
        out,
        "--max_train_samples",
        "8",
        "--max_steps",
        "1",
        "--rewards",
        "tests.helpers:length_reward",
        *extra,
    )


@pytest.mark.parametrize("fast_path, trainer_class", [("true", CPUFastGRPOTrainer), ("false", GRPOTrainer)])
def test_train_picks_the_trainer_and_logs_step_times(
    tmp_path, tiny_model_dir, gsm8k_dir, monkeypatch, fast_path, trainer_class
):
    from r1lite import train as train_module
    from r1lite.config import RunConfig, parse_config

    built = []
    real_build = train_module.build_trainer
    monkeypatch.setattr(train_module, "build_trainer", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    train_module.train(
        parse_config(RunConfig, _train_argv(tiny_model_dir, gsm8k_dir, tmp_path, "--cpu_fast_path", fast_path))
    )
    assert type(built[0]) is trainer_class  # exactly TRL's class when the fast path is off
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in records if "reward" in r)
    assert step["time/step"] > 0
    phases = {f"time/{p}" for p in PHASES if p != "step"}
    assert phases <= set(step) if fast_path == "true" else not phases & set(step)


def test_trl_internals_are_fenced_in_one_module():
    """Only r1lite.trl_compat names TRL's private members; the version check refuses other releases."""
    import re
    from pathlib import Path

    from r1lite.errors import CompatError
    from r1lite.trl_compat import check_trl_version

    source = Path(__file__).resolve().parents[1] / "src" / "r1lite"
    private = re.compile(
        r"\._(metrics|logs|generate_single_turn|calculate_rewards|get_per_token_logps|prepare_inputs|"
        r"ChunkedLogProbFunction|use_triton|entropy_bonus|iter_named_params|fix_param_name)"
    )
    offenders = [p.name for p in source.rglob("*.py") if p.name != "trl_compat.py" and private.search(p.read_text())]
    assert not offenders
    check_trl_version("1.16.3")
    for other in ("1.17.0", "1.15.2", "2.0.0"):
        with pytest.raises(CompatError, match="written for TRL 1.16"):
            check_trl_version(other)


@pytest.mark.parametrize("entropy_grad", [False, True])
def test_cpu_lm_head_computes_what_trls_fused_head_computes(tiny_model_dir, entropy_grad):
    import trl.trainer.utils as trl_utils
    from trl.trainer.utils import add_fused_lm_head

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
    log_probs = CPULogProbs(trl_log_probs_function(), entropy_grad)
    with cpu_lm_head(log_probs):
        assert trl_utils._ChunkedLogProbFunction is log_probs
        ours = run()
    assert log_probs.calls == 1  # it did the scoring, not TRL's function
    assert trl_utils._ChunkedLogProbFunction is not log_probs  # restored
    assert reference[0][0, 30:].eq(0).all() and ours[0][0, 30:].eq(0).all()
    for a, b in zip(reference, ours, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_cpu_lm_head_chunks_agree_and_hand_other_outputs_to_trl():
    from trl.kernels import ChunkedLogProbFunction

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
    original = torch.multinomial
    probs = torch.tensor([[0.1, 0.0, 0.2, 0.3, 0.4]]).repeat(40_000, 1)
    generator = torch.Generator().manual_seed(0)
    with fast_sampling() as sampler:
        assert torch.multinomial is sampler
        draws = torch.multinomial(probs, num_samples=1, generator=generator)
        weights = torch.multinomial(probs * 7, num_samples=1)  # unnormalised weights, as torch accepts
        several = torch.multinomial(probs[:3], num_samples=2)  # not one draw per row: torch's own
    assert torch.multinomial is original
    assert sampler.calls == 2  # the two one-draw calls; the two-draw call went to torch
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


# ----------------------------------------------------------------------------------------------- fused LoRA


def test_fused_lora_computes_what_peft_computes(lora_model):
    """Outputs and every gradient (input, LoRA A and B) as PEFT's forward, with a scaling other than 1; PEFT's own
    forward again once the block ends, and wherever the fused product does not apply."""
    layers = list(lora_layers(lora_model).values())
    layer = next(layer for layer in layers if layer.out_features != layer.in_features)
    assert layer.scaling["default"] == 2.0  # alpha 8, rank 4
    x = torch.randn(2, 5, layer.in_features)

    def run(fused: FusedLoRA | None):
        lora_model.zero_grad()
        x_ = x.clone().requires_grad_(True)
        if fused is None:
            out = layer(x_)
        else:
            with fused.installed():
                out = layer(x_)
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        adapter = (layer.lora_A["default"].weight.grad.clone(), layer.lora_B["default"].weight.grad.clone())
        return out.detach(), x_.grad, adapter

    fused = FusedLoRA(layers)
    expected, got = run(None), run(fused)
    assert fused.calls == 1 and "forward" not in vars(layer)
    torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], expected[1], atol=1e-5, rtol=1e-5)
    for g, e in zip(got[2], expected[2], strict=True):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
    with fused.installed(), torch.no_grad():
        with lora_model.disable_adapter():  # the reference pass: the base layer alone, through PEFT
            torch.testing.assert_close(layer(x), layer.base_layer(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x)
    layer.lora_dropout["default"] = torch.nn.Dropout(0.1).eval()
    with fused.installed(), torch.no_grad():
        torch.testing.assert_close(layer(x), expected[0])  # LoRA dropout: PEFT's forward
    assert fused.calls == 1


# ----------------------------------------------------------------------------------------------- shared prompts


def _group_batch():
    """Two prompts (one left-padded) x 3 completions of different lengths, laid out as TRL lays a GRPO batch."""
    torch.manual_seed(1)
    prompts = torch.tensor([[0, 0, 5, 17, 230, 9], [5, 17, 41, 8, 3, 2]]).repeat_interleave(3, dim=0)
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6]).repeat_interleave(3, dim=0)
    completions = torch.randint(10, 1000, (6, 5))
    completion_mask = (torch.arange(5) < torch.tensor([5, 3, 1, 4, 5, 2])[:, None]).long()
    return torch.cat([prompts, completions], 1), torch.cat([prompt_mask, completion_mask], 1), completion_mask


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("part", ["shared_prompt", "fused_lora"])
def test_loss_pass_parts_score_and_train_like_the_passes_they_replace(
    tmp_path, tiny_model_dir, gsm8k_rows, part, checkpointing
):
    """Inside the trainer's training step, with or without (non-reentrant) gradient checkpointing's replay: the
    same log-probabilities, entropies and LoRA gradients with the part as without it. shared_prompt: each prompt
    run once for its completions, against TRL's pass over every row; fused_lora: the LoRA product in one addmm,
    against PEFT's forward."""
    trainer = _training(tmp_path, tiny_model_dir, gsm8k_rows, checkpointing)
    model = trainer.model
    ids, mask, completion_mask = _group_batch()
    engaged = {"shared_prompt": lambda: trainer.shared_prompt_passes, "fused_lora": lambda: trainer.fused_lora.calls}

    def run(parts):
        trainer.parts = parts
        model.zero_grad()
        with trainer.training_step_context():
            logps, entropy, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, 5, compute_entropy=True)
            (logps * completion_mask).sum().backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
        return logps.detach() * completion_mask, entropy.detach() * completion_mask, grads

    expected_logps, expected_entropy, expected_grads = run(tuple(p for p in FAST_PATH_PARTS if p != part))
    assert engaged[part]() == 0
    logps, entropy, grads = run(FAST_PATH_PARTS)
    layers = len(trainer.fused_lora.layers)
    # One shared-prompt pass; each adapted layer in the prompt's pass and the rows' pass, and again in each replay.
    assert engaged[part]() == {"shared_prompt": 1, "fused_lora": (4 if checkpointing else 2) * layers}[part]
    torch.testing.assert_close(logps, expected_logps, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(entropy, expected_entropy, atol=1e-5, rtol=1e-4)
    assert any("lora_A" in name and "q_proj" in name and grad.abs().sum() > 0 for name, grad in grads.items())
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_shared_prompt_leaves_rows_without_groups_to_trl(tmp_path, tiny_model_dir, gsm8k_rows):
    trainer = _sampler(tmp_path, tiny_model_dir, gsm8k_rows, FAST_PATH_PARTS)
    ids, mask, _ = _group_batch()
    with torch.no_grad():
        trainer._get_per_token_logps_and_entropies(trainer.model, ids[2:4], mask[2:4], 5)  # two different prompts
        assert trainer.shared_prompt_passes == 0
        trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, 5, batch_size=3)  # a group per chunk
        assert trainer.shared_prompt_passes == 1
    reentrant = _sampler(
        tmp_path / "reentrant",
        tiny_model_dir,
        gsm8k_rows,
        FAST_PATH_PARTS,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": True},
    )
    with torch.no_grad():
        reentrant._get_per_token_logps_and_entropies(reentrant.model, ids, mask, 5)
    assert reentrant.shared_prompt_passes == 0  # its replay would not reach the prompt's pass
