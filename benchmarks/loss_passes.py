"""GRPO's log-prob passes with and without one part of the CPU fast path: each prompt run once per group
(`shared_prompt`, against one run per row) or the LoRA product added in one addmm (`fused_lora`).

    python benchmarks/loss_passes.py                     # shared_prompt, the recipe's and the one-shot prompt
    python benchmarks/loss_passes.py --few_shot 1 --repeats 5
    python benchmarks/loss_passes.py --part fused_lora --precision fp32 --few_shot 0

One GRPO micro-batch as the CPU trainer scores it: a GSM8K training prompt (the recipe's system prompt, with
`--few_shot` worked examples) and `--group` completions of `--completion` tokens (random ids; the passes' cost does
not depend on which), through the embedded model (bf16 by default) with the recipe's LoRA (r64 on all seven
projections) and gradient checkpointing, as `r1lite train` runs it on a CPU. Two passes are timed: the reference
pass (no gradient) and the loss forward with its backward. The two ways alternate which goes first, so drift in
the machine's speed hits both; the figures are medians. Before timing, it checks that both give the same
log-probabilities.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--few_shot", type=int, nargs="+", default=[0, 1], help="worked examples in the prompt")
    p.add_argument("--group", type=int, default=8, help="completions per prompt (num_generations)")
    p.add_argument("--completion", type=int, default=188, help="tokens per completion (step_time's mean)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dataset", type=Path, default=GSM8K)
    p.add_argument("--part", choices=["shared_prompt", "fused_lora"], default="shared_prompt", help="the part compared")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    return p.parse_args(argv)


def build_trainer(dataset_dir: Path, out: str, precision: str = "bf16"):
    from trl import GRPOConfig

    from r1lite.cpu_fast_path import CPUFastGRPOTrainer
    from r1lite.data import load_prepared
    from r1lite.models import load_model, lora_config
    from r1lite.prompts import SYSTEM_PROMPT

    model, tokenizer = load_model("embedded:smollm2-135m-instruct", precision, device="cpu")
    dataset = load_prepared(str(dataset_dir), "train", SYSTEM_PROMPT, 0, 8, tokenizer, 1024, 0)
    args = GRPOConfig(
        output_dir=out,
        use_cpu=True,
        bf16=precision == "bf16",
        per_device_train_batch_size=8,
        num_generations=8,
        beta=0.04,
        report_to="none",
        save_strategy="no",
    )
    trainer = CPUFastGRPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
        peft_config=lora_config(64, 64, 0.0, LORA_TARGETS),
    )
    return trainer, tokenizer


def batch(tokenizer, dataset_dir: Path, few_shot: int, group: int, completion: int):
    from r1lite.data import load_prepared
    from r1lite.prompts import SYSTEM_PROMPT

    row = load_prepared(str(dataset_dir), "train", SYSTEM_PROMPT, few_shot, 1, tokenizer, 1024, 0)[0]
    text = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    prompt = torch.tensor(tokenizer(text, add_special_tokens=False).input_ids)
    torch.manual_seed(0)
    completions = torch.randint(100, tokenizer.vocab_size, (group, completion))
    ids = torch.cat([prompt.expand(group, -1), completions], 1)
    return ids, torch.ones_like(ids), len(prompt)


def with_part(part: str, on: bool) -> tuple[str, ...]:
    from r1lite.cpu_fast_path import FAST_PATH_PARTS

    return FAST_PATH_PARTS if on else tuple(p for p in FAST_PATH_PARTS if p != part)


def timed(trainer, ids, mask, completion: int, part: str, on: bool, grad: bool) -> float:
    trainer.parts = with_part(part, on)
    model = trainer.model
    start = time.perf_counter()
    with trainer.training_step_context():  # the CPU LM head, as in training
        if grad:
            logps, _, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, completion)
            logps.sum().backward()
            model.zero_grad()
        else:
            with torch.no_grad(), model.disable_adapter():
                trainer._get_per_token_logps_and_entropies(model, ids, mask, completion)
    return time.perf_counter() - start


def main(argv=None) -> None:
    args = parse_args(argv)
    print(describe(bandwidth=False).line())
    with tempfile.TemporaryDirectory() as out:
        trainer, tokenizer = build_trainer(args.dataset, out, args.precision)
        trainer.model.train()
        trainer.model.gradient_checkpointing_enable({"use_reentrant": False})
        print(
            f"group {args.group} x {args.completion} completion tokens, {args.precision}, LoRA r64 on 7 projections, "
            f"checkpointing; {args.part} against the fast path without it"
        )
        without, with_ = COLUMNS[args.part]
        print(f"{'prompt':>22} {'pass':>18} {without:>16} {with_:>12} {'ratio':>7}")
        engaged = ENGAGED[args.part]
        for few_shot in args.few_shot:
            ids, mask, prompt_len = batch(tokenizer, args.dataset, few_shot, args.group, args.completion)
            with torch.no_grad(), trainer.training_step_context():
                trainer.parts = with_part(args.part, False)
                off, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, args.completion)
                trainer.parts = with_part(args.part, True)
                before = engaged(trainer)
                on, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, args.completion)
                assert engaged(trainer) > before, f"{args.part} did not engage"
            gap = (off.float() - on.float()).abs().max().item()
            label = f"{few_shot}-shot, {prompt_len} tokens"
            for name, grad in (("reference (no grad)", False), ("loss fwd + bwd", True)):
                times = {True: [], False: []}
                timed(trainer, ids, mask, args.completion, args.part, True, grad)  # warm-up
                for i in range(args.repeats):
                    for on in (i % 2 == 0, i % 2 == 1):
                        times[on].append(timed(trainer, ids, mask, args.completion, args.part, on, grad))
                off_s, on_s = statistics.median(times[False]), statistics.median(times[True])
                print(f"{label:>22} {name:>18} {off_s:>15.2f}s {on_s:>11.2f}s {off_s / on_s:>6.2f}x")
            print(f"{'':>22} largest log-prob difference between the two ways: {gap:.3g} ({args.precision})")


# The columns' names, and the counter that shows the part ran.
COLUMNS = {"shared_prompt": ("one run per row", "prompt once"), "fused_lora": ("PEFT's forward", "fused")}
ENGAGED = {
    "shared_prompt": lambda trainer: trainer.shared_prompt_passes,
    "fused_lora": lambda trainer: trainer.fused_lora.calls,
}

if __name__ == "__main__":
    main()
