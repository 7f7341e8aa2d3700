"""One compiled forward (`decode_layers`, every layer of the embedded model) as `r1lite eval` calls it, built from an
earlier commit and from this checkout, in one process: a decoding step (a row per slot, each sequence with its own
columns past the shared system prompt) and a prefill (a row per prompt token, prompts of 40-110 tokens).

    python benchmarks/decode_layers_ab.py                          # against ab2db3a: 26-row steps, 330-row prefills
    python benchmarks/decode_layers_ab.py --before e228d32 --rows 16 31 --rounds 20

The earlier kernel is built from `src/r1lite/kernels/decoding.cpp` at `--before` (`git show`, so this needs the
repository's history) into a build folder of its own. Both read their own copy of the model's weights (laid out in
panels) and of a 32-slot cache of random keys and values, so neither finds the other's in the caches. Each round
times a few calls of each, alternating which goes first; this host's speed wanders by 10-30% within minutes, so the
median over many rounds says more than any one round. Prints every median and best, and their ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from earlier_kernel import build  # noqa: E402
from machine import describe  # noqa: E402

SLOTS, WIDTH, SHARED = 32, 420, 30  # eval's slots; a cache wide enough for prompt + 256 new tokens; the system prompt


def rows_of_a_step(rows: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A decoding step: `rows` slots, each sequence 74 prompt tokens and 0-199 reply tokens past the shared prefix."""
    slots = torch.randperm(SLOTS, generator=generator)[:rows]
    columns = torch.randint(SHARED + 74, SHARED + 74 + 200, (rows,), generator=generator)
    return slots, columns


def rows_of_a_prefill(rows: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A prefill: prompts of 40-110 tokens in consecutive slots, a row per token, `rows` in all."""
    slots, columns, slot = [], [], 0
    while len(columns) < rows:
        length = int(torch.randint(40, 110, (1,), generator=generator))
        for j in range(min(length, rows - len(columns))):
            slots.append(slot)
            columns.append(SHARED + j)
        slot = (slot + 1) % SLOTS
    return torch.tensor(slots), torch.tensor(columns)


def main() -> None:
    from r1lite import kernels
    from r1lite.config import ModelArgs
    from r1lite.decoder import LeanDecoder
    from r1lite.models import load_for_generation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--before", default="ab2db3a", help="the commit whose kernel to compare with (e5a5441 or later: `shared`)"
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[26], help="rows of a decoding step (at most 32)")
    parser.add_argument("--prefill_rows", type=int, nargs="+", default=[330])
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    print(describe().line())
    if not kernels.available():
        raise SystemExit("r1lite's kernels are not available here (see r1lite/kernels/__init__.py for why not)")
    if max(args.rows) > SLOTS:
        raise SystemExit(f"a decoding step has at most one row per slot: --rows up to {SLOTS}")
    with tempfile.TemporaryDirectory() as folder:
        before = build(args.before, Path(folder))
    model, _ = load_for_generation(ModelArgs(model="embedded:smollm2-135m-instruct", precision="fp32"))
    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    dim = config.hidden_size // heads
    layers = config.num_hidden_layers

    def copy_of_everything():
        lean = LeanDecoder(model, SLOTS)  # its own copy of the weights, laid out in panels
        shape = (SLOTS, kv_heads, WIDTH, dim)
        return lean, [torch.randn(shape) for _ in range(layers)], [torch.randn(shape) for _ in range(layers)]

    def earlier(x, weights, eps, keys, values, cos, sin, slots, columns, mask, heads, kv_heads, scaling, shared):
        return before.decode_layers(
            x, weights, eps, keys, values, cos, sin, slots, columns, mask, shared, heads, kv_heads, scaling
        )

    ways = {
        f"before ({args.before})": (earlier, copy_of_everything()),
        "now": (kernels.decode_layers, copy_of_everything()),
    }
    generator = torch.Generator().manual_seed(0)
    cases = [("step", rows, *rows_of_a_step(rows, generator)) for rows in args.rows]
    cases += [("prefill", rows, *rows_of_a_prefill(rows, generator)) for rows in args.prefill_rows]
    times: dict[tuple[str, int, str], list[float]] = {}
    for round_ in range(args.rounds):
        for kind, rows, slots, columns in cases:
            width = int(columns.max()) + 1
            mask = torch.where(torch.arange(width)[None, :] <= columns[:, None], 0.0, float("-inf"))
            cos, sin = torch.randn(rows, dim), torch.randn(rows, dim)
            calls = 5 if kind == "step" else 2
            names = list(ways) if round_ % 2 == 0 else list(ways)[::-1]
            for name in names:
                call, (lean, keys, values) = ways[name]
                start = time.perf_counter()
                for _ in range(calls):
                    x = torch.randn(rows, config.hidden_size) * 0.1
                    call(
                        x,
                        lean.flat,
                        lean.eps,
                        keys,
                        values,
                        cos,
                        sin,
                        slots,
                        columns,
                        mask,
                        heads,
                        kv_heads,
                        lean.scaling,
                        shared=SHARED,
                    )
                times.setdefault((kind, rows, name), []).append((time.perf_counter() - start) / calls * 1e3)
    old, new = ways
    print(f"ms per call over {args.rounds} rounds: median (best)")
    print(f"{'case':>14} {old:>22} {new:>16}  ratio of medians (of bests)")
    for kind, rows, *_ in cases:
        a, b = times[(kind, rows, old)], times[(kind, rows, new)]
        print(
            f"{kind + ' ' + str(rows) + ' rows':>14} {statistics.median(a):>14.1f} ({min(a):.1f})"
            f" {statistics.median(b):>9.1f} ({min(b):.1f})"
            f"  {statistics.median(a) / statistics.median(b):.2f}x ({min(a) / min(b):.2f}x)"
        )


if __name__ == "__main__":
    main()
