"""A decoding step's weight products three ways, with the weights streamed from memory as in a real step.

    python benchmarks/rows_linear.py                    # fp32, 1, 4, 8, 16 and 32 rows
    python benchmarks/rows_linear.py --rows 8 360 --repeats 20   # 360 rows: about a prefill of four prompts

For each number of rows (sequences decoding together), the products of one decoding step of the embedded
SmolLM2-135M (30 layers of q/k/v stacked, o, gate/up stacked and down, then the LM head: 538 MB in fp32, far
more than the caches) are timed with:
- `F.linear` (MKL, torch's layout),
- oneDNN with the weights laid out once for it (`r1lite.decoder.pack_weight`, what the lean decoder uses where
  r1lite's kernels are not available),
- r1lite's compiled kernel (`r1lite.kernels.panels_linear`, the weights laid out once in panels by
  `r1lite.kernels.pack`).
Each way has its own copy of the 30 layers, so no weight is in a cache when it is read. Prints the median
milliseconds per step, the rate at which the weights streamed, the ratios, and, for scale, the machine's copy
bandwidth and the rate of a plain read (`sum`) of as many bytes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402
from matmul_rates import LAYERS  # noqa: E402

# (in, out, per layer) with q/k/v and gate/up stacked, as r1lite.decoder multiplies them; the LM head once.
STACKED_SHAPES = [(576, 960, True), (576, 576, True), (576, 3072, True), (1536, 576, True), (576, 49152, False)]


def step_weights() -> list[torch.Tensor]:
    weights = []
    for fan_in, fan_out, per_layer in STACKED_SHAPES:
        weights += [torch.randn(fan_out, fan_in) * 0.02 for _ in range(LAYERS if per_layer else 1)]
    return weights


def median_ms(step, repeats: int) -> float:
    for _ in range(2):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    from r1lite import kernels
    from r1lite.decoder import can_pack, pack_weight

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    machine = describe()
    print(machine.line())
    if not kernels.available():
        raise SystemExit("r1lite's kernel is not available here (see r1lite/kernels/__init__.py for why not)")
    torch.manual_seed(0)
    plain, kernel = step_weights(), [kernels.pack(w) for w in step_weights()]
    packed = [pack_weight(w, 8) for w in step_weights()] if can_pack(torch.float32) else None
    step_bytes = sum(w.numel() * 4 for w in plain)
    big = torch.randn(step_bytes // 4)
    read_ms = median_ms(big.sum, args.repeats)
    print(
        f"weights per step {step_bytes / 1e6:.0f} MB; copy bandwidth {machine.bandwidth_gbs:.1f} GB/s;"
        f" a plain read (sum) of as many bytes {read_ms:.1f} ms ({step_bytes / read_ms / 1e6:.1f} GB/s)"
    )
    header = f"{'rows':>4} {'F.linear ms':>12} {'oneDNN ms':>10} {'kernel ms':>10} {'GB/s':>6}"
    print(header + "  kernel: vs oneDNN, F.linear")
    for rows in args.rows:
        ms = time_ways(rows, plain, packed, kernel, args.repeats)
        onednn, mine = ms.get("oneDNN", float("nan")), ms["kernel"]
        print(
            f"{rows:>4} {ms['F.linear']:>12.1f} {onednn:>10.1f} {mine:>10.1f} {step_bytes / mine / 1e6:>6.1f}"
            f"  {onednn / mine:.2f}x, {ms['F.linear'] / mine:.2f}x"
        )


def time_ways(rows: int, plain, packed, kernel, repeats: int) -> dict[str, float]:
    """Median ms of one step's products at `rows` rows, each way reading its own copy of the weights."""
    from r1lite import kernels
    from r1lite.decoder import packed_linear

    inputs = {fan_in: torch.randn(rows, fan_in) for fan_in, _, _ in STACKED_SHAPES}
    ways = {
        "F.linear": lambda: [F.linear(inputs[w.shape[1]], w) for w in plain],
        "kernel": lambda: [kernels.panels_linear(inputs[p.data.shape[1]], p) for p in kernel],
    }
    if packed is not None:
        pairs = list(zip(plain, packed, strict=True))
        ways["oneDNN"] = lambda: [packed_linear(inputs[w.shape[1]], p, None) for w, p in pairs]
    return {name: median_ms(way, repeats) for name, way in ways.items()}


if __name__ == "__main__":
    main()
