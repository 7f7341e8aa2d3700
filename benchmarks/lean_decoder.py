"""Decoding through r1lite's lean forward (r1lite.decoder.LeanDecoder) against transformers' forward.

    python benchmarks/lean_decoder.py                    # 1, 8 and 32 sequences, 150 tokens each, 3 repeats
    python benchmarks/lean_decoder.py --rows 8 --tokens 200 --repeats 5

`r1lite.engine.decode` runs `LeanDecoder` where it applies; the other column is what it ran before, transformers'
forward with the linear layers laid out once (`packed_linears`). How the two are timed: benchmarks/decode_compare.py.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_compare import compare, load, parse_args  # noqa: E402


def main(argv=None) -> None:
    from r1lite.decoder import LeanDecoder

    args = parse_args(__doc__, argv)
    model, prompt = load(args.dataset, args.precision)
    for_model = LeanDecoder.for_model
    assert for_model(model, 8) is not None, "the lean forward does not apply to the embedded model"

    @contextmanager
    def lean(on: bool):
        LeanDecoder.for_model = for_model if on else (lambda model, rows: None)
        try:
            yield
        finally:
            LeanDecoder.for_model = for_model

    compare(model, prompt, args, lean, ("transformers", "lean"))
    with torch.no_grad():
        start = time.perf_counter()
        LeanDecoder(model, 8)
    print(f"building the lean forward (weights stacked, laid out): {1000 * (time.perf_counter() - start):.0f} ms")


if __name__ == "__main__":
    main()
