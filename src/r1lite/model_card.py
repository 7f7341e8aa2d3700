"""Model cards (README.md) that say what a run directory, an adapter or an exported model really is.

TRL's card names the base model only when it is a hub id, so a run on a local directory or on the embedded model
reads "fine-tuned version of [None]". Ours names the base by its hub id where one is known (the embedded model by
its own name and licence), says how it was trained, quotes the system prompt the model expects and, when the run
directory holds a before/after evaluation (eval.json), its figures.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from r1lite import __version__
from r1lite.config import DataArgs
from r1lite.models import EMBEDDED_PREFIX, embedded_origin, looks_like_hub_id

logger = logging.getLogger(__name__)


@dataclass
class BaseModel:
    """The model a run started from, as a card should name it."""

    given: str  # as the recipe named it: hub id, local path or embedded:NAME
    hub_id: str | None  # the hub repository it comes from, where known
    licence: str | None
    note: str = ""  # e.g. how the embedded copy differs from the hub repository

    @property
    def name(self) -> str:
        return self.hub_id or self.given


def describe_base(model: str) -> BaseModel:
    """Who made `model`: the embedded model's origin, a hub id as it is, a local directory by its path."""
    if model.startswith(EMBEDDED_PREFIX):
        origin = embedded_origin(model[len(EMBEDDED_PREFIX) :])
        if origin is not None:
            return BaseModel(model, origin.hub_id, origin.licence, origin.note)
        return BaseModel(model, None, None)
    hub_id = looks_like_hub_id(model) and not Path(model).expanduser().exists()
    return BaseModel(model, model if hub_id else None, None)


@dataclass
class CardFacts:
    """Everything a card says, gathered from a run directory."""

    title: str
    base: BaseModel
    kind: str  # "adapter" (LoRA, PEFT) or "merged" (a plain transformers model)
    system_prompt: str | None
    method: str = "GRPO"  # or "SFT"
    dataset: str | None = None
    rewards: list[str] = field(default_factory=list)
    steps: int | None = None
    evaluation: str | None = None  # a markdown table
    usage: str = ""


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved recipe (config.yaml), or {} when there is none or it cannot be read."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        logger.warning("%s could not be read (%s); the model card leaves its facts out", path, exc)
        return {}
    return loaded if isinstance(loaded, dict) else {}


def evaluation_table(run_dir: Path) -> str | None:
    """The before/after table `r1lite eval --baseline --output RUN_DIR/eval.json` wrote beside eval.json."""
    table = run_dir / "eval.md"
    if (run_dir / "eval.json").is_file() and table.is_file():
        return table.read_text().strip()
    return None


def trained_system_prompt(config: dict[str, Any]) -> str | None:
    """The system prompt a run trained under, resolved from its config.yaml as the run resolved it."""
    return DataArgs(system_prompt=config.get("system_prompt")).prompt()


def facts_from_run(run_dir: Path, kind: str, usage: str, title: str | None = None) -> CardFacts:
    """A card's facts for the run in `run_dir` (its config.yaml, metrics.jsonl and eval.json)."""
    config = read_run_config(run_dir)
    rewards = config.get("rewards") or []
    if not rewards and "reward_set" in config:
        rewards = [f"the {config['reward_set']} reward set"]
    return CardFacts(
        title=title or run_dir.resolve().name,
        base=describe_base(str(config.get("model") or "unknown")),
        kind=kind,
        system_prompt=trained_system_prompt(config),
        method="GRPO" if "reward_set" in config else "SFT (supervised warm-up)",
        dataset=config.get("dataset"),
        rewards=[str(r) for r in rewards],
        steps=_last_step(run_dir / "metrics.jsonl"),
        evaluation=evaluation_table(run_dir),
        usage=usage,
    )


def _last_step(metrics: Path) -> int | None:
    from r1lite.report_data import read_jsonl

    if not metrics.is_file():
        return None
    steps = [r["step"] for r in read_jsonl(metrics)[0] if isinstance(r.get("step"), int | float)]
    return int(steps[-1]) if steps else None


def render(f: CardFacts) -> str:
    header: dict[str, Any] = {"library_name": "peft" if f.kind == "adapter" else "transformers"}
    if f.base.hub_id:
        header["base_model"] = f.base.hub_id
    if f.base.licence:
        header["license"] = f.base.licence
    header["tags"] = ["r1lite", "grpo" if f.method == "GRPO" else "sft", "trl", "reasoning"]
    header["pipeline_tag"] = "text-generation"
    what = "A LoRA adapter" if f.kind == "adapter" else "A full model (the LoRA adapter merged into the base weights)"
    base = f"[{f.base.hub_id}](https://huggingface.co/{f.base.hub_id})" if f.base.hub_id else f"`{f.base.given}`"
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False).strip(),
        "---",
        "",
        f"# {f.title}",
        "",
        f"{what} trained with [r1lite](https://pypi.org/project/r1lite/) {__version__} "
        f"({f.method}, on [TRL](https://github.com/huggingface/trl)) from {base}"
        + (f", licence {f.base.licence}." if f.base.licence else "."),
    ]
    if f.base.note:
        lines += ["", f.base.note]
    lines += ["", "## Training", ""]
    lines += [f"- base model as given: `{f.base.given}`"]
    if f.dataset:
        lines.append(f"- data: `{f.dataset}`")
    if f.rewards:
        lines.append(f"- rewards: {', '.join(f.rewards)}")
    if f.steps is not None:
        lines.append(f"- steps: {f.steps}")
    if f.system_prompt:
        lines += [
            "",
            "The model was trained to answer under this system prompt; ask it the same way:",
            "",
            "```text",
            f.system_prompt.strip("\n"),
            "```",
        ]
    if f.evaluation:
        lines += ["", "## Evaluation (held-out questions, greedy)", "", _demote_headings(f.evaluation)]
    if f.usage:
        lines += ["", "## Use it", "", f.usage.strip()]
    return "\n".join(lines) + "\n"


def _demote_headings(markdown: str) -> str:
    return "\n".join("##" + line if line.startswith("# ") else line for line in markdown.splitlines())


def adapter_usage(run_dir: Path, adapter: Path, base: BaseModel) -> str:
    model_flag = "" if base.given.startswith(EMBEDDED_PREFIX) else f" --model {base.given}"
    return f"""```bash
r1lite chat --adapter {adapter}{model_flag}   # interactive: reasoning and answer shown apart
r1lite export {run_dir} --merged --gguf        # a plain transformers model; a GGUF file and Modelfile
```"""


def write_card(path: Path, facts: CardFacts) -> Path:
    """Write README.md (write, then rename); returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(render(facts))
    partial.replace(path)
    return path


def write_run_cards(run_dir: Path, adapter_dir: Path | None = None) -> None:
    """The card of a training run: in the run directory (replacing TRL's draft) and in its adapter directory."""
    adapter_dir = adapter_dir if adapter_dir is not None and adapter_dir.is_dir() else None
    facts = facts_from_run(run_dir, "adapter", usage="")
    facts.usage = adapter_usage(run_dir, adapter_dir or run_dir / "adapter", facts.base)
    for target in [run_dir] + ([adapter_dir] if adapter_dir else []):
        write_card(target / "README.md", facts)
