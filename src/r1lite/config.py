"""Configuration of every command: dataclass sections, read from a flat YAML recipe plus flags.

A recipe is one flat mapping. Each key is a field of one of the sections below or, for ``train`` and
``sft``, of TRL's ``GRPOConfig`` / ``SFTConfig`` under its own name. Command-line flags override the
recipe, Hugging Face style: ``r1lite train --config recipe.yaml --max_steps 2``. Every command parses
the same way and the same idea has the same name everywhere, TRL's where TRL has one
(``num_generations``, ``max_completion_length``, ``dataset_train_split``, ``dataset_test_split``).
Unknown keys and values of the wrong type are rejected with one line that names the key.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml
from trl import GRPOConfig, SFTConfig

from r1lite.errors import ConfigError, R1liteError
from r1lite.models import DEFAULT_MODEL, PRECISIONS
from r1lite.prompts import SYSTEM_PROMPT
from r1lite.recipe import build_parser, load_yaml, parse_config  # noqa: F401  (the parser lives in recipe.py)

# ----------------------------------------------------------------------------------------------- sections


@dataclass
class ModelArgs:
    model: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": f"Hub id, local model directory, or {DEFAULT_MODEL} (offline, shipped in a package)."},
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto|bf16|fp16|fp32. auto: bf16 where the device computes it natively, else fp16 on "
            "CUDA (T4, V100: bf16 there is emulated and slow) and fp32 on CPU."
        },
    )
    load_in_4bit: bool = field(
        default=False, metadata={"help": "QLoRA: load the base model in 4-bit nf4 (bitsandbytes, CUDA only)."}
    )
    bnb_4bit_quant_storage: str | None = field(
        default=None, metadata={"help": "Storage dtype of the 4-bit weights (bf16 for FSDP/ZeRO-3 sharding)."}
    )
    attn_implementation: str | None = field(
        default=None, metadata={"help": "transformers attention: sdpa, eager, flash_attention_2 (model default)."}
    )
    torch_dtype: str | None = field(
        default=None,
        metadata={"help": "Load the weights in this dtype instead of the precision's (bfloat16, float16, float32)."},
    )


@dataclass
class RemoteCodeArgs:
    # train and sft take TRL's own trust_remote_code field; the commands without a TRL config take this one.
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run model code from the hub repository. Off unless you trust it."}
    )


@dataclass
class LoraArgs:
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
        metadata={
            "help": "Hub id (openai/gsm8k), a .jsonl/.json/.parquet file, a folder with train/test files, "
            "or the built-in task arith[:digits=2,num_ops=2,ops=+-*]."
        },
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on (and to sample from)."})
    dataset_test_split: str = field(default="test", metadata={"help": "Split the held-out questions come from."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N usable rows of the train split."}
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={
            "help": "Evaluate on N questions drawn with the seed from the whole test split (unset: all; 50 during "
            "training)."
        },
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "Replace the recipe's format system prompt (keep it unset to reproduce)."}
    )
    max_prompt_length: int | None = field(
        default=None,
        metadata={
            "help": "Drop (and count) rows whose prompt is longer than this many tokens; keeps the "
            "recipe's bound now that GRPOConfig no longer has one."
        },
    )
    few_shot: int = field(
        default=0,
        metadata={
            "help": "Worked examples in the target format put before each question (cold start); never "
            "the asked question itself."
        },
    )

    def prompt(self) -> str | None:
        """The system prompt every command uses: the recipe's unless one is given."""
        return SYSTEM_PROMPT if self.system_prompt is None else self.system_prompt


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
        metadata={
            "help": "raise: a reward that raises, returns the wrong number of scores or a score that is not a "
            "finite number stops the step and names the completion. none: score it None (cannot verify) "
            "and count it in rewards/<name>/errors."
        },
    )
    reward_timeout: float | None = field(
        default=None,
        metadata={
            "help": "Seconds one reward call may take (opt-in; main thread only). Over it: an error, or with "
            "on_reward_error none the batch scores None, counted in rewards/<name>/timeouts."
        },
    )


@dataclass
class OutputArgs:
    resume: bool = field(default=False, metadata={"help": "Continue from the latest checkpoint in output_dir."})
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Replace the run files (metrics, completions, checkpoints, adapter) of an earlier run in "
            "output_dir. Without it, or resume, r1lite refuses to mix two runs in one directory."
        },
    )

    def validate(self) -> None:
        if self.resume and self.overwrite:
            raise ConfigError("resume and overwrite exclude each other: continue the run, or replace it")


@dataclass
class RunArgs:
    cpu_fast_path: bool = field(
        default=True,
        metadata={
            "help": "On a CPU, train with CPUFastGRPOTrainer: sampling from a copy with the LoRA adapter "
            "merged in, by inverse CDF, with a grouped attention, and log-probabilities of the completion "
            "tokens only. Same sampling distribution and loss, faster steps (docs/speed.md)."
        },
    )
    eval_every: int = field(
        default=0,
        metadata={
            "help": "Evaluate on held-out questions every N steps (and at the end), logged as eval/<metric>; "
            "0 = off. Main process only."
        },
    )
    eval_max_completion_length: int = field(default=256, metadata={"help": "Greedy reply length when evaluating."})
    zero_std_patience: int = field(
        default=5,
        metadata={"help": "Warn when frac_reward_zero_std stays >= 0.9 for this many logged steps in a row."},
    )


@dataclass
class GenerationArgs:
    num_generations: int = field(default=1, metadata={"help": "Replies per question (> 1 adds pass@k and a vote)."})
    temperature: float | None = field(
        default=None, metadata={"help": "0 = greedy. Unset: greedy with one reply, 0.8 (the recipe's) with several."}
    )
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling: keep the smallest set with this mass."})
    max_completion_length: int = field(default=512, metadata={"help": "New tokens per reply at most."})
    batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Sequences generated together (questions x replies). Unset: on CPU up to 64 where r1lite's "
            "compiled forward runs (a plain Llama/Qwen2 model in fp32; as many as 1.5 GiB of cache holds, at least "
            "32) and 32 otherwise; sized to the free memory on a GPU."
        },
    )
    backend: str = field(
        default="auto",
        metadata={"help": "hf (r1lite's batched decoder), vllm, or auto: vllm on a GPU where it is installed."},
    )
    seed: int = field(default=0, metadata={"help": "Sampling and few-shot example choice."})


@dataclass
class EvalArgs:
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter directory (adapter/ or checkpoint-N/)."})
    baseline: bool = field(default=False, metadata={"help": "Also evaluate the model without the adapter."})
    no_system_prompt: bool = field(
        default=False, metadata={"help": "The bare chat template (the recipe's 'before' probe)."}
    )
    output: str | None = field(
        default=None, metadata={"help": "Summary JSON path (default eval/<model-or-adapter-name>.json)."}
    )
    quiet: bool = field(default=False, metadata={"help": "No progress bar."})


@dataclass
class ChatArgs:
    question: str | None = field(
        default=None, metadata={"help": "Ask once and print the reply (the recipe's probe); unset: interactive."}
    )
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter directory (a run's adapter/)."})
    system_prompt: str | None = field(
        default=None,
        metadata={
            "help": "Unset: the bare chat template without an adapter, the format prompt with one. "
            "'recipe' for the format prompt, '' for none."
        },
    )

    show: str | None = field(
        default=None,
        metadata={
            "help": "raw|split|answer. raw: the reply as generated; split: reasoning and answer under their own "
            "labels, tags hidden; answer: only the answer (a 'thinking…' line meanwhile). Unset: split "
            "interactively, raw with a question."
        },
    )

    SHOW_CHOICES: ClassVar[tuple[str, ...]] = ("raw", "split", "answer")

    def prompt(self) -> str | None:
        if self.system_prompt == "recipe" or (self.system_prompt is None and self.adapter):
            return SYSTEM_PROMPT
        return self.system_prompt

    def view(self) -> str:
        """How replies are shown: `show`, else raw for a one-shot question (the probe) and split interactively."""
        if self.show is not None:
            return self.show
        return "raw" if self.question is not None else "split"


@dataclass
class ExportArgs:
    run_dir: str | None = field(
        default=None, metadata={"help": "A run directory (adapter/ inside), an adapter directory or a checkpoint-N/."}
    )
    merged: bool = field(
        default=False,
        metadata={"help": "Write merged/: base + adapter as one transformers model (vllm serve, from_pretrained)."},
    )
    gguf: bool = field(
        default=False, metadata={"help": "Write a GGUF file (llama.cpp's converter) and an Ollama Modelfile."}
    )
    output: str | None = field(default=None, metadata={"help": "Output folder (default RUN_DIR/export)."})
    dtype: str = field(default="bf16", metadata={"help": "bf16|fp16|fp32: the merged weights' dtype."})
    gguf_type: str = field(default="f16", metadata={"help": "f16|bf16|q8_0|f32: the GGUF tensors' type."})
    model: str | None = field(
        default=None,
        metadata={"help": "Base model (default: the run's config.yaml, else the adapter's base_model_name_or_path)."},
    )
    system_prompt: str | None = field(
        default=None,
        metadata={"help": "System prompt the chat template starts with (default: the run's; '' for none)."},
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace an earlier export in the output folder."})


@dataclass
class CheckArgs:
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter to check instead of the bare model."})


# ----------------------------------------------------------------------------------------------- commands


SAVED_HEADER = (
    "# The resolved recipe of this run: r1lite's defaults filled in, and bf16/fp16/use_cpu as the device set them.\n"
    "# Run it again with --config; `precision` decides bf16/fp16/use_cpu again on the machine it runs on.\n"
)


class CommandConfig:
    """A command's configuration: one attribute per section, plus ``trl`` (TRL config keyword arguments) for the
    commands that train. Subclasses are dataclasses; their annotated section types drive the parser."""

    prog: ClassVar[str]
    trl_config: ClassVar[type | None] = None
    defaults: ClassVar[dict[str, Any]] = {}  # where the command's defaults differ from the sections'

    @classmethod
    def section_types(cls) -> dict[str, type]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}

    def sections(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.section_types())

    @property
    def output_dir(self) -> Path:
        """Where a training command writes its run (TRL's output_dir)."""
        return Path(self.trl["output_dir"])

    def validate(self) -> None:
        """Combinations argparse cannot see; subclasses add their own."""

    def to_flat_dict(self) -> dict[str, Any]:
        """The resolved recipe, loadable again with --config: every section field and the changed TRL fields. How a
        run was started (resume, overwrite) is left out: running the saved recipe again must not replace a run."""
        flat: dict[str, Any] = {}
        for section in self.sections():
            if not isinstance(section, OutputArgs):
                flat.update(dataclasses.asdict(section))
        trl = getattr(self, "trl", None)
        if trl is not None:
            trl_defaults = _field_defaults(self.trl_config)
            flat.update({k: v for k, v in trl.items() if k in self.defaults or trl_defaults.get(k, object()) != v})
        return flat

    def save(self, path: Path) -> None:
        """Write, then rename: a reader never sees half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(SAVED_HEADER + yaml.safe_dump(self.to_flat_dict(), sort_keys=False))
        partial.replace(path)


@dataclass
class RunConfig(CommandConfig):
    """`r1lite train`."""

    model: ModelArgs
    lora: LoraArgs
    data: DataArgs
    rewards: RewardArgs
    run: RunArgs
    output: OutputArgs
    trl: dict[str, Any]  # GRPOConfig keyword arguments

    prog: ClassVar[str] = "r1lite train"
    trl_config: ClassVar[type] = GRPOConfig
    # Precision is resolved from `precision` at build time (GRPOConfig's own bf16=True fails on a CPU); metrics go to
    # metrics.jsonl, every step is logged; completions go to completions/*.parquet without printing them.
    defaults: ClassVar[dict[str, Any]] = {
        "bf16": False,
        "report_to": "none",
        "logging_steps": 1,
        "output_dir": "runs/r1lite",
        "log_completions": True,
        "num_completions_to_print": 0,
    }

    def validate(self) -> None:
        validate_model(self.model)
        validate_lora(self.lora)
        validate_data(self.data)
        funcs = validate_rewards(self.rewards)
        g = self.trl
        _check_positive(
            num_generations=g["num_generations"],
            max_completion_length=g["max_completion_length"],
            per_device_train_batch_size=g["per_device_train_batch_size"],
            gradient_accumulation_steps=g["gradient_accumulation_steps"],
            eval_max_completion_length=self.run.eval_max_completion_length,
        )
        if g.get("max_steps", -1) == 0:
            raise ConfigError("max_steps must be positive (or -1 to train for num_train_epochs)")
        if self.run.eval_every < 0:
            raise ConfigError(f"eval_every must be >= 0, got {self.run.eval_every}")
        self.output.validate()
        _check_generation_batch(g, world_size())
        weights = g.get("reward_weights")
        if weights is not None and len(weights) != len(funcs):
            raise ConfigError(f"reward_weights has {len(weights)} values for {len(funcs)} rewards")


@dataclass
class SFTRunConfig(CommandConfig):
    """`r1lite sft`."""

    model: ModelArgs
    lora: LoraArgs
    data: DataArgs
    output: OutputArgs
    trl: dict[str, Any]  # SFTConfig keyword arguments

    prog: ClassVar[str] = "r1lite sft"
    trl_config: ClassVar[type] = SFTConfig
    defaults: ClassVar[dict[str, Any]] = {
        "output_dir": "runs/sft",
        "max_steps": 100,
        "learning_rate": 2e-4,
        "per_device_train_batch_size": 8,
        "logging_steps": 1,
        "save_steps": 50,
        "report_to": "none",
        "bf16": False,
        "max_length": 512,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.05,
    }

    def validate(self) -> None:
        validate_model(self.model)
        validate_lora(self.lora)
        validate_data(self.data)
        self.output.validate()
        if not self.lora.use_lora:
            raise ConfigError("r1lite sft trains a LoRA adapter: use_lora must stay true")
        if self.lora.init_adapter:
            raise ConfigError("init_adapter is for r1lite train (start GRPO from an SFT adapter), not for sft")


@dataclass
class EvalConfig(CommandConfig):
    """`r1lite eval`."""

    model: ModelArgs
    data: DataArgs
    generation: GenerationArgs
    eval: EvalArgs
    remote: RemoteCodeArgs

    prog: ClassVar[str] = "r1lite eval"

    def validate(self) -> None:
        validate_model(self.model)
        validate_data(self.data)
        validate_generation(self.generation)
        if self.eval.baseline and not self.eval.adapter:
            raise ConfigError("baseline compares the model with and without an adapter: pass --adapter DIR")
        if self.eval.no_system_prompt and self.data.system_prompt is not None:
            raise ConfigError("system_prompt and no_system_prompt exclude each other")

    def system_prompt(self) -> str | None:
        return None if self.eval.no_system_prompt else self.data.prompt()


@dataclass
class ChatConfig(CommandConfig):
    """`r1lite chat`: the recipe's probe settings (temperature 0.8, top-p 0.95, 1024 new tokens)."""

    model: ModelArgs
    generation: GenerationArgs
    chat: ChatArgs
    remote: RemoteCodeArgs

    prog: ClassVar[str] = "r1lite chat"
    defaults: ClassVar[dict[str, Any]] = {"temperature": 0.8, "top_p": 0.95, "max_completion_length": 1024}

    def validate(self) -> None:
        validate_model(self.model)
        validate_generation(self.generation)
        if self.chat.question is not None and not self.chat.question.strip():
            raise ConfigError("the question is empty: ask something, or leave it out for an interactive chat")
        if self.chat.show is not None:
            _check_choice("show", self.chat.show, ChatArgs.SHOW_CHOICES)


@dataclass
class RewardsCheckConfig(CommandConfig):
    """`r1lite rewards check`: GRPO-style groups (temperature 1, no top-p cut), 4 prompts x 8 completions."""

    model: ModelArgs
    data: DataArgs
    generation: GenerationArgs
    rewards: RewardArgs
    check: CheckArgs
    remote: RemoteCodeArgs

    prog: ClassVar[str] = "r1lite rewards check"
    defaults: ClassVar[dict[str, Any]] = {
        "max_train_samples": 4,
        "num_generations": 8,
        "temperature": 1.0,
        "max_completion_length": 200,
    }

    def validate(self) -> None:
        validate_model(self.model)
        validate_data(self.data)
        validate_generation(self.generation)
        if self.generation.num_generations < 2:
            raise ConfigError("num_generations must be at least 2: a group needs two completions to compare")
        validate_rewards(self.rewards)


@dataclass
class ExportConfig(CommandConfig):
    """`r1lite export RUN_DIR`: a merged transformers model (--merged), a GGUF file and Ollama Modelfile (--gguf)."""

    export: ExportArgs
    remote: RemoteCodeArgs

    prog: ClassVar[str] = "r1lite export"

    def validate(self) -> None:
        from r1lite.export import DTYPES, GGUF_TYPES

        e = self.export
        if not e.run_dir:
            raise ConfigError("which run? r1lite export RUN_DIR --merged and/or --gguf")
        if not (e.merged or e.gguf):
            raise ConfigError("nothing to export: pass --merged (a transformers model), --gguf (llama.cpp), or both")
        _check_choice("dtype", e.dtype, DTYPES)
        _check_choice("gguf_type", e.gguf_type, GGUF_TYPES)


# ----------------------------------------------------------------------------------------------- checks


def world_size() -> int:
    """Processes in this run, as accelerate/torchrun announce them (1 when launched plainly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: '{value}' is not one of {', '.join(choices)}")


def _check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")


def validate_model(m: ModelArgs) -> None:
    _check_choice("precision", m.precision, PRECISIONS)
    if m.torch_dtype is not None:
        _check_choice("torch_dtype", m.torch_dtype, ("bfloat16", "float16", "float32"))
    if m.bnb_4bit_quant_storage is not None and not m.load_in_4bit:
        raise ConfigError("bnb_4bit_quant_storage applies to 4-bit loading: set load_in_4bit: true or drop it")


def validate_lora(lora: LoraArgs) -> None:
    _check_positive(lora_r=lora.lora_r, lora_alpha=lora.lora_alpha)
    if lora.init_adapter and not lora.use_lora:
        raise ConfigError("init_adapter needs use_lora: true (it is a LoRA adapter)")


def validate_data(d: DataArgs) -> None:
    _check_positive(
        max_train_samples=d.max_train_samples,
        max_eval_samples=d.max_eval_samples,
        max_prompt_length=d.max_prompt_length,
    )
    if d.few_shot < 0:
        raise ConfigError(f"few_shot must be >= 0, got {d.few_shot}")


def validate_generation(g: GenerationArgs) -> None:
    from r1lite.engine import check_generation_settings

    _check_choice("backend", g.backend, ("auto", "hf", "vllm"))
    if g.temperature is None:
        g.temperature = 0.0 if g.num_generations == 1 else 0.8  # greedy, or the recipe's sampling temperature
    if not 0 < g.top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1], got {g.top_p}")
    try:  # the engine's own rules, checked before any model loads
        check_generation_settings(g.num_generations, g.temperature, g.max_completion_length, g.batch_size)
    except R1liteError as exc:
        raise ConfigError(str(exc)) from exc


def validate_rewards(r: RewardArgs) -> list:
    """The policy settings, and the reward names and import paths resolved now, not after the model has loaded;
    returns the reward functions."""
    from r1lite.rewards import resolve_rewards

    _check_choice("on_reward_error", r.on_reward_error, ("raise", "none"))
    if r.reward_timeout is not None and r.reward_timeout <= 0:
        raise ConfigError(f"reward_timeout must be positive seconds, got {r.reward_timeout}")
    try:
        return resolve_rewards(r.reward_set, r.rewards)
    except R1liteError as exc:
        raise ConfigError(str(exc)) from exc


def _check_generation_batch(g: dict[str, Any], processes: int) -> None:
    """TRL samples one generation batch per optimizer step across all processes; it must hold whole groups."""
    if g.get("generation_batch_size") is not None or g.get("steps_per_generation") is not None:
        return  # TRL checks its own arithmetic for these
    batch = g["per_device_train_batch_size"] * processes * g["gradient_accumulation_steps"]
    if batch % g["num_generations"]:
        raise ConfigError(
            f"per_device_train_batch_size x processes x gradient_accumulation_steps = "
            f"{g['per_device_train_batch_size']} x {processes} x {g['gradient_accumulation_steps']} = {batch} must be "
            f"divisible by num_generations ({g['num_generations']}): each prompt's group must fit in one batch"
        )


def _field_defaults(config_type: type | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config_type) if config_type else ():
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out
