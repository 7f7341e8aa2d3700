"""r1lite.decoder.LeanDecoder: the same logits and replies as transformers' forward, and only where it applies."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

import r1lite.decoder as decoder
import r1lite.engine as engine
from r1lite import kernels
from r1lite.config import ModelArgs
from r1lite.decoder import LeanDecoder
from r1lite.decoder import can_pack as decoder_can_pack
from r1lite.models import load_for_generation, lora_config, merged_copy

PROMPTS = [[1, 5, 9, 13, 2, 40], [1, 5, 9, 7], [1, 5, 9, 13, 2, 40, 41, 42, 43], [1, 5, 30]]


def _decode_recording(model, monkeypatch, lean: bool, **kwargs) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Greedy replies through r1lite.engine.decode, and the logits of every step, with the lean forward or
    transformers'. Three slots for four prompts: prompts enter as slots free up (continuous batching)."""
    if not lean:
        monkeypatch.setattr(LeanDecoder, "for_model", classmethod(lambda cls, model, rows: None))
    calls = []
    original_call = LeanDecoder.__call__
    monkeypatch.setattr(LeanDecoder, "__call__", lambda self, *a: calls.append(1) or original_call(self, *a))
    seen = []
    original_pick = engine._pick
    monkeypatch.setattr(
        engine, "_pick", lambda logits, *a: seen.append(logits.float().clone()) or original_pick(logits, *a)
    )
    settings = dict(num_generations=1, temperature=0.0, top_p=1.0, max_completion_length=12, eos=[-1], slots=3)
    with torch.no_grad():
        replies = engine.decode(model, PROMPTS, **{**settings, **kwargs})
    monkeypatch.undo()
    assert bool(calls) == lean  # the lean forward ran exactly when asked for
    return replies, seen


@pytest.fixture(params=["llama", "qwen2"])
def model_dir(request, tiny_model_dir, tiny_qwen2_dir):
    return {"llama": tiny_model_dir, "qwen2": tiny_qwen2_dir}[request.param]


def _load(model_dir, precision: str):
    model, _ = load_for_generation(ModelArgs(model=str(model_dir), precision=precision))
    torch.manual_seed(1)
    with torch.no_grad():  # biases where the architecture has them (Qwen2's q/k/v), non-zero so that they count
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0, 0.5)
    return model


WAYS = {  # how the lean forward multiplies by its weights: (kernel allowed, oneDNN layout allowed)
    "kernel": (True, False),
    "onednn-layout": (False, True),
    "torch-layout": (False, False),
}


@pytest.mark.parametrize("way", WAYS)
def test_lean_forward_gives_transformers_logits_and_replies_in_fp32(model_dir, monkeypatch, way):
    """Each way the lean forward multiplies: r1lite's compiled kernel (a few rows in fp32), oneDNN with the weights
    laid out, and torch's layout (where oneDNN cannot lay out the model's dtype: bf16 on an AVX2-only CPU)."""
    use_kernel, laid_out = WAYS[way]
    if use_kernel and not kernels.available():
        pytest.skip("r1lite's compiled kernel is not available on this machine (r1lite/kernels)")
    model = _load(model_dir, "fp32")
    kernel_calls, step_calls, shared, trims = [], [], [], []
    panels_linear, decode_layers = kernels.panels_linear, kernels.decode_layers

    def recorded_layers(*args, **kwargs):
        step_calls.append(len(args[0]))
        shared.append(kwargs.get("shared", 0))
        return decode_layers(*args, **kwargs)

    with (
        mock.patch.object(decoder, "can_pack", lambda dtype: laid_out and decoder_can_pack(dtype)),
        mock.patch.object(decoder.kernels, "available", lambda: use_kernel),
        mock.patch.object(decoder.kernels, "panels_linear", lambda *a: kernel_calls.append(1) or panels_linear(*a)),
        mock.patch.object(decoder.kernels, "decode_layers", recorded_layers),
        mock.patch.object(engine.SlotCache, "trim", lambda self, columns: trims.append(columns)),
    ):
        lean = LeanDecoder.for_model(model, 3)
        assert lean is not None and lean.kernel == use_kernel
        assert lean.packed == (laid_out and decoder_can_pack(torch.float32))
        lean_replies, lean_logits = _decode_recording(model, monkeypatch, lean=True)
    assert bool(kernel_calls) == use_kernel
    # With the kernel, every forward runs its layers in one compiled call, a row per token computed: the prefill of
    # the prefix all prompts share ([1, 5]), then two waves of a prefill and 11 decoding steps (12 tokens, the
    # first from the prefill): the first three prompts' own 4 + 2 + 7 tokens (no row for the padding that makes
    # them 3 x 7) and their three slots, then the fourth prompt's one token and its slot.
    assert step_calls == ([2, 13] + [3] * 11 + [1] + [1] * 11 if use_kernel else [])
    # Every forward after the prefix's own reads the prefix's two columns from slot 0 alone.
    assert shared == ([0] + [2] * 24 if use_kernel else [])
    # The compiled forward reads each slot's columns up to its own alone: the cache is never trimmed (a copy of all
    # of it); torch's attention reads every column, so there each decoding step trims what no sequence reaches.
    assert (trims == []) == use_kernel
    plain_replies, plain_logits = _decode_recording(model, monkeypatch, lean=False)
    assert lean_replies == plain_replies
    assert [len(r) for r in lean_replies] == [12] * len(PROMPTS)
    assert len(lean_logits) == len(plain_logits) > 12
    for got, expected in zip(lean_logits, plain_logits, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_lean_forward_stays_within_bf16_rounding_of_transformers(model_dir, monkeypatch):
    model = _load(model_dir, "bf16")
    # Sampled replies from one prompt's group: the case GRPO decodes (every slot shares the prompt).
    settings = dict(num_generations=4, temperature=1.0, slots=4, max_completion_length=6)
    torch.manual_seed(0)
    _, lean_logits = _decode_recording(model, monkeypatch, lean=True, **settings)
    torch.manual_seed(0)
    _, plain_logits = _decode_recording(model, monkeypatch, lean=False, **settings)
    # The first logits (the prefill) see the same inputs both ways; bf16's rounding is ~0.4% of a value.
    torch.testing.assert_close(lean_logits[0], plain_logits[0], atol=0.05, rtol=0.02)


def test_lean_forward_steps_aside_where_it_does_not_compute_the_same_thing(tiny_model_dir, tiny_qwen2_dir):
    from peft import get_peft_model

    llama = _load(tiny_model_dir, "fp32")
    peft_model = get_peft_model(llama, lora_config(4, 8, 0.0, ["q_proj", "v_proj"]))
    assert LeanDecoder.for_model(peft_model, 2) is None  # an adapter left unmerged
    assert LeanDecoder.for_model(merged_copy(peft_model), 2) is not None  # the trainer's sampling copy
    # ... as the trainer leaves it: gradient checkpointing makes the embeddings' output require grad, by a hook the
    # copy drops and the training model keeps.
    peft_model.enable_input_require_grads()
    assert LeanDecoder.for_model(merged_copy(peft_model), 2) is not None
    ids = torch.tensor([[1, 5, 9]])
    assert peft_model.get_input_embeddings()(ids).requires_grad

    hooked = _load(tiny_model_dir, "fp32")
    hooked.model.layers[0].mlp.register_forward_hook(lambda *args: None)
    assert LeanDecoder.for_model(hooked, 2) is None  # someone observes a module

    windowed = _load(tiny_qwen2_dir, "fp32")
    windowed.config.use_sliding_window = True
    assert LeanDecoder.for_model(windowed, 2) is None

    gelu = _load(tiny_model_dir, "fp32")
    gelu.config.hidden_act = "gelu"
    assert LeanDecoder.for_model(gelu, 2) is None

    # Where it steps aside, decode still runs, through transformers' forward.
    with torch.no_grad():
        replies = engine.decode(
            hooked,
            PROMPTS[:2],
            num_generations=1,
            temperature=0.0,
            top_p=1.0,
            max_completion_length=3,
            eos=[-1],
            slots=2,
        )
    assert [len(r) for r in replies] == [3, 3]


def test_cpu_slots_follow_the_forward_that_decodes(tiny_model_dir, monkeypatch):
    """On a CPU, `r1lite eval`'s slots: up to 64 where every forward is one compiled call, whose steps cost less per
    row the more rows they have, as many as fit the cache's budget; 32 through transformers' forward (the evaluation
    during training, an unmerged adapter), whose cache would otherwise raise training's peak memory."""
    from peft import get_peft_model

    llama = _load(tiny_model_dir, "fp32")
    peft_model = get_peft_model(_load(tiny_model_dir, "fp32"), lora_config(4, 8, 0.0, ["q_proj", "v_proj"]))
    bf16 = _load(tiny_model_dir, "bf16")
    assert engine.auto_batch_size(peft_model, 100) == engine.CPU_BATCH_SIZE == 32
    assert engine.auto_batch_size(bf16, 100) == engine.CPU_BATCH_SIZE
    assert engine.COMPILED_CPU_BATCH_SIZE <= kernels.MAX_ROWS  # every slot's row within the compiled forward's reach
    if kernels.available():
        assert engine.auto_batch_size(llama, 100) == engine.COMPILED_CPU_BATCH_SIZE == 64
        assert LeanDecoder(llama, engine.COMPILED_CPU_BATCH_SIZE).whole_layers
        # Fewer where 64 sequences' cache at max_tokens would pass the budget, and never fewer than 32.
        config = llama.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4  # fp32
        assert engine._cache_bytes_per_token(llama) == per_token
        tokens = engine.CPU_CACHE_BYTES // (per_token * 48)
        assert engine.auto_batch_size(llama, tokens) == 48
        assert engine.auto_batch_size(llama, tokens * 100) == engine.CPU_BATCH_SIZE
    monkeypatch.setattr(kernels, "available", lambda: False)
    assert engine.auto_batch_size(llama, 100) == engine.CPU_BATCH_SIZE


def test_lean_forward_reads_the_weights_as_they_are_when_built(tiny_model_dir):
    """A decoder holds its own copy of the weights it stacks (q/k/v, gate/up): a sampling copy refreshed between
    steps needs a new one, and `decode` builds one per call."""
    model = _load(tiny_model_dir, "fp32")
    ids = torch.tensor([[1, 5, 9]])
    before = LeanDecoder(model, 1)
    with torch.no_grad():
        model.model.layers[0].mlp.gate_proj.weight.mul_(3)
    after = LeanDecoder(model, 1)

    def last_logits(decoder):
        cache = engine.SlotCache(1, 8, torch.device("cpu"), torch.float32)
        cache.aim(torch.arange(3)[None], slots=torch.zeros(1, dtype=torch.long))
        causal = torch.arange(3)[None, :] <= torch.arange(3)[:, None]
        return decoder(ids, cache.mask(causal[None, None]), torch.arange(3)[None], cache)

    with torch.no_grad():
        expected = model(input_ids=ids).logits[:, -1]
    torch.testing.assert_close(last_logits(after), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(last_logits(before), expected, atol=1e-3)
