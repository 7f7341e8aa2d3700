"""r1lite.kernels.rows_linear: F.linear's result for every shape a decoding step can hand it, and clear refusals."""

from __future__ import annotations

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
@pytest.mark.parametrize("rows", [1, 2, 3, 7, 8, 9, 16, 17])
@pytest.mark.parametrize(("fan_in", "fan_out"), [(576, 960), (1536, 576), (64, 1), (13, 7), (20, 130), (8, 200)])
def test_rows_linear_computes_what_f_linear_computes(rows, fan_in, fan_out):
    """Rows beyond a block of 8, features that are not a multiple of 8 (the scalar tail), one output column, and
    leading dimensions (a decoding step's (B, 1, K)), with and without a bias."""
    torch.manual_seed(rows * 1000 + fan_in + fan_out)
    x = torch.randn(rows, 1, fan_in)
    weight = torch.randn(fan_out, fan_in) / fan_in**0.5
    bias = torch.randn(fan_out)
    for b in (None, bias):
        got = kernels.rows_linear(x, weight, b)
        assert got.shape == (rows, 1, fan_out) and got.dtype == torch.float32
        torch.testing.assert_close(got, F.linear(x, weight, b), atol=1e-5, rtol=1e-5)


@needs_kernel
def test_rows_linear_reads_a_strided_input_and_splits_columns_across_threads():
    """A non-contiguous x (a slice of a wider tensor, as `x[:, -1]` is) and enough columns for every thread."""
    torch.manual_seed(0)
    wide = torch.randn(4, 3, 576)
    weight = torch.randn(4096, 576) / 24
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        got = kernels.rows_linear(wide[:, -1], weight)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(got, F.linear(wide[:, -1], weight), atol=1e-5, rtol=1e-5)


@needs_kernel
def test_rows_linear_refuses_what_it_does_not_compute():
    weight = torch.randn(16, 8)
    with pytest.raises(RuntimeError, match="fp32 only"):
        kernels.rows_linear(torch.randn(2, 8, dtype=torch.bfloat16), weight.bfloat16())
    with pytest.raises(RuntimeError, match="contiguous"):
        kernels.rows_linear(torch.randn(2, 16), weight.t())
    with pytest.raises(RuntimeError, match="features"):
        kernels.rows_linear(torch.randn(2, 9), weight)
    with pytest.raises(RuntimeError, match="bias"):
        kernels.rows_linear(torch.randn(2, 8), weight, torch.randn(3))


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
