"""The `r1lite` command: train, chat, eval, report and rewards check."""

from __future__ import annotations

import argparse
import logging
import sys

from r1lite import __version__

COMMANDS = {
    "train": "GRPO-train a LoRA adapter from a YAML recipe (--config) plus overrides",
    "sft": "supervised warm-up on worked solutions in the target format (a cold start for train)",
    "chat": "ask one question with and without an adapter (the recipe's probe)",
    "rewards": "rewards check: sample groups from a model and show which rewards carry a learning signal",
    "eval": "accuracy and format rates on GSM8K-style questions (--baseline: with vs without the adapter)",
    "report": "write plots and report.md/report.html for a run directory",
}


class CliError(Exception):
    """Errors that deserve one clear line, not a traceback."""


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # transformers' per-load progress bars and notices drown our own messages
    for noisy in ("httpx", "urllib3", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def cmd_train(argv: list[str]) -> int:
    from r1lite.config import parse_run_config
    from r1lite.train import train

    config = parse_run_config(argv, prog="r1lite train")
    adapter = train(config)
    print(f"adapter: {adapter}\nmetrics: {config.output_dir / 'metrics.jsonl'}")
    return 0


def cmd_sft(argv: list[str]) -> int:
    from r1lite.sft import sft

    adapter = sft(argv)
    print(f"adapter: {adapter}\nstart GRPO from it: r1lite train --init_adapter {adapter} ...")
    return 0


def cmd_chat(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="r1lite chat", description=COMMANDS["chat"])
    parser.add_argument("question", help="e.g. \"How many r's are in strawberry?\"")
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--adapter", default=None, help="LoRA adapter directory (a run's adapter/)")
    parser.add_argument("--system_prompt", default=None,
                        help="override the system prompt; 'recipe' for the format prompt, '' for none")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top_p", type=float, default=0.95)
    parser.add_argument("--max_new_tokens", type=int, default=1024)
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from r1lite.generate import chat
    from r1lite.prompts import SYSTEM_PROMPT

    system_prompt = SYSTEM_PROMPT if args.system_prompt == "recipe" else args.system_prompt
    reply = chat(args.question, args.model, args.adapter, system_prompt, args.temperature, args.top_p,
                 args.max_new_tokens, args.precision, args.seed)
    print(reply)
    return 0


def cmd_eval(argv: list[str]) -> int:
    from r1lite.evaluate import eval_command

    print(eval_command(argv))
    return 0


def cmd_report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="r1lite report", description=COMMANDS["report"])
    parser.add_argument("run_dir", help="a training run's output directory (holds metrics.jsonl)")
    parser.add_argument("--smooth", type=int, default=None, help="moving-average window (default: by run length)")
    args = parser.parse_args(argv)

    from r1lite.report import write_report

    for name, path in write_report(args.run_dir, smooth=args.smooth).items():
        print(f"{name}: {path}")
    return 0


def cmd_rewards(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="r1lite rewards", description=COMMANDS["rewards"])
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="score sampled groups with every reward of both sets")
    check.add_argument("--model", default="embedded:smollm2-135m-instruct")
    check.add_argument("--adapter", default=None, help="LoRA adapter to check instead of the bare model")
    check.add_argument("--dataset", default="openai/gsm8k")
    check.add_argument("--split", default="train")
    check.add_argument("--n", type=int, default=4, help="prompts to sample (each gets a group)")
    check.add_argument("--num_generations", type=int, default=8, help="completions per prompt (a GRPO group)")
    check.add_argument("--max_new_tokens", type=int, default=200)
    check.add_argument("--temperature", type=float, default=1.0)
    check.add_argument("--few_shot", type=int, default=0, help="worked examples in the prompt, as in training")
    check.add_argument("--rewards", nargs="*", default=[], help="extra user rewards (pkg.module:func)")
    check.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    check.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n <= 0 or args.num_generations <= 1:
        raise CliError("--n must be positive and --num_generations at least 2 (a group needs two completions)")

    from r1lite.data import load_prepared
    from r1lite.diagnostics import check_all, format_table
    from r1lite.evaluate import generate_replies
    from r1lite.models import attach_adapter, load_model
    from r1lite.rewards import import_reward

    model, tokenizer = load_model(args.model, args.precision)
    if args.adapter:
        model = attach_adapter(model, args.adapter)
    data = load_prepared(args.dataset, args.split, few_shot=args.few_shot, limit=args.n, seed=args.seed)
    # One prompt's whole group per batch, sampled as GRPO does (temperature, no top-p cut).
    replies = generate_replies(model, tokenizer, data["prompt"], num_samples=args.num_generations,
                               temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                               batch_size=args.num_generations, seed=args.seed)
    groups = [[reply.text for reply in group] for group in replies]
    extra = {path: import_reward(path) for path in args.rewards}
    print(f"\n{len(groups)} prompts x {args.num_generations} completions from {args.model}"
          f"{' + ' + args.adapter if args.adapter else ''} on {args.dataset} [{args.split}]\n")
    print(format_table(check_all(data["prompt"], groups, data["answer"], extra)))
    return 0


HANDLERS = {"train": cmd_train, "sft": cmd_sft, "chat": cmd_chat, "report": cmd_report, "rewards": cmd_rewards,
            "eval": cmd_eval}


def _usage() -> str:
    lines = [f"r1lite {__version__}: GRPO reasoning training for small models", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, help_ in COMMANDS.items()]
    lines += ["", "Run `r1lite COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(__version__)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in HANDLERS:
        print(f"r1lite: unknown command '{command}'\n\n{_usage()}", file=sys.stderr)
        return 2
    _setup_logging()
    from r1lite.config import ConfigError
    from r1lite.data import DataError
    from r1lite.evaluate import EvalError
    from r1lite.models import ModelError
    from r1lite.report import ReportError
    from r1lite.rewards import RewardError

    try:
        return HANDLERS[command](rest)
    except (ConfigError, DataError, ModelError, RewardError, ReportError, EvalError, CliError,
            FileNotFoundError) as exc:
        print(f"r1lite {command}: error: {exc}", file=sys.stderr)
        return 2
