"""Decoding with linear weights laid out once for oneDNN (r1lite.engine.packed_linears) against torch's plain linear.

    python benchmarks/packed_weights.py                  # 1, 8 and 32 sequences, 150 tokens each, 3 repeats
    python benchmarks/packed_weights.py --rows 8 --tokens 200 --repeats 5

torch.nn.functional.linear on a CPU hands oneDNN a weight in torch's layout, which oneDNN lays out anew at every
call; `packed_linears` lays every weight out once per `decode` call. Both ways decode through transformers'
forward: the path of models r1lite's lean forward does not apply to (benchmarks/lean_decoder.py measures that one).
How the two are timed: benchmarks/decode_compare.py.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_compare import compare, load, parse_args  # noqa: E402


def main(argv=None) -> None:
    import r1lite.engine as engine
    from r1lite.decoder import LeanDecoder

    args = parse_args(__doc__, argv)
    model, prompt = load(args.dataset, args.precision)
    packed_linears, for_model = engine.packed_linears, LeanDecoder.for_model

    @contextmanager
    def packed(on: bool):
        engine.packed_linears = packed_linears if on else (lambda model, rows: nullcontext(0))
        LeanDecoder.for_model = lambda model, rows: None  # transformers' forward both ways
        try:
            yield
        finally:
            engine.packed_linears, LeanDecoder.for_model = packed_linears, for_model

    compare(model, prompt, args, packed, ("plain", "packed"))
    with torch.no_grad():
        start = time.perf_counter()
        with packed_linears(model, 8) as layers:
            pass
    print(f"laying out {layers} layers' weights once: {1000 * (time.perf_counter() - start):.0f} ms per decode call")


if __name__ == "__main__":
    main()
