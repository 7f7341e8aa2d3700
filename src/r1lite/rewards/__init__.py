"""Reward registry: named reward sets, user rewards by dotted path, weights and error policy.

``seed`` is the recipe's five functions, defects included; ``default`` is the corrected set. A
recipe picks a set and optionally a subset of names or user functions (``pkg.module:func``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import math
import signal
import threading
from collections.abc import Callable, Iterator

from r1lite.errors import RewardError
from r1lite.rewards.base import RewardFunc, completion_text
from r1lite.rewards.corrected import CORRECTED_REWARDS, EXTRA_REWARDS
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
        if name in registry or name in EXTRA_REWARDS:
            funcs.append(registry.get(name) or EXTRA_REWARDS[name])
        elif ":" in name or "." in name:
            funcs.append(import_reward(name))
        else:
            known = ", ".join([*registry, *EXTRA_REWARDS])
            raise RewardError(f"unknown reward '{name}' in set '{reward_set}'; known: {known}")
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


class _TimedOut(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise _TimedOut in the block after `seconds` (None: no limit). SIGALRM interrupts Python code between
    bytecodes: a reward stuck inside one C call (a single catastrophic regex) is stopped when that call returns.
    Only the main thread can take signals; elsewhere the block runs unbounded."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise _TimedOut

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _invalid(value) -> str | None:
    """Why a score is unusable, or None when it is a number or None ("cannot verify")."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"a {type(value).__name__} ({value!r:.40})"
    if not math.isfinite(value):
        return f"{value}"
    return None


def _checked(name: str, on_error: str, scores: list, completions) -> tuple[list[float | None], int]:
    """Scores as floats or None; an unusable one raises (naming it and its completion) or becomes None."""
    if len(scores) != len(completions):
        raise RewardError(
            f"reward function '{name}' returned {len(scores)} scores for {len(completions)} "
            "completions: it must return one per completion (None where it cannot verify)"
        )
    out, errors = [], 0
    for i, value in enumerate(scores):
        why = _invalid(value)
        if why is None:
            out.append(None if value is None else float(value))
            continue
        if on_error == "raise":
            text = completion_text(completions[i])
            raise RewardError(
                f"reward function '{name}' returned {why} for completion {i}: {text[:200]!r}; a score "
                "is a finite number, or None where it cannot verify (or set on_reward_error: none)"
            )
        out.append(None)
        errors += 1
    return out, errors


def guarded(
    func: RewardFunc, on_error: str = "raise", log_gold: bool = False, timeout: float | None = None
) -> RewardFunc:
    """Wrap a reward so that a failure names itself and the completion, or with ``on_error="none"`` scores None
    ("cannot verify") and is counted in ``rewards/<name>/errors``. Failures: raising, returning the wrong number
    of scores, a score that is not a finite number or None, and (with `timeout`, seconds per call) taking too long,
    counted in ``rewards/<name>/timeouts``.

    The wrapper keeps ``__name__``: TRL derives the metric keys ``rewards/<name>/mean`` from it. With `log_gold`
    it also adds the gold answers to TRL's completion log (``log_extra``, the ``gold`` column of
    completions/*.parquet); one reward of a run does this, so that the column lines up with the completions.
    """
    name = getattr(func, "__name__", type(func).__name__)

    @functools.wraps(func)
    def wrapper(prompts, completions, **kwargs):
        if log_gold and "log_extra" in kwargs and "answer" in kwargs:
            kwargs["log_extra"]("gold", list(kwargs["answer"]))
        log = kwargs.get("log_metric", lambda key, value: None)
        try:
            with time_limit(timeout):
                raw = func(prompts=prompts, completions=completions, **kwargs)
            scores, errors = _checked(name, on_error, list(raw) if raw is not None else [], completions)
        except _TimedOut:
            if on_error == "raise":
                raise RewardError(
                    f"reward function '{name}' took longer than reward_timeout ({timeout} s) on "
                    f"{len(completions)} completions (or set on_reward_error: none)"
                ) from None
            log(f"rewards/{name}/timeouts", 1.0)
            logger.warning("reward '%s' took longer than %s s: scored None", name, timeout)
            return [None] * len(completions)
        except RewardError:
            if on_error == "raise":
                raise
            scores, errors = [None] * len(completions), len(completions)
        except Exception as batch_exc:
            scores, errors = _score_one_by_one(func, name, on_error, prompts, completions, kwargs)
            if errors == 0:  # it fails only on whole batches: report the batch error itself
                raise RewardError(
                    f"reward function '{name}' raised {type(batch_exc).__name__}: {batch_exc}"
                ) from batch_exc
            scores, more = _checked(name, on_error, scores, completions)
            errors += more
        if errors:
            log(f"rewards/{name}/errors", float(errors))
            logger.warning("reward '%s' failed on %d of %d completions (scored None)", name, errors, len(scores))
        return scores

    return wrapper


def build_reward_funcs(
    reward_set: str, names: list[str] | None, on_error: str, timeout: float | None = None
) -> list[Callable]:
    funcs = resolve_rewards(reward_set, names)
    return [guarded(f, on_error, log_gold=i == 0, timeout=timeout) for i, f in enumerate(funcs)]
