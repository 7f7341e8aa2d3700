"""Decoding through r1lite's lean forward (r1lite.decoder.LeanDecoder) against transformers' forward.

    python benchmarks/lean_decoder.py                    # 1, 8 and 32 sequences, 150 tokens each, 3 repeats
    python benchmarks/lean_decoder.py --rows 8 --tokens 200 --repeats 5

`r1lite.engine.decode` runs `LeanDecoder` where it applies; the other column is what it ran before, transformers'
forward with the linear layers laid out once (`packed_linears`). This decodes one GSM8K training prompt (the
recipe's system prompt) into `--rows` sequences with the embedded model in bf16 through r1lite.engine.decode,
both ways, alternating which goes first so that drift in the machine's speed hits both, and prints the median
tokens/s, the ratio, and whether greedy decoding picked the same tokens both ways. Sampling at temperature 1.0
uses the inverse-CDF draws the CPU trainer uses; no sequence ends early (no end-of-sequence token), so both
ways decode the same number of tokens.
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

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32], help="sequences decoding together")
    p.add_argument("--tokens", type=int, default=150, help="tokens per sequence")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dataset", type=Path, default=GSM8K)
    return p.parse_args(argv)


def main(argv=None) -> None:
    import r1lite.engine as engine
    from r1lite.attention import use_grouped_attention
    from r1lite.cpu_fast_path import fast_sampling
    from r1lite.data import load_prepared
    from r1lite.decoder import LeanDecoder
    from r1lite.models import load_model
    from r1lite.prompts import SYSTEM_PROMPT

    args = parse_args(argv)
    print(describe(bandwidth=False).line())
    model, tokenizer = load_model("embedded:smollm2-135m-instruct", "bf16", device="cpu")
    model.requires_grad_(False)
    model.eval()
    use_grouped_attention(model)
    row = load_prepared(str(args.dataset), "train", SYSTEM_PROMPT, 0, 1, tokenizer, 1024, 0)[0]
    text = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    prompt = tokenizer(text, add_special_tokens=False).input_ids
    for_model = LeanDecoder.for_model
    assert for_model(model, 8) is not None, "the lean forward does not apply to the embedded model"

    def run(lean: bool, rows: int, temperature: float, tokens: int) -> list[list[int]]:
        LeanDecoder.for_model = for_model if lean else (lambda model, rows: None)
        try:
            torch.manual_seed(0)
            with torch.no_grad(), engine.masked_attention(model), fast_sampling():
                return engine.decode(
                    model,
                    [prompt],
                    num_generations=rows,
                    temperature=temperature,
                    top_p=1.0,
                    max_completion_length=tokens,
                    eos=[-1],
                    slots=rows,
                )
        finally:
            LeanDecoder.for_model = for_model

    print(f"prompt {len(prompt)} tokens, {args.tokens} new tokens per sequence, bf16, temperature 1.0")
    print(f"{'rows':>5} {'transformers tok/s':>19} {'lean tok/s':>11} {'ratio':>7}  greedy tokens the same")
    for rows in args.rows:
        same = run(True, rows, 0.0, 40) == run(False, rows, 0.0, 40)
        times = {True: [], False: []}
        for i in range(args.repeats):
            for lean in (i % 2 == 0, i % 2 == 1):
                start = time.perf_counter()
                run(lean, rows, 1.0, args.tokens)
                times[lean].append(time.perf_counter() - start)
        plain, lean = (rows * args.tokens / statistics.median(times[k]) for k in (False, True))
        print(f"{rows:>5} {plain:>19.0f} {lean:>11.0f} {lean / plain:>6.2f}x  {same}")
    with torch.no_grad():
        start = time.perf_counter()
        LeanDecoder(model, 8)
    print(f"building the lean forward (weights stacked, laid out): {1000 * (time.perf_counter() - start):.0f} ms")


if __name__ == "__main__":
    main()
