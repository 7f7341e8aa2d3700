"""`r1lite rewards check`: does each reward carry a learning signal on this model and data?

GRPO learns only from score differences inside a group of completions for the same prompt. A reward
that is constant over a group contributes nothing, whatever its mean. This samples real groups from
the model, scores them with every reward of both sets, and says which rewards would be dead weight.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from r1lite.rewards import REWARD_SETS

# The most a completion can score on each built-in reward (both sets share names and scales).
MAX_SCORES = {"xmlcount": 0.5, "soft_format": 0.5, "strict_format": 0.5, "int": 0.5, "correctness": 2.0}

# Why a built-in reward is usually constant, and what to do about it.
CAUSES = {
    "format": "the model (almost) never writes the complete <reasoning>/<answer> layout: add few_shot: 1 or start "
    "from an SFT warm-up (r1lite sft, then init_adapter)",
    "seed_format": "the recipe's regex has no re.DOTALL, so multi-line replies never match: use reward_set: default",
    "answer": "no completion has a tagged answer that is right: normal for a small model at the start; it "
    "needs the format first (see the format rewards)",
}


@dataclass
class RewardStats:
    name: str
    mean: float
    std: float
    zero_std_groups: float  # share of groups in which every completion scored the same
    at_max: float  # share of completions that reached the reward's maximum
    max_score: float
    unverifiable: int  # completions the reward scored None

    @property
    def constant(self) -> bool:
        return self.zero_std_groups == 1.0


def score_groups(
    funcs: dict[str, Callable], prompts: Sequence, groups: Sequence[Sequence[str]], golds: Sequence[str]
) -> dict[str, list[list[float | None]]]:
    """Scores per reward, per group, per completion, with TRL's batched call signature."""
    flat_prompts = [p for p, group in zip(prompts, groups, strict=True) for _ in group]
    flat_completions = [[{"role": "assistant", "content": c}] for group in groups for c in group]
    flat_golds = [g for g, group in zip(golds, groups, strict=True) for _ in group]
    sizes = [len(group) for group in groups]
    out = {}
    for name, func in funcs.items():
        flat = func(prompts=flat_prompts, completions=flat_completions, answer=flat_golds)
        out[name], start = [], 0
        for size in sizes:
            out[name].append(list(flat[start : start + size]))
            start += size
    return out


def summarise(name: str, groups: list[list[float | None]], max_score: float | None = None) -> RewardStats:
    values = [v for g in groups for v in g if v is not None and not math.isnan(v)]
    unverifiable = sum(len(g) for g in groups) - len(values)
    if max_score is None:
        max_score = max(values, default=0.0)
    zero_std = [len({v for v in g if v is not None}) <= 1 for g in groups]
    return RewardStats(
        name=name,
        mean=statistics.fmean(values) if values else float("nan"),
        std=statistics.pstdev(values) if len(values) > 1 else 0.0,
        zero_std_groups=sum(zero_std) / len(groups) if groups else 1.0,
        at_max=sum(v >= max_score - 1e-9 for v in values) / len(values) if values else 0.0,
        max_score=max_score,
        unverifiable=unverifiable,
    )


def likely_cause(name: str, stats: RewardStats, all_stats: dict[str, RewardStats]) -> str | None:
    """A one-line diagnosis for a constant reward, or None when it carries signal."""
    if not stats.constant:
        return None
    set_name, _, reward = name.partition(".")
    if reward in ("soft_format", "strict_format") and set_name == "seed":
        fixed = all_stats.get(f"default.{reward}")
        if fixed is not None and not fixed.constant:
            return CAUSES["seed_format"]
    if reward in ("xmlcount", "soft_format", "strict_format", "int"):
        return CAUSES["format"]
    if reward == "correctness":
        return CAUSES["answer"]
    return "constant on every group: check the function against a few completions by hand"


def check_all(prompts, groups, golds, extra: dict[str, Callable] | None = None) -> dict[str, RewardStats]:
    """Score with every reward of every set (names 'set.reward') plus `extra` user rewards."""
    funcs = {f"{set_name}.{name}": f for set_name, rewards in REWARD_SETS.items() for name, f in rewards.items()}
    funcs.update(extra or {})
    scores = score_groups(funcs, prompts, groups, golds)
    return {name: summarise(name, s, MAX_SCORES.get(name.partition(".")[2])) for name, s in scores.items()}


def format_table(stats: dict[str, RewardStats]) -> str:
    header = f"{'reward':<26}{'mean':>8}{'std':>8}{'zero-std groups':>17}{'at max':>8}  signal"
    lines = [header, "-" * len(header)]
    for name, s in stats.items():
        signal = "NONE" if s.constant else "yes"
        lines.append(f"{name:<26}{s.mean:>8.3f}{s.std:>8.3f}{s.zero_std_groups:>17.0%}{s.at_max:>8.0%}  {signal}")
    by_cause: dict[str, list[str]] = {}
    for name, s in stats.items():
        cause = likely_cause(name, s, stats)
        if cause:
            by_cause.setdefault(cause, []).append(name)
    notes = [f"- {', '.join(names)}: {cause}" for cause, names in by_cause.items()]
    if notes:
        lines += ["", "Rewards with no learning signal (constant within every group), and the likely cause:", *notes]
    return "\n".join(lines)


def rewards_check(config) -> str:
    """Run `r1lite rewards check` (config.RewardsCheckConfig); return the table to print."""
    from r1lite.data import load_prepared
    from r1lite.engine import generate_replies
    from r1lite.models import load_for_generation
    from r1lite.rewards import import_reward

    m, d, g = config.model, config.data, config.generation
    data = load_prepared(d.dataset, d.dataset_train_split, d.prompt(), d.few_shot, d.max_train_samples, seed=g.seed)
    model, tokenizer = load_for_generation(m, config.remote.trust_remote_code, config.check.adapter)
    # One prompt's whole group per batch, sampled as GRPO does.
    replies = generate_replies(
        model,
        tokenizer,
        data["prompt"],
        num_generations=g.num_generations,
        temperature=g.temperature,
        top_p=g.top_p,
        max_completion_length=g.max_completion_length,
        batch_size=g.num_generations,
        seed=g.seed,
    )
    groups = [[reply.text for reply in group] for group in replies]
    extra = {path: import_reward(path) for path in config.rewards.rewards if ":" in path or "." in path}
    source = f"{m.model}{' + ' + config.check.adapter if config.check.adapter else ''}"
    header = (
        f"\n{len(groups)} prompts x {g.num_generations} completions from {source} on {d.dataset} "
        f"[{d.dataset_train_split}]\n"
    )
    return header + "\n" + format_table(check_all(data["prompt"], groups, data["answer"], extra))
