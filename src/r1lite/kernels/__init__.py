"""r1lite's compiled products and decoding step for a CPU, fp32 (`decoding.cpp`):

- `pack(weight)` lays a linear weight out once in panels of `PANEL` output columns, and `panels_linear(x, panels,
  bias)` computes x @ weight.T + bias from it, for the few rows of a decoding step and the hundreds of a prefill;
- `decode_layers(...)`: every decoder layer of a Llama-family model for a set of new tokens, each of a sequence in
  its cache slot, in one call: a decoding step (a token per sequence) or a prefill (a prompt's tokens)
  (`r1lite.decoder.LeanDecoder` hands it its panels and the `SlotCache`).

At a handful of sequences a decoding step's products are bound by how fast the weights stream from memory; from a
dozen up, by arithmetic. A product computed from the weight as torch holds it (each output a dot product of two
rows) re-reads all of x for every weight row; `panels_linear` instead adds up outer products of a panel row and a
few broadcast values of x, in registers, and streams each panel once per block of rows, with software prefetch.
Every product of the embedded model's decoding step on an AVX2 EPYC: as fast as the dot-product kernel r1lite had
before at 1-8 rows (both bound by memory), 1.12-1.30x faster at 16-32 (benchmarks/panels_vs_rows.py). It computes
in fp32 with fused multiply-adds, summing in another order than torch, so results agree to fp32 rounding. Between
the products, a decoding step runs some forty small torch operations per layer (norms, the rotary embedding, the
cache write, attention, the gated MLP), each with its fixed cost; `decode_layers` runs them as loops over the few
rows, with attention reading each cached key and value once for the query heads that share it, and only the
columns up to each sequence's own.

It is optional. It is compiled on first use with torch's C++ extension builder (the system's C++ compiler and
ninja, which r1lite installs beside its Python: it is found there without an activated environment), once per
torch version, into torch's extension cache (`TORCH_EXTENSIONS_DIR`, default ~/.cache/torch_extensions).
`available()` is False, and r1lite decodes with oneDNN's products as before, where it cannot be had: not an x86
CPU with AVX2 and FMA, no compiler, a failed build, or ``R1LITE_KERNELS=0`` in the environment.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import NamedTuple

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("decoding.cpp")
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp"]  # OpenMP: at::parallel_for runs on torch's threads
# Sequences up to which a decoding step goes through the kernels. On an AVX2 CPU in fp32 the compiled step decoded
# 1.9x faster than oneDNN's products with torch's operations between them at 1-8 sequences, 1.45x at 16 and 1.23x
# at 32 (benchmarks/kernel_decode.py --baseline onednn, with the dot-product kernel r1lite had before the panels);
# more sequences decode through oneDNN. Since every forward became one compiled call, its cost per row keeps falling
# up to 64 rows (AVX2, two cores: 2.25 ms a row at 26, 2.18 at 32, 2.06 at 64; benchmarks/step_rows.py), so up to 64.
MAX_ROWS = 64


def _why_not() -> str | None:
    if os.environ.get("R1LITE_KERNELS", "1") == "0":
        return "R1LITE_KERNELS=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"not an x86 CPU ({platform.machine()})"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):  # torch's own reading of the CPU: AVX2 includes FMA
        return f"the CPU lacks AVX2/FMA (torch reads {capability})"
    return None


@functools.cache
def _module():
    reason = _why_not()
    if reason is not None:
        logger.debug("r1lite's decoding kernel is not used: %s", reason)
        return None
    from torch.utils.cpp_extension import get_default_build_root

    tag = f"torch{torch.__version__.replace('+', '_')}-py{sys.version_info[0]}{sys.version_info[1]}"
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()  # where torch's builder looks
    build = Path(root) / "r1lite" / f"decoding-{tag}"
    if not any(build.glob("*.so")):
        logger.info("Compiling r1lite's decoding kernels for this CPU, once (about 40 s, into %s)", build)
    try:
        build.mkdir(parents=True, exist_ok=True)
        return compile_module(SOURCE, "r1lite_decoding", build)
    except Exception as exc:  # no compiler, no ninja, a failed build: decode with oneDNN's products instead
        logger.warning(
            "r1lite's decoding kernels could not be built, so CPU decoding runs without them (slower; "
            "R1LITE_KERNELS=0 skips the attempt): %s",
            str(exc)[-500:],
        )
        return None


def compile_module(source: Path, name: str, folder: Path):
    """The extension module `name` compiled from `source` with r1lite's flags into `folder` (an existing one), or
    loaded from there where torch's builder finds it up to date. Raises where it cannot be built."""
    from torch.utils.cpp_extension import load

    _find_ninja()
    return load(
        name=name, sources=[str(source)], extra_cflags=FLAGS, extra_ldflags=["-fopenmp"], build_directory=str(folder)
    )


def _find_ninja() -> None:
    """Put the running Python's own scripts folder on PATH where ninja is only there: `.venv/bin/r1lite`, run without
    activating the environment, would otherwise not find the ninja it installed, and decode without the kernels."""
    scripts = str(Path(sys.executable).parent)
    if shutil.which("ninja") is None and shutil.which("ninja", path=scripts) is not None:
        os.environ["PATH"] = os.pathsep.join([scripts, os.environ.get("PATH", "")])


def available() -> bool:
    """Whether the kernels can run here (compiles them on first call)."""
    return _module() is not None


PANEL = 16  # output columns per panel of a weight laid out by `pack` (kPanel in decoding.cpp)


class Panels(NamedTuple):
    """A linear weight (out_features, K) laid out for `panels_linear`: (ceil(out_features / PANEL), K, PANEL), each
    panel PANEL output columns side by side for every k, zeros past `out_features`."""

    data: torch.Tensor
    out_features: int


def pack(weight: torch.Tensor) -> Panels:
    """`weight` (N, K), fp32 on the CPU, laid out in panels: a copy, made once per set of weights."""
    n, k = weight.shape
    padded = -(-n // PANEL) * PANEL
    if padded > n:
        weight = torch.cat([weight, weight.new_zeros(padded - n, k)])
    return Panels(weight.reshape(padded // PANEL, PANEL, k).transpose(1, 2).contiguous(), n)


def panels_linear(x: torch.Tensor, weight: Panels, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) @ weight.T + bias (N,) from a weight laid out by `pack`, fp32 CPU tensors; no backward.
    Call only where `available()`."""
    return _module().panels_linear(x, weight.data, weight.out_features, bias)


def decode_layers(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    eps: list[float],
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
    cos: torch.Tensor,
    sin: torch.Tensor,
    slots: torch.Tensor,
    columns: torch.Tensor,
    mask: torch.Tensor,
    heads: int,
    kv_heads: int,
    scaling: float,
    shared: int = 0,
) -> torch.Tensor:
    """Every decoder layer for R new tokens, in place on x (R, hidden), which it returns.

    Row r is a token of the sequence in cache slot `slots[r]`: its key and value are written at `columns[r]` of that
    slot, and it attends to the slot's columns up to `columns[r]` alone, under its row of `mask` (R, Wm), additive,
    0 where a column may be attended to (Wm at most the cache's width, beyond every row's column). Every row writes
    before any attends, so a prefill is a row per prompt token (each sees those before it) and a decoding step a row
    per sequence, for any subset of the slots. No two rows may write the same column of a slot. The first `shared`
    columns hold the same keys and values in every slot (a prefix all sequences start with, `SlotCache.shared`):
    every row reads them from slot 0, so a decoding step reads them once for all its rows, and no row may write
    them.
    `weights`: per layer, in order, the first norm's weight, the stacked q/k/v weight and bias, the output weight
    and bias, the second norm's weight, the stacked gate/up weight and bias, the down weight and bias (an empty
    tensor for a missing bias; each weight laid out by `pack`, its `data` here); `eps`: the two norms' epsilons per
    layer. `keys`, `values`: the cache, per layer (S, kv_heads, W, head_dim). `cos`, `sin` (R, head_dim): the rotary
    embedding at each row's position, the first half of `sin` negated. All fp32 and contiguous; `slots` and
    `columns` int64. Call only where `available()`."""
    return _module().decode_layers(
        x, weights, eps, keys, values, cos, sin, slots, columns, mask, shared, heads, kv_heads, scaling
    )
