"""What a decoding step costs per row as its rows grow: the compiled forward over every layer (`decode_layers`) and
the LM head (`panels_linear`) of the embedded model in fp32, at 8-64 rows, each row a sequence in its own slot of a
64-slot cache with 74 prompt tokens and 0-199 reply tokens past a 30-token shared prefix (as `r1lite eval` decodes).
This is what sizes `r1lite eval`'s slots on a CPU (`r1lite.engine.COMPILED_CPU_BATCH_SIZE`).

    python benchmarks/step_rows.py
    python benchmarks/step_rows.py --rows 32 48 64 --rounds 12

Each round times a few calls at every size in turn; this host's speed wanders within minutes, so the medians over
the rounds are printed, with each size's cost per row against that at 32 rows (the slots `r1lite eval` had).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

SLOTS, WIDTH, SHARED = 64, 420, 30


def main() -> None:
    from r1lite import kernels
    from r1lite.config import ModelArgs
    from r1lite.decoder import LeanDecoder
    from r1lite.models import load_for_generation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[8, 16, 26, 32, 40, 48, 64])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--calls", type=int, default=4, help="calls per size and round")
    args = parser.parse_args()
    print(describe().line())
    if not kernels.available():
        raise SystemExit("r1lite's kernels are not available here (see r1lite/kernels/__init__.py for why not)")
    if max(args.rows) > min(SLOTS, kernels.MAX_ROWS):
        raise SystemExit(f"at most {min(SLOTS, kernels.MAX_ROWS)} rows: one per slot")
    model, _ = load_for_generation(ModelArgs(model="embedded:smollm2-135m-instruct", precision="fp32"))
    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    dim = config.hidden_size // heads
    lean = LeanDecoder(model, max(args.rows))
    if not lean.whole_layers:
        raise SystemExit("the embedded model does not decode through the compiled forward here")
    shape = (SLOTS, kv_heads, WIDTH, dim)
    keys = [torch.randn(shape) for _ in range(config.num_hidden_layers)]
    values = [torch.randn(shape) for _ in range(config.num_hidden_layers)]
    fixed = (lean.flat, lean.eps, keys, values)  # the weights and the cache, the same at every call
    generator = torch.Generator().manual_seed(0)
    times: dict[int, list[tuple[float, float]]] = {rows: [] for rows in args.rows}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for rows in args.rows:
                slots = torch.randperm(SLOTS, generator=generator)[:rows]
                columns = torch.randint(SHARED + 74, SHARED + 74 + 200, (rows,), generator=generator)
                width = int(columns.max()) + 1
                mask = torch.where(torch.arange(width)[None, :] <= columns[:, None], 0.0, float("-inf"))
                cos, sin = torch.randn(rows, dim), torch.randn(rows, dim)
                layers = head = 0.0
                for _ in range(args.calls):
                    x = torch.randn(rows, config.hidden_size) * 0.1
                    start = time.perf_counter()
                    x = kernels.decode_layers(
                        x, *fixed, cos, sin, slots, columns, mask, heads, kv_heads, lean.scaling, shared=SHARED
                    )
                    middle = time.perf_counter()
                    kernels.panels_linear(x, lean.head, None)
                    layers, head = layers + middle - start, head + time.perf_counter() - middle
                times[rows].append((layers / args.calls * 1e3, head / args.calls * 1e3))
    medians = {
        rows: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)) for rows, ts in times.items()
    }
    reference = medians.get(32)
    print(f"ms per decoding step, medians over {args.rounds} rounds of {args.calls} calls")
    print(f"{'rows':>5} {'layers':>8} {'LM head':>8} {'per row':>8} {'layers/row':>11} {'vs 32 rows':>11}")
    for rows, (layers, head) in medians.items():
        per_row = (layers + head) / rows
        against = f"{sum(reference) / 32 / per_row:.2f}x" if reference else "-"
        print(f"{rows:>5} {layers:>8.1f} {head:>8.1f} {per_row:>8.2f} {layers / rows:>11.2f} {against:>11}")


if __name__ == "__main__":
    main()
