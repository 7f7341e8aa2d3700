"""The `r1lite` command: train, chat, eval, report and rewards check."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from r1lite import __version__

COMMANDS = {
    "train": "GRPO-train a LoRA adapter from a YAML recipe (--config) plus overrides",
    "sft": "supervised warm-up on worked solutions in the target format (a cold start for train)",
    "chat": "ask a question (or chat interactively) with or without an adapter (the recipe's probe)",
    "rewards": "rewards check: sample groups from a model and show which rewards carry a learning signal",
    "eval": "accuracy and format rates on GSM8K-style questions (--baseline: with vs without the adapter)",
    "report": "write plots and report.md/report.html for a run directory",
    "export": "a run's adapter as a merged transformers model (--merged) and a GGUF file + Ollama Modelfile (--gguf)",
}


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # transformers' per-load progress bars and notices drown our own messages
    for noisy in ("httpx", "urllib3", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _reuse_freed_memory() -> None:
    """Keep freed blocks in the process instead of giving each back to the OS at once.

    By default glibc maps every block over a few MB afresh and unmaps it when freed, so a loop that makes tensors
    of the same sizes at every step page-faults them in again each time: 2.3 million page faults in `r1lite eval` on
    100 GSM8K questions. Raising the mmap threshold to its maximum (32 MB) and not trimming the heap took the same
    eval from 52 s to 48 s on the 2-core CPU, peak memory within 3%. Only on glibc, and not where the
    MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ environment variables already say otherwise."""
    import ctypes
    import os
    import platform

    if platform.libc_ver()[0] != "glibc" or {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ):
        return
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
    libc.mallopt(m_trim_threshold, 1 << 30)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Imports with the cyclic garbage collector paused, and what they made frozen out of its later passes.

    Importing torch, transformers, peft and TRL makes about a million objects that live as long as the process and
    no garbage; the collector's full passes over them as they pile up (8 of them) took 1.3 s of `r1lite eval`'s
    start on a 2-core CPU."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def cmd_train(argv: list[str]) -> int:
    with _collector_paused():
        from r1lite.config import RunConfig, parse_config
        from r1lite.train import train

    config = parse_config(RunConfig, argv)
    adapter = train(config)
    print(f"adapter: {adapter}\nmetrics: {config.output_dir / 'metrics.jsonl'}")
    return 0


def cmd_sft(argv: list[str]) -> int:
    with _collector_paused():
        from r1lite.config import SFTRunConfig, parse_config
        from r1lite.sft import sft

    adapter = sft(parse_config(SFTRunConfig, argv))
    print(f"adapter: {adapter}\nstart GRPO from it: r1lite train --init_adapter {adapter} ...")
    return 0


def cmd_chat(argv: list[str]) -> int:
    with _collector_paused():
        from r1lite.chat import chat
        from r1lite.config import ChatConfig, parse_config

    chat(parse_config(ChatConfig, argv))
    return 0


def cmd_eval(argv: list[str]) -> int:
    with _collector_paused():
        from r1lite.config import EvalConfig, parse_config
        from r1lite.evaluate import eval_command

    print(eval_command(parse_config(EvalConfig, argv)))
    return 0


def cmd_report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="r1lite report", description=COMMANDS["report"])
    parser.add_argument("run_dir", help="a training run's output directory (holds metrics.jsonl)")
    parser.add_argument("--smooth", type=int, default=None, help="moving-average window (default: by run length)")
    args = parser.parse_args(argv)

    with _collector_paused():
        from r1lite.report import write_report

    for name, path in write_report(args.run_dir, smooth=args.smooth).items():
        print(f"{name}: {path}")
    return 0


def cmd_rewards(argv: list[str]) -> int:
    with _collector_paused():
        from r1lite.config import RewardsCheckConfig, parse_config
        from r1lite.diagnostics import rewards_check
        from r1lite.errors import ConfigError

    if not argv or argv[0] in ("-h", "--help"):
        print("usage: r1lite rewards check [--help] [options]\n\n" + COMMANDS["rewards"])
        return 0 if argv else 2
    if argv[0] != "check":
        raise ConfigError(f"unknown action '{argv[0]}': the one action is `r1lite rewards check`")
    print(rewards_check(parse_config(RewardsCheckConfig, argv[1:])))
    return 0


def cmd_export(argv: list[str]) -> int:
    with _collector_paused():
        from r1lite.config import ExportConfig, parse_config
        from r1lite.export import export, summary

    print(summary(export(parse_config(ExportConfig, argv))))
    return 0


HANDLERS = {
    "train": cmd_train,
    "sft": cmd_sft,
    "chat": cmd_chat,
    "report": cmd_report,
    "rewards": cmd_rewards,
    "eval": cmd_eval,
    "export": cmd_export,
}


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
    _reuse_freed_memory()
    from r1lite.errors import R1liteError

    try:
        return HANDLERS[command](rest)
    except R1liteError as exc:
        print(f"r1lite {command}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:  # Ctrl-C while loading or chatting: one line, no traceback (training saves first)
        print(f"\nr1lite {command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
