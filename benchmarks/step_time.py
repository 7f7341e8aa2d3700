"""Seconds per GRPO step: the recipe on plain TRL against r1lite's default CPU path, side by side.

    python benchmarks/step_time.py                       # 1 warm-up + 5 measured steps of each (~15 min, 2 cores)
                                                         # (plain TRL in bf16 only on CPUs with bf16 arithmetic)
    python benchmarks/step_time.py --steps 3 --output /tmp/step_time.json
    python benchmarks/step_time.py --configs recipe recipe+bf16 recipe+bf16+merged    # one lever at a time

Each configuration runs in its own subprocess, one after the other (never concurrently: they would share
the cores), so peak resident memory is measured per configuration. Both see the same prompts in the same
order (same data, same seed) and the same settings that shape the samples: 8 completions of at most 200
tokens, temperature 1.0, LoRA r64/alpha64 on all seven projections, beta 0.04, loss_type grpo, the seed
rewards and the recipe's system prompt.

Configurations: ``r1lite`` is `r1lite train` itself (its defaults on this machine). ``recipe`` is the recipe
on plain TRL: fp32, gradient checkpointing, TRL's generate with the adapter unmerged. ``recipe+<lever>+...``
adds levers to it: bf16, merged (generate from a merged copy with r1lite's grouped attention), lm-head
(log-probabilities of the completion tokens only, r1lite.cpu_fast_path.CPULogProbs), sampling (inverse-CDF draws),
attention (the grouped attention in the loss passes too), slot-decoding (the merged copy samples through
r1lite.engine's decoding loop; with merged only), shared-prompt (each prompt run once for its completions in the
loss passes; with attention only), head-fold (r1lite's loader hands the LM head contiguous
input, models.fold_head_input; plain TRL loads with transformers alone), no-gc, static-cache, paged
(TRL's use_transformers_continuous_batching), 1-thread. The first configuration is the baseline of the ratios;
by default the recipe on plain TRL in fp32, then in bf16 (what a TRL user on a bf16-capable CPU would run), then r1lite.

Every run also prints the machine (CPU model, ISA flags, torch threads, copy bandwidth) and, per configuration,
the memory-bandwidth bound of its generation (benchmarks/machine.py: every decoding step reads all weights once
plus each sequence's KV cache) and how far the measured tokens/s are from it. For plain TRL the bound counts the
base weights only (its unmerged adapter is read on top), so its true bound is lower.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import decode_bound, describe  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "step_time.json"
MODEL = "embedded:smollm2-135m-instruct"
SEED = 3407
ROWS = 256  # enough distinct prompts for any benchmark length, cheap to prepare

# The recipe's GRPO settings in today's TRL names (docs: seed-recipe.md). adamw_8bit needs CUDA; on a CPU
# both configurations use adamw_torch (r1lite swaps it itself). Checkpoints are not part of a step.
RECIPE_GRPO = {
    "learning_rate": 5e-6,
    "adam_beta1": 0.9,
    "adam_beta2": 0.99,
    "weight_decay": 0.1,
    "warmup_steps": 0.1,
    "lr_scheduler_type": "cosine",
    "optim": "adamw_torch",
    "logging_steps": 1,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "num_generations": 8,
    "max_completion_length": 200,
    "max_grad_norm": 0.1,
    "report_to": "none",
    "beta": 0.04,
    "loss_type": "grpo",
    "temperature": 1.0,
    "seed": SEED,
    "save_strategy": "no",
}
LORA = {
    "r": 64,
    "alpha": 64,
    "dropout": 0.0,
    "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}

# What each lever changes in the plain-TRL run, applied on top of the recipe.
LEVERS = {
    "bf16": {"precision": "bf16"},
    "merged": {"fast_path_parts": ("merged_generation",)},
    "lm-head": {"fast_path_parts": ("cpu_lm_head",)},
    "sampling": {"fast_path_parts": ("fast_sampling",)},
    "attention": {"fast_path_parts": ("grouped_attention",)},
    "slot-decoding": {"fast_path_parts": ("slot_decoding",)},
    "shared-prompt": {"fast_path_parts": ("shared_prompt",)},  # takes effect with the attention lever
    "head-fold": {"head_fold": True},
    "no-gc": {"gradient_checkpointing": False},
    "static-cache": {"cache_implementation": "static"},
    "paged": {"use_transformers_continuous_batching": True},
    "1-thread": {"threads": 1},
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5, help="measured GRPO steps per configuration")
    p.add_argument("--warmup", type=int, default=1, help="steps run first and left out of the figures")
    p.add_argument(
        "--configs",
        nargs="+",
        default=None,
        help="first one is the ratios' baseline (default: recipe recipe+bf16 r1lite; recipe+bf16 only where the CPU "
        "has bf16 arithmetic)",
    )
    p.add_argument("--dataset", type=Path, default=DEFAULT_DATA, help="folder with GSM8K train.jsonl")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file for the figures")
    p.add_argument("--reward_set", default="seed", help="seed (the recipe's rewards) or default (corrected)")
    p.add_argument("--few_shot", type=int, default=0, help="worked examples in each prompt (0: the recipe)")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one configuration, write its JSON
    p.add_argument("--child_output", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------- one configuration


def _recipe_options(name: str) -> dict:
    head, *levers = name.split("+")
    if head != "recipe" or any(lever not in LEVERS for lever in levers):
        raise SystemExit(f"unknown configuration {name!r}: r1lite, recipe or recipe+<{'|'.join(LEVERS)}>...")
    options = {"precision": "fp32", "fast_path_parts": (), "gradient_checkpointing": True, "head_fold": False}
    for lever in levers:
        parts = options["fast_path_parts"] + LEVERS[lever].get("fast_path_parts", ())
        options.update(LEVERS[lever], fast_path_parts=parts)
    return options


def run_recipe(name: str, args: argparse.Namespace, out_dir: Path) -> list[dict]:
    """The recipe on plain TRL (plus any levers); returns the logged records, one per step."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig

    from r1lite.cpu_fast_path import CPUFastGRPOTrainer
    from r1lite.data import load_prepared
    from r1lite.models import fold_head_input, load_tokenizer, lora_config, resolve_dtype, resolve_model_path
    from r1lite.prompts import SYSTEM_PROMPT
    from r1lite.rewards import build_reward_funcs

    options = _recipe_options(name)
    if "threads" in options:
        torch.set_num_threads(options.pop("threads"))
    precision = options.pop("precision")

    parts = options.pop("fast_path_parts")  # () for plain TRL: CPUFastGRPOTrainer then only times the phases

    # Loaded as a TRL user loads it: transformers alone, without what r1lite's loader adds (levers add it back).
    path = resolve_model_path(MODEL)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(precision, "cpu"))
    tokenizer = load_tokenizer(path)
    if options.pop("head_fold"):
        fold_head_input(model)
    dataset = load_prepared(str(args.dataset), "train", SYSTEM_PROMPT, args.few_shot, ROWS, tokenizer, 256, SEED)
    config = GRPOConfig(
        output_dir=str(out_dir),
        use_cpu=True,
        bf16=precision == "bf16",
        max_steps=args.warmup + args.steps,
        **{**RECIPE_GRPO, **options},
    )
    trainer = CPUFastGRPOTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        reward_funcs=build_reward_funcs(args.reward_set, None, "raise"),
        parts=parts,
        peft_config=lora_config(LORA["r"], LORA["alpha"], LORA["dropout"], LORA["targets"]),
    )
    trainer.train()
    return [record for record in trainer.state.log_history if "reward" in record]


def run_r1lite(args: argparse.Namespace, out_dir: Path) -> list[dict]:
    """`r1lite train` with the recipe's settings and everything else left to r1lite's defaults."""
    from r1lite.config import RunConfig, parse_config
    from r1lite.train import train

    grpo = {k: v for k, v in RECIPE_GRPO.items() if k != "save_strategy"}
    argv = [
        "--model",
        MODEL,
        "--dataset",
        str(args.dataset),
        "--output_dir",
        str(out_dir),
        "--max_train_samples",
        str(ROWS),
        "--max_prompt_length",
        "256",
        "--reward_set",
        args.reward_set,
        "--few_shot",
        str(args.few_shot),
        "--lora_r",
        str(LORA["r"]),
        "--lora_alpha",
        str(LORA["alpha"]),
        "--lora_dropout",
        str(LORA["dropout"]),
        "--lora_target_modules",
        *LORA["targets"],
        "--max_steps",
        str(args.warmup + args.steps),
        "--save_steps",
        "100000",
    ]
    for key, value in grpo.items():
        argv += [f"--{key}", str(value)]
    train(parse_config(RunConfig, argv))
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [record for record in records if "reward" in record]


def _precision(name: str) -> str:
    """The precision a configuration generates in: the recipe's are explicit, r1lite's is its `auto` on this CPU."""
    if name != "r1lite":
        return _recipe_options(name)["precision"]
    import torch

    from r1lite.models import resolve_dtype

    return "bf16" if resolve_dtype("auto", "cpu") == torch.bfloat16 else "fp32"


def child(args: argparse.Namespace) -> None:
    import torch

    load_before, cpu_before, wall_before = os.getloadavg()[0], time.process_time(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="step_time-") as tmp:
        run = run_r1lite if args.child == "r1lite" else lambda a, d: run_recipe(args.child, a, d)
        records = run(args, Path(tmp))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "config": args.child,
        "precision": _precision(args.child),
        "records": records,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
        "cpu_seconds": time.process_time() - cpu_before,
        "wall_seconds": time.perf_counter() - wall_before,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }
    args.child_output.write_text(json.dumps(result))


# ----------------------------------------------------------------------------------------------- side by side


PHASE_KEYS = ("generation", "rewards", "logprobs", "backward", "optimizer")


def summarise(result: dict, warmup: int) -> dict:
    measured = result["records"][warmup:]
    if not measured:
        raise SystemExit(f"{result['config']}: no measured steps (only {len(result['records'])} logged)")
    step = [r["time/step"] for r in measured]
    tokens = [r["completions/mean_length"] * 8 for r in measured]  # 8 completions per step
    # num_tokens is TRL's running count of prompt + completion tokens; its step-to-step difference gives the prompts.
    counts = [0.0] + [r["num_tokens"] for r in result["records"]]
    prompt = [(counts[i + 1] - counts[i]) / 8 - r["completions/mean_length"] for i, r in enumerate(result["records"])]
    return {
        "config": result["config"],
        "precision": result["precision"],
        "mean_prompt_length": statistics.mean(prompt[warmup:]),
        "steps": len(measured),
        "median_s_per_step": statistics.median(step),
        "min_s_per_step": min(step),
        "max_s_per_step": max(step),
        "phases_median_s": {p: statistics.median(r[f"time/{p}"] for r in measured) for p in PHASE_KEYS},
        "mean_completion_length": statistics.mean(r["completions/mean_length"] for r in measured),
        "generated_tokens_per_s": sum(tokens) / sum(step),
        "generation_tokens_per_s": sum(tokens) / sum(r["time/generation"] for r in measured),
        "s_per_generated_token": sum(step) / sum(tokens),
        "peak_rss_mb": result["peak_rss_mb"],
        "reward_per_step": [r["reward"] for r in result["records"]],
        "threads": result["threads"],
        "load_avg_1min": [result["load_before"], result["load_after"]],
    }


def add_bounds(summaries: list[dict], bandwidth_gbs: float) -> None:
    """Each configuration's bandwidth bound on generation tokens/s, and measured / bound."""
    for s in summaries:
        context = s["mean_prompt_length"] + s["mean_completion_length"] / 2
        bound = decode_bound(MODEL, s["precision"], 8, context, bandwidth_gbs)
        s["bandwidth_bound"] = {
            "weight_mb": bound.weight_bytes / 1e6,
            "kv_kb_per_token": bound.kv_bytes_per_token / 1e3,
            "mean_context": context,
            "mb_per_step": bound.bytes_per_step / 1e6,
            "tokens_per_s": bound.tokens_per_s,
        }
        s["bound_over_measured"] = bound.tokens_per_s / s["generation_tokens_per_s"]


def print_table(summaries: list[dict]) -> None:
    rows = [("seconds/step (median)", "median_s_per_step", "{:.1f}"), ("  min..max", None, None)]
    rows += [(f"  {p}", p, "{:.1f}") for p in PHASE_KEYS]
    rows += [
        ("mean completion length", "mean_completion_length", "{:.0f}"),
        ("generated tokens/s (whole step)", "generated_tokens_per_s", "{:.1f}"),
        ("tokens/s while generating", "generation_tokens_per_s", "{:.1f}"),
        ("  bandwidth bound (tokens/s)", "bound", "{:.0f}"),
        ("  bound / measured", "bound_over_measured", "{:.2f}x"),
        ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
        ("load average (before, after)", None, None),
    ]
    width = max(22, *(len(s["config"]) + 2 for s in summaries))
    print(f"{'':34}" + "".join(f"{s['config']:>{width}}" for s in summaries))
    for label, key, fmt in rows:
        cells = []
        for s in summaries:
            if label.strip() == "min..max":
                cells.append(f"{s['min_s_per_step']:.1f}..{s['max_s_per_step']:.1f}")
            elif key == "bound":
                cells.append(fmt.format(s["bandwidth_bound"]["tokens_per_s"]))
            elif label.startswith("load"):
                cells.append("{:.1f}, {:.1f}".format(*s["load_avg_1min"]))
            else:
                cells.append(fmt.format(s["phases_median_s"][key] if key in PHASE_KEYS else s[key]))
        print(f"{label:34}" + "".join(f"{c:>{width}}" for c in cells))
    base, last = summaries[0], summaries[-1]
    pairs = [(base, s) for s in summaries[1:]] + [(s, last) for s in summaries[1:-1]]  # also each peer / the last
    for base, s in pairs:
        print(
            f"ratio {base['config']} / {s['config']}: {base['median_s_per_step'] / s['median_s_per_step']:.2f}x "
            f"seconds per step, {base['s_per_generated_token'] / s['s_per_generated_token']:.2f}x "
            "seconds per generated token"
        )


def default_configs(isa: list[str]) -> list[str]:
    """Plain TRL in fp32 and in bf16, then r1lite; bf16 only where the CPU computes in it (AVX-512 BF16 or AMX)."""
    if {"avx512_bf16", "amx_bf16"} & set(isa):
        return ["recipe", "recipe+bf16", "r1lite"]
    print(
        "[step_time] this CPU has no bf16 arithmetic (AVX-512 BF16, AMX): plain TRL in bf16 converts every product "
        "(its first step took 545 s on an AVX2-only EPYC), so it is left out; ask for it with "
        "--configs recipe recipe+bf16 r1lite",
        flush=True,
    )
    return ["recipe", "r1lite"]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        return child(args)
    machine = describe()
    print(f"[step_time] machine: {machine.line()}", flush=True)
    if args.configs is None:
        args.configs = default_configs(machine.isa)
    summaries = []
    for name in args.configs:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                name,
                "--child_output",
                out.name,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--dataset",
                str(args.dataset),
                "--reward_set",
                args.reward_set,
                "--few_shot",
                str(args.few_shot),
            ]
            print(f"[step_time] {name}: {args.warmup} warm-up + {args.steps} measured steps", flush=True)
            subprocess.run(cmd, check=True)
            summaries.append(summarise(json.loads(Path(out.name).read_text()), args.warmup))
    add_bounds(summaries, machine.bandwidth_gbs)
    print(f"machine: {machine.line()}")
    print_table(summaries)
    base = summaries[0]
    report = {
        "settings": {
            "model": MODEL,
            "steps": args.steps,
            "warmup": args.warmup,
            "grpo": RECIPE_GRPO,
            "lora": LORA,
            "reward_set": args.reward_set,
            "few_shot": args.few_shot,
            "cpu_count": os.cpu_count(),
        },
        "machine": asdict(machine),
        "configs": summaries,
        "ratios": {
            s["config"]: {
                "s_per_step": base["median_s_per_step"] / s["median_s_per_step"],
                "s_per_token": base["s_per_generated_token"] / s["s_per_generated_token"],
            }
            for s in summaries[1:]
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"[step_time] figures written to {args.output}")


if __name__ == "__main__":
    main()
