"""r1lite.kernels: the products and the decoding step compute what torch computes, for every shape a decoding step
or a prefill can hand them, and refuse clearly what they do not compute."""

from __future__ import annotations

import os
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from r1lite import kernels

needs_kernel = pytest.mark.skipif(
    not kernels.available(),
    reason="r1lite's compiled kernel is not available here (an x86 CPU with AVX2 and FMA, a C++ compiler)",
)


@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 5, 6, 7, 13, 32, 300])
@pytest.mark.parametrize(("fan_in", "fan_out"), [(576, 960), (1536, 576), (64, 1), (13, 7), (300, 130), (8, 200)])
def test_panels_linear_computes_what_f_linear_computes(rows, fan_in, fan_out):
    """Rows beyond a pass of six and beyond a chunk (300 rows of 1536 features), K beyond a block of 256, output
    columns that do not fill the last panel, one output column, and leading dimensions (a decoding step's
    (B, 1, K)), with and without a bias."""
    torch.manual_seed(rows * 1000 + fan_in + fan_out)
    x = torch.randn(rows, 1, fan_in)
    weight = torch.randn(fan_out, fan_in) / fan_in**0.5
    bias = torch.randn(fan_out)
    panels = kernels.pack(weight)
    assert panels.data.shape == (-(-fan_out // kernels.PANEL), fan_in, kernels.PANEL)
    assert panels.out_features == fan_out
    for b in (None, bias):
        got = kernels.panels_linear(x, panels, b)
        assert got.shape == (rows, 1, fan_out) and got.dtype == torch.float32
        torch.testing.assert_close(got, F.linear(x, weight, b), atol=1e-5, rtol=1e-5)


@needs_kernel
def test_panels_linear_reads_a_strided_input_and_splits_panels_across_threads():
    """A non-contiguous x (a slice of a wider tensor, as `x[:, -1]` is) and enough panels for every thread."""
    torch.manual_seed(0)
    wide = torch.randn(4, 3, 576)
    weight = torch.randn(4096, 576) / 24
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        got = kernels.panels_linear(wide[:, -1], kernels.pack(weight))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(got, F.linear(wide[:, -1], weight), atol=1e-5, rtol=1e-5)


@needs_kernel
def test_panels_linear_refuses_what_it_does_not_compute():
    weight = torch.randn(16, 8)
    panels = kernels.pack(weight)
    with pytest.raises(RuntimeError, match="fp32 only"):
        kernels.panels_linear(torch.randn(2, 8, dtype=torch.bfloat16), panels._replace(data=panels.data.bfloat16()))
    with pytest.raises(RuntimeError, match="panels"):
        kernels.panels_linear(torch.randn(2, 8), panels._replace(data=weight))  # not laid out
    with pytest.raises(RuntimeError, match="panels"):
        kernels.panels_linear(torch.randn(2, 8), panels._replace(out_features=40))  # more columns than it holds
    with pytest.raises(RuntimeError, match="features"):
        kernels.panels_linear(torch.randn(2, 9), panels)
    with pytest.raises(RuntimeError, match="bias"):
        kernels.panels_linear(torch.randn(2, 8), panels, torch.randn(3))


def test_the_kernel_is_optional():
    """Where it is switched off, or cannot be built, `available()` says so and nothing raises: r1lite decodes with
    oneDNN's products instead."""
    kernels._module.cache_clear()
    try:
        with mock.patch.dict("os.environ", {"R1LITE_KERNELS": "0"}):
            assert not kernels.available()
        kernels._module.cache_clear()
        with (
            mock.patch.object(kernels, "_why_not", lambda: None),
            mock.patch("torch.utils.cpp_extension.load", side_effect=RuntimeError("Ninja is required")),
        ):
            assert not kernels.available()
    finally:
        kernels._module.cache_clear()


def test_the_build_finds_the_ninja_installed_beside_python(tmp_path, monkeypatch):
    """`.venv/bin/r1lite` run without activating the environment: ninja is in .venv/bin, not on PATH."""
    scripts = tmp_path / "bin"
    scripts.mkdir()
    (scripts / "ninja").write_text("#!/bin/sh\n")
    (scripts / "ninja").chmod(0o755)
    monkeypatch.setattr("sys.executable", str(scripts / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "elsewhere"))
    kernels._find_ninja()
    assert os.environ["PATH"].split(os.pathsep)[0] == str(scripts)
    # Where a ninja is on PATH already, PATH stays as it is.
    monkeypatch.setenv("PATH", str(scripts))
    monkeypatch.setattr("sys.executable", str(tmp_path / "other" / "python"))
    kernels._find_ninja()
    assert os.environ["PATH"] == str(scripts)


def _layers_reference(x, weights, eps, keys, values, cos, sin, slots, columns, mask, heads, kv_heads, scaling):
    """What `decode_layers` computes, in torch operations (keys and values written in place as the kernel does, every
    row's before any row attends)."""
    batch, dim = len(x), keys[0].shape[-1]
    half = dim // 2

    def norm(t, weight, e):
        return weight * (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + e))

    def linear(t, weight, bias):
        return F.linear(t, weight, bias if bias.numel() else None)

    for index in range(len(keys)):
        norm1, qkv_w, qkv_b, o_w, o_b, norm2, gu_w, gu_b, down_w, down_b = weights[index * 10 : index * 10 + 10]
        qkv = linear(norm(x, norm1, eps[2 * index]), qkv_w, qkv_b).view(batch, heads + 2 * kv_heads, dim)
        qk = qkv[:, : heads + kv_heads]
        qk = qk * cos[:, None] + torch.cat([qk[..., half:], qk[..., :half]], -1) * sin[:, None]
        keys[index][slots, :, columns] = qk[:, heads:]
        values[index][slots, :, columns] = qkv[:, heads + kv_heads :]
        seen = mask.shape[1]
        query = qk[:, :heads].reshape(batch, kv_heads, heads // kv_heads, dim)
        scores = query @ keys[index][slots, :, :seen].transpose(2, 3) * scaling + mask[:, None, None, :]
        out = (torch.softmax(scores, -1) @ values[index][slots, :, :seen]).reshape(batch, heads * dim)
        x = x + linear(out, o_w, o_b)
        gate, up = linear(norm(x, norm2, eps[2 * index + 1]), gu_w, gu_b).chunk(2, -1)
        x = x + linear(F.silu(gate) * up, down_w, down_b)
    return x


def _layers_inputs(batch, hidden, heads, kv_heads, dim, intermediate, width, layers, biases, cache_slots=None):
    """Inputs of a decoding step: a row per sequence, in a cache of `cache_slots` slots (`batch`, in order, where
    None; otherwise slots drawn at random for the rows)."""
    torch.manual_seed(batch * 100 + dim + width)

    def weight(out, fan_in):
        return torch.randn(out, fan_in) / fan_in**0.5

    def bias(out):
        return torch.randn(out) * 0.1 if biases else torch.empty(0)

    weights = []
    for _ in range(layers):
        qkv = (heads + 2 * kv_heads) * dim
        weights += [torch.rand(hidden) + 0.5, weight(qkv, hidden), bias(qkv), weight(hidden, heads * dim), bias(hidden)]
        weights += [torch.rand(hidden) + 0.5, weight(2 * intermediate, hidden), bias(2 * intermediate)]
        weights += [weight(hidden, intermediate), bias(hidden)]
    slots = torch.arange(batch) if cache_slots is None else torch.randperm(cache_slots)[:batch]
    keys = [torch.randn(cache_slots or batch, kv_heads, width, dim) for _ in range(layers)]
    values = [torch.randn(cache_slots or batch, kv_heads, width, dim) for _ in range(layers)]
    angles = torch.rand(batch, dim) * 6
    sin = angles.sin()
    sin[:, : dim // 2] *= -1
    columns = torch.randint(0, width, (batch,))
    allowed = torch.rand(batch, width) < 0.6
    allowed[torch.arange(batch), columns] = True  # a sequence always sees its own new key ...
    allowed &= torch.arange(width) <= columns[:, None]  # ... and nothing written after it
    mask = torch.zeros(batch, width).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    x = torch.randn(batch, hidden)
    return x, weights, [1e-5, 1e-6] * layers, keys, values, angles.cos(), sin, slots, columns, mask


@needs_kernel
@pytest.mark.parametrize(
    ("batch", "hidden", "heads", "kv_heads", "dim", "intermediate", "width", "biases", "cache_slots"),
    [
        (8, 576, 9, 3, 64, 1536, 256, False, None),  # the embedded model's shapes, a GRPO group's eight sequences
        (3, 40, 4, 2, 12, 24, 37, True, None),  # a head width and a cache width that are not multiples of 8; biases
        (1, 32, 4, 4, 8, 64, 1, True, None),  # one sequence, one column; no grouping of query heads
        (2, 48, 2, 1, 128, 40, 21, True, None),  # Qwen2.5's head width: sixteen vectors per head
        (5, 48, 4, 2, 16, 40, 30, False, 9),  # the live sequences of a cache with idle slots, in no order
    ],
)
def test_decode_layers_computes_what_torch_computes(
    batch, hidden, heads, kv_heads, dim, intermediate, width, biases, cache_slots
):
    inputs = _layers_inputs(batch, hidden, heads, kv_heads, dim, intermediate, width, 2, biases, cache_slots)
    x, weights, eps, keys, values, cos, sin, slots, columns, mask = inputs
    cache = ([k.clone() for k in keys], [v.clone() for v in values])
    scaling = dim**-0.5
    expected = _layers_reference(
        x.clone(), weights, eps, *cache, cos, sin, slots, columns, mask, heads, kv_heads, scaling
    )
    got = kernels.decode_layers(
        x, _packed(weights), eps, keys, values, cos, sin, slots, columns, mask, heads, kv_heads, scaling
    )
    assert got.data_ptr() == x.data_ptr()  # in place
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    for mine, theirs in zip(keys + values, cache[0] + cache[1], strict=True):  # the new column written, no other
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)


def _packed(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """The layers' weights as `decode_layers` takes them: each product's weight laid out in panels."""
    products = {1, 3, 6, 8}  # q/k/v, output, gate/up, down: their index among a layer's ten
    return [kernels.pack(w).data if i % 10 in products else w for i, w in enumerate(weights)]


def _on_copies(x, weights, eps, keys, values, *rest):
    """`decode_layers` on copies of x and of the cache, which stay as they were."""
    return kernels.decode_layers(x.clone(), weights, eps, [k.clone() for k in keys], [v.clone() for v in values], *rest)


@needs_kernel
def test_decode_layers_reads_no_column_after_a_sequences_own():
    """Columns past a sequence's new key hold another sequence's leftovers or nothing yet: the mask hides them, and
    the kernel does not read them at all (NaN there changes nothing)."""
    inputs = _layers_inputs(3, 32, 4, 2, 8, 64, 24, 2, False)
    x, weights, eps, keys, values, cos, sin, slots, columns, mask = inputs
    columns = torch.tensor([0, 9, 23])
    mask = torch.zeros(3, 24).masked_fill_(torch.arange(24) > columns[:, None], torch.finfo(torch.float32).min)
    clean = _on_copies(x, _packed(weights), eps, keys, values, cos, sin, slots, columns, mask, 4, 2, 0.35)
    later = torch.arange(24) > columns[:, None]  # (sequence, column)
    for cache in keys + values:  # (sequence, key/value head, column, head_dim)
        cache.masked_fill_(later[:, None, :, None], float("nan"))
    got = kernels.decode_layers(
        x.clone(), _packed(weights), eps, keys, values, cos, sin, slots, columns, mask, 4, 2, 0.35
    )
    torch.testing.assert_close(got, clean, atol=0, rtol=0)


@needs_kernel
@pytest.mark.parametrize("shared", [5, 8, 13])  # within the first eight columns, at their end, across the next eight
@pytest.mark.parametrize("dim", [8, 64])  # values summed by the general loop, and by the one for 64-float heads
def test_a_shared_prefix_is_read_from_slot_zero_alone(shared, dim):
    """Columns below `shared` hold the same keys and values in every slot: with `shared` given, each row reads them
    from slot 0, so the other slots' copies are never read (NaN there changes nothing), and the result is exactly
    what reading every slot's own copy gives."""
    inputs = _layers_inputs(4, 32, 4, 2, dim, 64, 24, 2, True, cache_slots=6)
    x, weights, eps, keys, values, cos, sin, _, _, _ = inputs
    weights = _packed(weights)
    slots, columns = torch.tensor([3, 1, 5, 2]), torch.tensor([13, 17, 20, 23])
    mask = torch.zeros(4, 24).masked_fill_(torch.arange(24) > columns[:, None], torch.finfo(torch.float32).min)
    for cache in keys + values:
        cache[1:, :, :shared] = cache[0, :, :shared]  # the prefix in every slot
    copied = _on_copies(x, weights, eps, keys, values, cos, sin, slots, columns, mask, 4, 2, 0.35)
    for cache in keys + values:
        cache[1:, :, :shared] = float("nan")  # slot 0's alone
    got = kernels.decode_layers(x, weights, eps, keys, values, cos, sin, slots, columns, mask, 4, 2, 0.35, shared)
    torch.testing.assert_close(got, copied, atol=0, rtol=0)


@needs_kernel
def test_a_prefill_in_one_call_is_its_tokens_one_step_at_a_time():
    """A prompt's tokens as rows of one call (each attending to those before it, the keys of all written first)
    compute what decoding them one token per call computes: the same outputs and the same cache. Two prompts of
    five tokens in slots 3 and 1 of a cache of four, after a prefix of two columns already there; the second one
    left-padded by one column, which no later token attends to."""
    hidden, heads, kv_heads, dim, width, prefix, tokens = 32, 4, 2, 8, 12, 2, 5
    inputs = _layers_inputs(2 * tokens, hidden, heads, kv_heads, dim, 64, width, 2, True, cache_slots=4)
    x, weights, eps, keys, values, _, _, _, _, _ = inputs
    weights = _packed(weights)
    slots = torch.tensor([3] * tokens + [1] * tokens)
    columns = torch.arange(prefix, prefix + tokens).repeat(2)
    allowed = torch.arange(width) <= columns[:, None]  # causal, the prefix included
    allowed[tokens:, prefix] = False  # the second prompt's padding column ...
    allowed[tokens, prefix] = True  # ... which only its own (padding) query sees
    mask = torch.zeros(2 * tokens, width).masked_fill_(~allowed, torch.finfo(torch.float32).min)
    angles = torch.rand(2 * tokens, dim) * 6
    cos, sin = angles.cos(), angles.sin()
    sin[:, : dim // 2] *= -1
    stepped_keys, stepped_values = [k.clone() for k in keys], [v.clone() for v in values]
    stepped = torch.stack(
        [
            kernels.decode_layers(
                x[[r]].clone(),
                weights,
                eps,
                stepped_keys,
                stepped_values,
                cos[[r]],
                sin[[r]],
                slots[[r]],
                columns[[r]],
                mask[[r]],
                heads,
                kv_heads,
                dim**-0.5,
            )[0]
            for r in range(2 * tokens)
        ]
    )
    got = kernels.decode_layers(
        x, weights, eps, keys, values, cos, sin, slots, columns, mask, heads, kv_heads, dim**-0.5
    )
    torch.testing.assert_close(got, stepped, atol=1e-5, rtol=1e-5)
    for mine, theirs in zip(keys + values, stepped_keys + stepped_values, strict=True):
        torch.testing.assert_close(mine, theirs, atol=0, rtol=0)


@needs_kernel
def test_decode_layers_refuses_inputs_that_do_not_fit():
    inputs = _layers_inputs(2, 32, 4, 2, 8, 64, 16, 1, False)
    x, weights, eps, keys, values, cos, sin, slots, columns, mask = inputs
    columns = torch.tensor([3, 12])

    def call(shared=0, **changed):
        given = dict(x=x, weights=_packed(weights), eps=eps, keys=keys, values=values, cos=cos, sin=sin)
        given.update(slots=slots, columns=columns)
        given = {**given, "mask": mask, **changed}
        return kernels.decode_layers(*given.values(), 4, 2, 0.35, shared)

    call()  # as given, it runs
    with pytest.raises(RuntimeError, match="column outside"):
        call(columns=torch.tensor([0, 16]))
    with pytest.raises(RuntimeError, match="column outside the mask"):
        call(mask=mask[:, :12].contiguous())  # narrower than the second row's column
    with pytest.raises(RuntimeError, match="slot outside"):
        call(slots=torch.tensor([0, 2]))
    with pytest.raises(RuntimeError, match="one slot per row"):
        call(slots=torch.tensor([0]))
    with pytest.raises(RuntimeError, match="cache"):
        call(values=[values[0][:, :, :8]])
    with pytest.raises(RuntimeError, match="weights per layer"):
        call(weights=_packed(weights)[:-1])
    with pytest.raises(RuntimeError, match="panels"):
        call(weights=weights)  # as torch holds them, not laid out
    with pytest.raises(RuntimeError, match="mask"):
        call(mask=torch.zeros(2, 17))  # wider than the cache
    with pytest.raises(RuntimeError, match="fp32"):
        call(x=x.double())
    with pytest.raises(RuntimeError, match="writes a column of the shared prefix"):
        call(shared=4)  # the first row writes column 3
    with pytest.raises(RuntimeError, match="shared prefix longer"):
        call(shared=17)
