"""Questions/s and generated tokens/s of `r1lite eval`'s decoding next to transformers' `generate`, batched as a user
would batch it and one question at a time: same model, precision, prompts and greedy decoding, in one run.

    python benchmarks/eval_throughput.py                      # 200 questions each way, 16 one at a time
    python benchmarks/eval_throughput.py --n 64 --loop_n 0    # shorter, no one-at-a-time loop
    python benchmarks/eval_throughput.py --batch_size 16 32 64 --threads 1

"HF generate, batched" is the peer: left-padded batches of --batch_size questions, longest first (so a batch pads
little), each batch decoding until its longest reply ends. r1lite's engine (continuous batching over a cache
written in place, the shared system prompt prefilled once) is measured on the same questions. Rates are
extrapolated to GSM8K's 1,319 test questions. The thread wait policy is left as `r1lite` leaves it (libgomp's
default): OMP_WAIT_POLICY=PASSIVE made a decoding step twice as slow on this 2-core machine (116 vs 62 ms, batch 8).
"""

import argparse
import os
import time
from pathlib import Path

import torch

from r1lite.config import ModelArgs
from r1lite.data import load_prepared
from r1lite.engine import CPU_BATCH_SIZE as BATCH_SIZE
from r1lite.evaluate import evaluate_model
from r1lite.models import load_for_generation

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
TEST_SPLIT = 1319


def _count(generated: list[int], eos: int) -> int:
    """Generated tokens up to and including EOS."""
    return generated.index(eos) + 1 if eos in generated else len(generated)


def one_at_a_time(model, tokenizer, prompts, max_new_tokens: int) -> tuple[float, int]:
    """Seconds and generated tokens for a plain loop over `generate`."""
    tokens = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for prompt in prompts:
            inputs = tokenizer.apply_chat_template(
                prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
            ).to(model.device)
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            tokens += _count(output[0, inputs["input_ids"].shape[1] :].tolist(), tokenizer.eos_token_id)
    return time.perf_counter() - start, tokens


def hf_batched(model, tokenizer, prompts, max_new_tokens: int, batch_size: int) -> tuple[float, int]:
    """Seconds and generated tokens for `generate` over left-padded batches, longest prompts first."""
    encoded = [
        tokenizer.apply_chat_template(p, add_generation_prompt=True, return_dict=True)["input_ids"] for p in prompts
    ]
    encoded.sort(key=len, reverse=True)
    tokens = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(encoded), batch_size):
            batch = tokenizer.pad(
                {"input_ids": encoded[first : first + batch_size]}, padding_side="left", return_tensors="pt"
            ).to(model.device)
            output = model.generate(
                **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
            width = batch["input_ids"].shape[1]
            tokens += sum(_count(row[width:].tolist(), tokenizer.eos_token_id) for row in output)
    return time.perf_counter() - start, tokens


def row(name: str, questions: int, seconds: float, tokens: int) -> str:
    q_rate, t_rate = questions / seconds, tokens / seconds
    full = TEST_SPLIT / q_rate / 60
    return (
        f"{name:34} {questions:>9} {seconds:>8.1f} {q_rate:>7.3f} {t_rate:>8.1f} {tokens / questions:>9.0f}"
        f" {full:>10.1f} min"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--dataset", default=str(GSM8K))
    parser.add_argument("--n", type=int, default=200, help="questions for the batched path")
    parser.add_argument("--loop_n", type=int, default=16, help="questions for the one-at-a-time loop (0: skip)")
    parser.add_argument("--hf_n", type=int, default=None, help="questions for HF generate, batched (default: --n)")
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--batch_size", type=int, nargs="+", default=[BATCH_SIZE])
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_for_generation(ModelArgs(model=args.model, precision=args.precision))
    questions = load_prepared(args.dataset, "test", limit=args.n)
    print(
        f"{args.model}, {model.dtype}, {model.config._attn_implementation} attention, "
        f"{torch.get_num_threads()} threads (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}), "
        f"greedy, max "
        f"{args.max_new_tokens} new tokens; load average before: {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'path':34} {'questions':>9} {'seconds':>8} {'q/s':>7} {'tok/s':>8} {'tokens/q':>9} {'full test split':>14}"
    )

    peers: dict[str, tuple[float, float]] = {}  # name: (q/s, tok/s)
    if args.loop_n:
        prompts = questions["prompt"][: args.loop_n]
        seconds, tokens = one_at_a_time(model, tokenizer, prompts, args.max_new_tokens)
        peers["the loop"] = (len(prompts) / seconds, tokens / seconds)
        print(row("HF generate, one at a time", len(prompts), seconds, tokens), flush=True)
    for batch_size in args.batch_size:
        prompts = questions["prompt"][: args.hf_n or args.n]
        seconds, tokens = hf_batched(model, tokenizer, prompts, args.max_new_tokens, batch_size)
        peers[f"HF batched {batch_size}"] = (len(prompts) / seconds, tokens / seconds)
        print(row(f"HF generate, batched ({batch_size})", len(prompts), seconds, tokens), flush=True)
    for batch_size in args.batch_size:
        result = evaluate_model(
            model,
            tokenizer,
            questions,
            max_completion_length=args.max_new_tokens,
            batch_size=batch_size,
            progress=False,
        )
        tokens = sum(sum(record["completion_tokens"]) for record in result.records)
        q_rate, t_rate = len(result.records) / result.seconds, tokens / result.seconds
        print(row(f"r1lite ({batch_size} slots)", len(result.records), result.seconds, tokens), flush=True)
        for name, (peer_q, peer_t) in peers.items():
            print(f"    {q_rate / peer_q:.2f}x q/s, {t_rate / peer_t:.2f}x tok/s of {name}")
    print(f"load average after: {os.getloadavg()[0]:.1f} (other processes on the 2 cores slow both paths)")


if __name__ == "__main__":
    main()
