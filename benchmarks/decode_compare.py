"""Shared by benchmarks/packed_weights.py and benchmarks/lean_decoder.py: one GSM8K training prompt (the recipe's
system prompt) decoded into `--rows` sequences with the embedded model through r1lite.engine.decode (in the
precision `r1lite` picks on this CPU unless `--precision` says: bf16 with AVX-512 BF16 or AMX, fp32 elsewhere), two
ways, alternating which goes first so that drift in the machine's speed hits both. Prints the median tokens/s of
each, the ratio, and whether greedy decoding picked the same tokens both ways. Sampling at temperature 1.0 uses the
inverse-CDF draws the CPU trainer uses; no sequence ends early (no end-of-sequence token), so both ways decode the
same number of tokens."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from machine import describe

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"


def parse_args(doc: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32], help="sequences decoding together")
    p.add_argument("--tokens", type=int, default=150, help="tokens per sequence")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dataset", type=Path, default=GSM8K)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    return p.parse_args(argv)


def load(dataset: Path, precision: str = "auto"):
    """The embedded model in `precision` with the grouped attention, and one training prompt's token ids."""
    from r1lite.attention import use_grouped_attention
    from r1lite.data import load_prepared
    from r1lite.models import load_model
    from r1lite.prompts import SYSTEM_PROMPT

    print(describe(bandwidth=False).line())
    model, tokenizer = load_model("embedded:smollm2-135m-instruct", precision, device="cpu")
    model.requires_grad_(False)
    model.eval()
    use_grouped_attention(model)
    row = load_prepared(str(dataset), "train", SYSTEM_PROMPT, 0, 1, tokenizer, 1024, 0)[0]
    text = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    return model, tokenizer(text, add_special_tokens=False).input_ids


def compare(
    model, prompt: list[int], args, way: Callable[[bool], AbstractContextManager], names: tuple[str, str]
) -> None:
    """`way(False)` / `way(True)`: context managers under which decode runs the first / the second way."""
    import r1lite.engine as engine
    from r1lite.cpu_fast_path import fast_sampling

    def run(second: bool, rows: int, temperature: float, tokens: int) -> list[list[int]]:
        torch.manual_seed(0)
        with way(second), torch.no_grad(), engine.masked_attention(model), fast_sampling():
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

    dtype = str(model.dtype).removeprefix("torch.")
    print(f"prompt {len(prompt)} tokens, {args.tokens} new tokens per sequence, {dtype}, temperature 1.0")
    first, second = (f"{name} tok/s" for name in names)
    print(f"{'rows':>5} {first:>{len(first)}} {second:>{len(second)}} {'ratio':>7}  greedy tokens the same")
    for rows in args.rows:
        same = run(True, rows, 0.0, 40) == run(False, rows, 0.0, 40)
        times = {True: [], False: []}
        for i in range(args.repeats):
            for which in (i % 2 == 0, i % 2 == 1):
                start = time.perf_counter()
                run(which, rows, 1.0, args.tokens)
                times[which].append(time.perf_counter() - start)
        a, b = (rows * args.tokens / statistics.median(times[k]) for k in (False, True))
        print(f"{rows:>5} {a:>{len(first)}.0f} {b:>{len(second)}.0f} {b / a:>6.2f}x  {same}")
