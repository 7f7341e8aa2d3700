"""Decoding through the lean forward with r1lite's compiled kernels (r1lite.kernels) against without them.

    python benchmarks/kernel_decode.py                    # 1, 4 and 8 sequences, 150 tokens each, fp32
    python benchmarks/kernel_decode.py --baseline onednn --rows 8 --tokens 200 --repeats 5

The kernels apply in fp32 at up to `r1lite.kernels.MAX_ROWS` sequences. The second way is what r1lite does: every
forward's layers, prefills' and decoding steps' alike, in one compiled call (`decode_layers`), the LM head through
the compiled product (`panels_linear`). The first way (`--baseline`) is either `products` (the compiled product for
the weights, torch's operations between them: r1lite before `decode_layers`) or `onednn` (no kernel at all:
oneDNN's products from weights laid out once per decode call). How the two are timed: benchmarks/decode_compare.py.
"""

from __future__ import annotations

import functools
import sys
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_compare import compare, load, parse_args  # noqa: E402


def main(argv=None) -> None:
    from r1lite import kernels
    from r1lite.decoder import LeanDecoder

    argv = list(sys.argv[1:] if argv is None else argv)
    baseline = "products"
    if "--baseline" in argv:
        at = argv.index("--baseline")
        baseline = argv[at + 1]
        del argv[at : at + 2]
    if baseline not in ("products", "onednn"):
        raise SystemExit(f"--baseline is products or onednn, not {baseline!r}")
    args = parse_args(__doc__, ["--precision", "fp32", "--rows", "1", "4", "8", *argv])
    if not kernels.available():
        raise SystemExit("r1lite's kernels are not available here (see r1lite/kernels/__init__.py for why not)")
    model, prompt = load(args.dataset, args.precision)

    @contextmanager
    def compiled(on: bool):
        if on:
            yield
        elif baseline == "products":  # the compiled products, torch's operations between them
            lean = functools.partial(LeanDecoder, whole_layers=False)
            with mock.patch.object(LeanDecoder, "for_model", classmethod(lambda cls, model, rows: lean(model, rows))):
                yield
        else:
            with mock.patch.object(kernels, "available", lambda: False):
                yield

    names = {"products": "products only", "onednn": "oneDNN"}
    compare(model, prompt, args, compiled, (names[baseline], "compiled step"))


if __name__ == "__main__":
    main()
