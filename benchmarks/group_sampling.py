"""GRPO's sampling, one group at a time: transformers' `generate` against r1lite.engine.decode, side by side.

    python benchmarks/group_sampling.py --adapter runs/cpu-demo/adapter      # 8 prompts x 8 completions each way
    python benchmarks/group_sampling.py --prompts 4 --max_completion_length 200

Each GSM8K training prompt gets `--group` completions at temperature 1.0 (the recipe's sampling), from the model
merged with `--adapter` (the CPU trainer samples from such a merged copy), inverse-CDF draws on both sides as in
training. The two loops alternate which goes first, prompt by prompt, so drift in the machine's speed hits both.
`generate` decodes every row of a group until its longest completion ends; the engine drops a completion's row as
soon as it ends (once half the rows have), writes keys in place and prefills the prompt once. Completions differ
between the two (the random streams part at the first row that ends), so the figure to compare is tokens/s.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import GenerationConfig

from r1lite.config import ModelArgs
from r1lite.cpu_fast_path import fast_sampling
from r1lite.data import load_prepared
from r1lite.engine import _encode, decode, eos_ids, masked_attention
from r1lite.models import load_for_generation

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"


def _generated(row: list[int], eos: list[int]) -> int:
    """Tokens up to and including the first EOS."""
    ends = [row.index(e) + 1 for e in eos if e in row]
    return min(ends) if ends else len(row)


def with_generate(model, ids, group, config, eos) -> int:
    out = model.generate(
        input_ids=torch.tensor([ids] * group),
        attention_mask=torch.ones(group, len(ids), dtype=torch.long),
        generation_config=config,
    )
    return sum(_generated(row, eos) for row in out[:, len(ids) :].tolist())


def with_engine(model, ids, group, max_completion_length, eos) -> int:
    with masked_attention(model):
        rows = decode(
            model,
            [ids],
            num_generations=group,
            temperature=1.0,
            top_p=1.0,
            max_completion_length=max_completion_length,
            eos=eos,
            slots=group,
        )
    return sum(map(len, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--adapter", default=None, help="a trained LoRA adapter (its replies end at varied lengths)")
    parser.add_argument("--dataset", default=str(GSM8K))
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max_completion_length", type=int, default=256)
    args = parser.parse_args()

    model, tokenizer = load_for_generation(ModelArgs(model=args.model), adapter=args.adapter)
    prompts = load_prepared(args.dataset, "train", limit=args.prompts)["prompt"]
    eos = eos_ids(model, tokenizer)
    config = GenerationConfig(
        max_new_tokens=args.max_completion_length,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    print(
        f"{args.model} + {args.adapter or 'no adapter'}, {model.dtype}, {torch.get_num_threads()} threads; "
        f"{args.prompts} prompts x {args.group} completions of at most {args.max_completion_length} tokens"
    )
    totals = {"generate": [0.0, 0], "r1lite engine": [0.0, 0]}
    with torch.no_grad(), fast_sampling():
        for i, prompt in enumerate(prompts):
            ids = _encode(tokenizer, prompt)
            order = ["generate", "r1lite engine"] if i % 2 else ["r1lite engine", "generate"]
            for name in order:
                torch.manual_seed(i)
                start = time.perf_counter()
                if name == "generate":
                    tokens = with_generate(model, ids, args.group, config, eos)
                else:
                    tokens = with_engine(model, ids, args.group, args.max_completion_length, eos)
                seconds = time.perf_counter() - start
                totals[name][0] += seconds
                totals[name][1] += tokens
                print(f"  prompt {i} {name:14} {seconds:6.1f} s {tokens:5} tokens {tokens / seconds:6.1f} tok/s")
    print(f"{'loop':14} {'seconds':>8} {'tokens':>7} {'tok/s':>7} {'s/group':>8}")
    for name, (seconds, tokens) in totals.items():
        print(f"{name:14} {seconds:8.1f} {tokens:7} {tokens / seconds:7.1f} {seconds / args.prompts:8.1f}")
    (gen_s, gen_t), (eng_s, eng_t) = totals["generate"], totals["r1lite engine"]
    print(f"engine / generate: {eng_t / eng_s / (gen_t / gen_s):.2f}x tokens/s, {gen_s / eng_s:.2f}x groups/s")


if __name__ == "__main__":
    main()
