"""Every weight product of one decoding step of the embedded model, r1lite's panel kernel against the dot-product
kernel it replaced, in one process, at the rows a chat (1), a GRPO group (8) and `r1lite eval`'s slots (16-32)
decode.

    python benchmarks/panels_vs_rows.py                       # 1, 4, 8, 16, 27 and 32 rows, 3 rounds
    python benchmarks/panels_vs_rows.py --rows 8 27 --rounds 5

The earlier kernel is built from `src/r1lite/kernels/decoding.cpp` as it stood at commit e4dea29 (`git show`, so
this needs the repository's history), into a build folder of its own. Each round times both kernels at every row
count (the q/k/v, output, gate/up and down products of all 30 layers, then the LM head), alternating which goes
first, each reading its own copy of the weights (538 MB in fp32, far more than the caches). Prints every round's
milliseconds and the best of each, with the ratio.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from earlier_kernel import build  # noqa: E402
from machine import describe  # noqa: E402

BEFORE = "e4dea29"


def panels_step(lean, x: torch.Tensor, gated: torch.Tensor) -> None:
    from r1lite import kernels

    for layer in lean.layers:
        for weight, given in ((layer.qkv, x), (layer.o, x), (layer.gate_up, x), (layer.down, gated)):
            kernels.panels_linear(given, weight)
    kernels.panels_linear(x, lean.head)


def dot_rows_step(before, rows_weights, head: torch.Tensor, x: torch.Tensor, gated: torch.Tensor) -> None:
    for qkv, o, gate_up, down in rows_weights:
        for weight, given in ((qkv, x), (o, x), (gate_up, x), (down, gated)):
            before.rows_linear(given, weight, None)
    before.rows_linear(x, head, None)


def step_ms(step, repeats: int = 5) -> float:
    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    from r1lite import kernels
    from r1lite.config import ModelArgs
    from r1lite.decoder import LeanDecoder
    from r1lite.models import load_for_generation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8, 16, 27, 32])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(describe().line())
    if not kernels.available():
        raise SystemExit("r1lite's kernels are not available here (see r1lite/kernels/__init__.py for why not)")
    with tempfile.TemporaryDirectory() as folder:
        before = build(BEFORE, Path(folder))
    model, _ = load_for_generation(ModelArgs(model="embedded:smollm2-135m-instruct", precision="fp32"))
    lean = LeanDecoder(model, 32)  # its weights laid out in panels
    rows_weights = []  # the earlier kernel's: stacked as the lean decoder stacks them, in torch's layout
    for layer in model.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        qkv = torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]).detach()
        gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach()
        rows_weights.append(
            (qkv, attention.o_proj.weight.detach().clone(), gate_up, mlp.down_proj.weight.detach().clone())
        )
    head = model.lm_head.weight.detach().clone()

    times: dict[tuple[int, str], list[float]] = {}
    for round_ in range(args.rounds):
        for rows in args.rows:
            x, gated = torch.randn(rows, 576), torch.randn(rows, 1536)

            ways = [
                ("dot rows (before)", functools.partial(dot_rows_step, before, rows_weights, head, x, gated)),
                ("panels", functools.partial(panels_step, lean, x, gated)),
            ]
            for name, way in ways if round_ % 2 == 0 else ways[::-1]:
                times.setdefault((rows, name), []).append(step_ms(way))
    print(f"{'rows':>4} {'dot rows ms (each round)':>28} {'panels ms (each round)':>28}  best: before, panels, ratio")
    for rows in args.rows:
        old, new = times[(rows, "dot rows (before)")], times[(rows, "panels")]
        print(
            f"{rows:>4} {' '.join(f'{t:.1f}' for t in old):>28} {' '.join(f'{t:.1f}' for t in new):>28}"
            f"  {min(old):.1f}, {min(new):.1f}, {min(old) / min(new):.2f}x"
        )


if __name__ == "__main__":
    main()
