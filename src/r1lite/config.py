"""Run configuration: r1lite's own dataclasses plus TRL's ``GRPOConfig``, read from a flat YAML recipe.

A recipe is one flat mapping. Each key is either a field of the dataclasses below or a field of
``trl.GRPOConfig`` (every one of TRL's GRPO settings is available under its own name). Command-line
flags override the recipe, Hugging Face style: ``r1lite train --config recipe.yaml --max_steps 2``.
Unknown keys and values of the wrong type are rejected with a message that names the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser
from trl import GRPOConfig


class ConfigError(ValueError):
    """A recipe or a command-line flag that r1lite cannot use; the message says which and why."""


@dataclass
class ModelArgs:
    model: str = field(
        default="embedded:smollm2-135m-instruct",
        metadata={"help": "Hub id, local model directory, or embedded:smollm2-135m-instruct (offline)."},
    )
    precision: str = field(
        default="auto",
        metadata={"help": "auto|bf16|fp16|fp32. auto: bf16 where the device computes it natively, else fp16 "
                  "on CUDA and fp32 on CPU."},
    )
    load_in_4bit: bool = field(
        default=False, metadata={"help": "QLoRA: load the base model in 4-bit (bitsandbytes, CUDA only)."}
    )
    use_lora: bool = field(default=True, metadata={"help": "Train a LoRA adapter instead of all weights."})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank (the recipe uses 64)."})
    lora_alpha: int = field(default=64, metadata={"help": "LoRA scaling numerator (the recipe uses 64)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA path."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "Module names that receive LoRA matrices (the recipe: every attention and MLP projection)."},
    )
    init_adapter: str | None = field(
        default=None, metadata={"help": "Start from this LoRA adapter (e.g. an SFT warm-up) instead of a fresh one."}
    )


@dataclass
class DataArgs:
    dataset: str = field(
        default="openai/gsm8k",
        metadata={"help": "Hub id (openai/gsm8k), a .jsonl/.json/.parquet file, or a folder with train/test files."},
    )
    dataset_split: str = field(default="train", metadata={"help": "Split to train on."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N usable rows (after an optional shuffle)."}
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "Replace the recipe's format system prompt (keep it unset to reproduce)."}
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Drop (and count) rows whose prompt is longer than this many tokens; keeps the "
                  "recipe's bound now that GRPOConfig no longer has one."},
    )
    few_shot: int = field(
        default=0,
        metadata={"help": "Worked examples in the target format put before each question (cold start); never "
                  "the asked question itself."},
    )


@dataclass
class RewardArgs:
    reward_set: str = field(
        default="default",
        metadata={"help": "default (corrected rewards) or seed (the recipe's exact functions, defects included)."},
    )
    rewards: list[str] = field(
        default_factory=list,
        metadata={"help": "Reward names from the set, or dotted paths (pkg.module:func). Empty: the whole set."},
    )
    on_reward_error: str = field(
        default="raise",
        metadata={"help": "raise: a reward that raises stops the step and names the completion. none: score it "
                  "None (cannot verify) and count it in rewards/<name>/errors."},
    )


@dataclass
class RunArgs:
    resume: bool = field(default=False, metadata={"help": "Continue from the latest checkpoint in output_dir."})
    sample_every: int = field(
        default=10, metadata={"help": "Write a few prompt/completion/reward samples to samples.jsonl every N steps."}
    )
    cpu_fast_path: bool = field(
        default=True,
        metadata={"help": "On a CPU: sample from a copy with the LoRA adapter merged in, by inverse CDF, with a "
                  "grouped attention, and compute log-probabilities of the completion tokens only. Same sampling "
                  "distribution and loss, faster steps (docs/speed.md)."},
    )
    eval_every: int = field(
        default=0,
        metadata={"help": "Evaluate on held-out questions every N steps (and at the end), logged as eval/<metric>; "
                  "0 = off."},
    )
    eval_split: str = field(default="test", metadata={"help": "Split the held-out questions come from."})
    eval_limit: int = field(default=50, metadata={"help": "How many held-out questions each evaluation uses."})
    eval_max_new_tokens: int = field(default=256, metadata={"help": "Greedy reply length during evaluation."})
    zero_std_patience: int = field(
        default=5,
        metadata={"help": "Warn when frac_reward_zero_std stays >= 0.9 for this many logged steps in a row."},
    )


R1LITE_ARGS = (ModelArgs, DataArgs, RewardArgs, RunArgs)

# Defaults where r1lite differs from GRPOConfig's: precision is resolved from `precision` at build time
# (GRPOConfig's own bf16=True default fails on a CPU), metrics go to metrics.jsonl, every step is logged.
GRPO_DEFAULTS = {"bf16": False, "report_to": "none", "logging_steps": 1, "output_dir": "runs/r1lite"}


@dataclass
class RunConfig:
    model: ModelArgs
    data: DataArgs
    rewards: RewardArgs
    run: RunArgs
    grpo: dict[str, Any]  # GRPOConfig keyword arguments, built into a GRPOConfig by `grpo_config()`

    @property
    def output_dir(self) -> Path:
        return Path(self.grpo["output_dir"])

    def sections(self) -> tuple[Any, ...]:
        return (self.model, self.data, self.rewards, self.run)

    def to_flat_dict(self) -> dict[str, Any]:
        """The resolved recipe, loadable again with --config: r1lite fields and changed GRPO fields."""
        flat: dict[str, Any] = {}
        for section in self.sections():
            flat.update(dataclasses.asdict(section))
        defaults = _grpo_field_defaults()
        for key, value in self.grpo.items():
            if key in GRPO_DEFAULTS or defaults.get(key, object()) != value:
                flat[key] = value
        return flat

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(self.to_flat_dict(), sort_keys=False))


def _grpo_field_defaults() -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(GRPOConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


class _Parser(HfArgumentParser):
    def error(self, message: str):
        # argparse would print the whole (very long) usage and exit; one line naming the key is enough.
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def build_parser(prog: str, sections: tuple[type, ...], trl_config: type, defaults: dict[str, Any]) -> _Parser:
    parser = _Parser((*sections, trl_config), prog=prog)
    parser.set_defaults(**defaults)
    parser.add_argument("--config", default=None, help="Flat YAML recipe; command-line flags override it.")
    return parser


def _yaml_to_argv(config: dict[str, Any], known: set[str], source: str) -> list[str]:
    """Turn a recipe mapping into command-line tokens, so argparse type-checks recipe and CLI alike."""
    argv: list[str] = []
    for key, value in config.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{key}'{hint}")
        if value is None or value == []:
            continue  # "the default": argparse has no token for None or an empty list
        if isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' takes a single value or a list, not a mapping")
        values = value if isinstance(value, list) else [value]
        argv.append(f"--{key}")
        argv.extend(str(v) for v in values)
    return argv


def parse_sections(
    argv: list[str], prog: str, sections: tuple[type, ...], trl_config: type, defaults: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """Recipe plus flags -> one instance per r1lite section and the TRL config's keyword arguments."""
    argv = list(argv)
    parser = build_parser(prog, sections, trl_config, defaults)
    known = {a.dest for a in parser._actions} - {"help", "config"}
    recipe_argv: list[str] = []
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a path to a YAML recipe")
        path = Path(argv[i + 1])
        del argv[i : i + 2]
        recipe_argv = _yaml_to_argv(load_yaml(path), known, str(path))
    namespace, unknown = parser.parse_known_args(recipe_argv + argv)
    if unknown:
        raise ConfigError(f"unknown argument(s): {' '.join(unknown)} (see `{prog} --help`)")
    values = vars(namespace)
    values.pop("config", None)
    instances = []
    for dtype in sections:
        names = [f.name for f in dataclasses.fields(dtype)]
        instances.append(dtype(**{n: values.pop(n) for n in names}))
    return instances, values


def parse_run_config(argv: list[str] | None = None, prog: str = "r1lite train") -> RunConfig:
    """Parse ``--config recipe.yaml`` plus overrides into a validated RunConfig."""
    argv = list(sys.argv[1:] if argv is None else argv)
    sections, grpo = parse_sections(argv, prog, R1LITE_ARGS, GRPOConfig, GRPO_DEFAULTS)
    config = RunConfig(*sections, grpo=grpo)
    validate(config)
    return config


def load_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a flat YAML mapping of key: value")
    return data


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: '{value}' is not one of {', '.join(choices)}")


def validate(config: RunConfig) -> None:
    """Combinations argparse cannot see, with messages that name the key."""
    m, d, r, g = config.model, config.data, config.rewards, config.grpo
    _check_choice("precision", m.precision, ("auto", "bf16", "fp16", "fp32"))
    _check_choice("reward_set", r.reward_set, ("default", "seed"))
    _check_choice("on_reward_error", r.on_reward_error, ("raise", "none"))
    positive = {"lora_r": m.lora_r, "lora_alpha": m.lora_alpha, "num_generations": g["num_generations"],
                "max_completion_length": g["max_completion_length"]}
    for name, value in positive.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if d.few_shot < 0:
        raise ConfigError(f"few_shot must be >= 0, got {d.few_shot}")
    if g.get("max_steps", -1) == 0:
        raise ConfigError("max_steps must be positive (or -1 to train for num_train_epochs)")
    per_step = g["per_device_train_batch_size"] * g["gradient_accumulation_steps"]
    if g.get("generation_batch_size") is None and per_step % g["num_generations"]:
        raise ConfigError(
            f"per_device_train_batch_size x gradient_accumulation_steps ({per_step}) must be divisible by "
            f"num_generations ({g['num_generations']}): each prompt's group of completions must fit in one batch"
        )
    if config.run.eval_every < 0 or config.run.eval_limit <= 0:
        raise ConfigError("eval_every must be >= 0 and eval_limit positive")
    if m.init_adapter and not m.use_lora:
        raise ConfigError("init_adapter needs use_lora: true (it is a LoRA adapter)")
