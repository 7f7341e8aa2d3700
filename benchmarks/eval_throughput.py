"""Questions/s and generated tokens/s of `r1lite eval`'s batched generation next to a one-question-at-a-time
HF `generate` loop: same model, precision, prompts and greedy decoding, measured in one run.

    python benchmarks/eval_throughput.py                      # 200 questions batched, 40 one at a time
    python benchmarks/eval_throughput.py --n 64 --loop_n 16   # shorter
    python benchmarks/eval_throughput.py --batch_size 16 32 64 --threads 1

The one-at-a-time loop is slow, so it runs on the first --loop_n questions only; both paths are compared
per question and per generated token, and extrapolated to GSM8K's 1,319 test questions.
Target on the 2-core CPU: batched at least 4x the loop, the whole test split in under 20 minutes.
"""

import os

# Threads that wait for each other by spinning (libgomp's default) stall badly when other processes
# share the two cores: 2 threads ran at 22 tok/s spinning and 243 tok/s passive, on this machine under
# load. Set before torch starts OpenMP; run with OMP_WAIT_POLICY=ACTIVE to measure the default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from r1lite.config import ModelArgs  # noqa: E402
from r1lite.data import load_prepared  # noqa: E402
from r1lite.engine import CPU_BATCH_SIZE as BATCH_SIZE  # noqa: E402
from r1lite.evaluate import evaluate_model  # noqa: E402
from r1lite.models import load_for_generation  # noqa: E402

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
TEST_SPLIT = 1319


def one_at_a_time(model, tokenizer, prompts, max_new_tokens: int) -> tuple[float, int]:
    """Seconds and generated tokens (up to and including EOS) for a plain loop over `generate`."""
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
            generated = output[0, inputs["input_ids"].shape[1] :].tolist()
            eos = tokenizer.eos_token_id
            tokens += generated.index(eos) + 1 if eos in generated else len(generated)
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
    parser.add_argument("--loop_n", type=int, default=40, help="questions for the one-at-a-time loop (0: skip)")
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
        f"{torch.get_num_threads()} threads (OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}), greedy, max "
        f"{args.max_new_tokens} new tokens; load average before: {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'path':34} {'questions':>9} {'seconds':>8} {'q/s':>7} {'tok/s':>8} {'tokens/q':>9} {'full test split':>14}"
    )

    loop_rate = None
    if args.loop_n:
        prompts = questions["prompt"][: args.loop_n]
        seconds, tokens = one_at_a_time(model, tokenizer, prompts, args.max_new_tokens)
        loop_rate = (len(prompts) / seconds, tokens / seconds)
        print(row("one at a time (HF generate loop)", len(prompts), seconds, tokens), flush=True)
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
        print(row(f"r1lite batched (batch_size {batch_size})", len(result.records), result.seconds, tokens), end="")
        if loop_rate:
            q_ratio = len(result.records) / result.seconds / loop_rate[0]
            t_ratio = tokens / result.seconds / loop_rate[1]
            print(f"   {q_ratio:.1f}x q/s, {t_ratio:.1f}x tok/s of the loop", end="")
        print(flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f} (other processes on the 2 cores slow both paths)")


if __name__ == "__main__":
    main()
