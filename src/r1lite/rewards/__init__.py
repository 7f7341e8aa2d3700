"""Reward registry: named reward sets, user rewards by dotted path, weights and error policy.

``seed`` is the recipe's five functions, defects included; ``default`` is the corrected set. A
recipe picks a set and optionally a subset of names or user functions (``pkg.module:func``).
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Callable

from r1lite.errors import RewardError
from r1lite.rewards.base import RewardFunc, completion_text
from r1lite.rewards.corrected import CORRECTED_REWARDS
from r1lite.rewards.seed import SEED_REWARDS

logger = logging.getLogger(__name__)

REWARD_SETS: dict[str, dict[str, RewardFunc]] = {"default": CORRECTED_REWARDS, "seed": SEED_REWARDS}


def import_reward(path: str) -> RewardFunc:
    """Import ``pkg.module:func`` (or ``pkg.module.func``)."""
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise RewardError(f"reward '{path}': expected a name from the set or a dotted path 'pkg.module:func'")
    try:
        module = importlib.import_module(module_name)
        func = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise RewardError(f"reward '{path}': cannot import it ({exc})") from exc
    if not callable(func):
        raise RewardError(f"reward '{path}' is not callable")
    # User code runs inside every training step: say where it came from.
    logger.info("reward %s imported from %s", path, getattr(module, "__file__", module_name))
    return func


def resolve_rewards(reward_set: str = "default", names: list[str] | None = None) -> list[RewardFunc]:
    """The reward functions of a recipe, in order: the whole set, or the listed names/paths."""
    if reward_set not in REWARD_SETS:
        raise RewardError(f"reward_set '{reward_set}' is not one of {', '.join(REWARD_SETS)}")
    registry = REWARD_SETS[reward_set]
    if not names:
        return list(registry.values())
    funcs = []
    for name in names:
        if name in registry:
            funcs.append(registry[name])
        elif ":" in name or "." in name:
            funcs.append(import_reward(name))
        else:
            raise RewardError(f"unknown reward '{name}' in set '{reward_set}'; known: {', '.join(registry)}")
    return funcs


def _row(kwargs: dict, i: int, n: int) -> dict:
    """The keyword arguments of completion i: per-completion columns sliced, the rest (callbacks, state) kept."""
    return {k: v[i : i + 1] if isinstance(v, list) and len(v) == n else v for k, v in kwargs.items()}


def _score_one_by_one(func, name: str, on_error: str, prompts, completions, kwargs) -> tuple[list, int]:
    """Re-score a failed batch completion by completion, to name the culprit or to score it None."""
    scores: list[float | None] = []
    errors = 0
    n = len(completions)
    for i in range(n):
        try:
            scores.extend(func(prompts=prompts[i : i + 1], completions=completions[i : i + 1], **_row(kwargs, i, n)))
        except Exception as exc:
            if on_error == "raise":
                text = completion_text(completions[i])
                raise RewardError(
                    f"reward function '{name}' raised {type(exc).__name__}: {exc} on completion {i}: "
                    f"{text[:200]!r}{'...' if len(text) > 200 else ''}\n"
                    "Fix the function, or set on_reward_error: none to score such completions None."
                ) from exc
            scores.append(None)
            errors += 1
    return scores, errors


def guarded(func: RewardFunc, on_error: str = "raise", log_gold: bool = False) -> RewardFunc:
    """Wrap a reward so a failure names itself and the completion (or scores None and is counted).

    The wrapper keeps ``__name__``: TRL derives the metric keys ``rewards/<name>/mean`` from it. With `log_gold`
    it also adds the gold answers to TRL's completion log (``log_extra``, the ``gold`` column of
    completions/*.parquet); one reward of a run does this, so that the column lines up with the completions.
    """
    name = getattr(func, "__name__", type(func).__name__)

    @functools.wraps(func)
    def wrapper(prompts, completions, **kwargs):
        if log_gold and "log_extra" in kwargs and "answer" in kwargs:
            kwargs["log_extra"]("gold", list(kwargs["answer"]))
        try:
            return list(func(prompts=prompts, completions=completions, **kwargs))
        except Exception as batch_exc:
            scores, errors = _score_one_by_one(func, name, on_error, prompts, completions, kwargs)
            if errors == 0:  # it fails only on whole batches: report the batch error itself
                raise RewardError(f"reward function '{name}' raised {type(batch_exc).__name__}: {batch_exc}") \
                    from batch_exc
            if "log_metric" in kwargs:
                kwargs["log_metric"](f"rewards/{name}/errors", float(errors))
            logger.warning("reward '%s' failed on %d of %d completions (scored None)", name, errors, len(scores))
            return scores

    return wrapper


def build_reward_funcs(reward_set: str, names: list[str] | None, on_error: str) -> list[Callable]:
    return [guarded(f, on_error, log_gold=i == 0) for i, f in enumerate(resolve_rewards(reward_set, names))]
