"""Decoding through the lean forward with r1lite's compiled kernel (r1lite.kernels.rows_linear) and without it.

    python benchmarks/kernel_decode.py                   # 1, 4 and 8 sequences, 150 tokens each, fp32
    python benchmarks/kernel_decode.py --rows 8 --tokens 200 --repeats 5

The kernel applies in fp32 at up to `r1lite.kernels.MAX_ROWS` sequences; without it the lean forward multiplies
with oneDNN from weights laid out once per decode call. How the two are timed: benchmarks/decode_compare.py.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_compare import compare, load, parse_args  # noqa: E402


def main(argv=None) -> None:
    from r1lite import kernels

    args = parse_args(__doc__, ["--precision", "fp32", "--rows", "1", "4", "8", *(argv or sys.argv[1:])])
    if not kernels.available():
        raise SystemExit("r1lite's kernel is not available here (see r1lite/kernels/__init__.py for why not)")
    model, prompt = load(args.dataset, args.precision)

    @contextmanager
    def kernel(on: bool):
        with mock.patch.object(kernels, "available", lambda: on):
            yield

    compare(model, prompt, args, kernel, ("oneDNN", "kernel"))


if __name__ == "__main__":
    main()
