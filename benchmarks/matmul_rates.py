"""How fast this CPU multiplies the embedded model's weight matrices at decoding's batch sizes, next to its memory
bandwidth: why generation does not reach the bandwidth bound that benchmarks/step_time.py prints.

    python benchmarks/matmul_rates.py                  # bf16, 1, 8 and 32 rows
    python benchmarks/matmul_rates.py --rows 8 --dtype float32

A decoding step multiplies `rows` hidden states (one per sequence) by every weight matrix. The bandwidth bound
assumes each product streams its weight at the machine's copy bandwidth. For each of SmolLM2-135M's shapes
(576 hidden, 1,536 MLP, 192 key/value, 49,152 vocabulary) this prints the time of `F.linear` with torch's
threads, the rate at which it streamed the weight (GB/s) and the arithmetic rate (GFLOP/s), and the time of
a whole step's products (30 layers plus the LM head) against what streaming the weights at copy bandwidth
would take.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

LAYERS = 30
# (name, in, out, per layer): the embedded model's projections; the LM head once per step.
SHAPES = [
    ("q_proj, o_proj", 576, 576, 2),
    ("k_proj, v_proj", 576, 192, 2),
    ("gate_proj, up_proj", 576, 1536, 2),
    ("down_proj", 1536, 576, 1),
    ("lm_head", 576, 49152, None),
]


def seconds(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(3):  # best of 3 rounds: the least disturbed by other work on the machine
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    machine = describe()
    print(machine.line())
    print(f"{'rows':>4} {'product':20} {'us':>8} {'GB/s':>6} {'GFLOP/s':>8}")
    for rows in args.rows:
        step, weight_bytes = 0.0, 0
        for name, fan_in, fan_out, per_layer in SHAPES:
            weight = torch.randn(fan_out, fan_in, dtype=dtype)
            x = torch.randn(rows, fan_in, dtype=dtype)
            took = seconds(lambda x=x, weight=weight: torch.nn.functional.linear(x, weight), args.repeats)
            size = weight.numel() * weight.element_size()
            count = LAYERS * per_layer if per_layer else 1
            step += took * count
            weight_bytes += size * count
            rate = 2 * rows * fan_in * fan_out / took / 1e9
            print(f"{rows:>4} {name:20} {took * 1e6:8.0f} {size / took / 1e9:6.1f} {rate:8.1f}")
        bound = weight_bytes / (machine.bandwidth_gbs * 1e9)
        print(
            f"{rows:>4} {'a step, all weights':20} {step * 1e6:8.0f} {weight_bytes / step / 1e9:6.1f}"
            f"   streaming {weight_bytes / 1e6:.0f} MB at {machine.bandwidth_gbs:.1f} GB/s: {bound * 1e3:.1f} ms,"
            f" {step / bound:.1f}x faster than these products"
        )


if __name__ == "__main__":
    main()
