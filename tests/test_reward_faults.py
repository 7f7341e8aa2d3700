"""Buggy reward functions: every failure ends in a clear error naming the function and the completion, or with
on_reward_error: none in None ("cannot verify") scores that are counted in the metrics. Never a traceback deep
inside TRL, never a silent wrong score."""

import time

import pytest

from r1lite.errors import RewardError
from r1lite.rewards import guarded, resolve_rewards
from tests import helpers

COMPLETIONS = [[{"role": "assistant", "content": c}] for c in ["one", "two", "three"]]


def _call(func, on_error, timeout=None):
    logged = {}
    scores = guarded(func, on_error, timeout=timeout)(
        prompts=[[]] * 3,
        completions=COMPLETIONS,
        answer=["1"] * 3,
        log_metric=lambda key, value: logged.__setitem__(key, logged.get(key, 0) + value),
    )
    return scores, logged


@pytest.mark.parametrize(
    "func, message",
    [
        (helpers.short_reward, "returned 2 scores for 3 completions"),
        (helpers.string_reward, r"returned a str \('1.0'\) for completion 1: 'two'"),
        (helpers.nan_reward, "returned nan for completion 1: 'two'"),
        (helpers.failing_reward, "raised ValueError: cannot score this one on completion 0: 'one'"),
    ],
)
def test_a_bad_reward_stops_the_step_naming_itself(func, message):
    with pytest.raises(RewardError, match=message):
        _call(func, "raise")


@pytest.mark.parametrize(
    "func, scores, errors",
    [
        (helpers.short_reward, [None, None, None], 3),  # which score belongs to which completion is unknown
        (helpers.string_reward, [1.0, None, 1.0], 1),
        (helpers.nan_reward, [0.5, None, 0.5], 1),
        (helpers.failing_reward, [None, 1.0, None], 2),  # it raises on the completions holding an 'e'
    ],
)
def test_with_on_reward_error_none_bad_scores_are_none_and_counted(func, scores, errors):
    got, logged = _call(func, "none")
    assert got == scores
    assert logged == {f"rewards/{func.__name__}/errors": float(errors)}


def test_none_means_cannot_verify_and_is_not_an_error():
    for policy in ("raise", "none"):
        assert _call(helpers.none_reward, policy) == ([0.5, None, 0.5], {})


def test_a_slow_reward_is_stopped_at_its_time_limit():
    start = time.perf_counter()
    with pytest.raises(RewardError, match=r"took longer than reward_timeout \(0.2 s\)"):
        _call(helpers.slow_reward, "raise", timeout=0.2)
    scores, logged = _call(helpers.slow_reward, "none", timeout=0.2)
    assert scores == [None] * 3 and logged == {"rewards/slow_reward/timeouts": 1.0}
    assert time.perf_counter() - start < 3  # both calls were cut at 0.2 s, not run for 5 s each
    assert _call(helpers.length_reward, "raise", timeout=5)[0] == [0.03, 0.03, 0.05]  # no limit hit: untouched


@pytest.mark.parametrize(
    "name, message",
    [
        ("tests.helpers:missing", "cannot import"),
        ("tests.helpers:not_a_function", "is not callable"),
        ("nosuchpackage.rewards:f", "cannot import"),
    ],
)
def test_a_missing_or_uncallable_reward_is_refused(name, message):
    with pytest.raises(RewardError, match=message):
        resolve_rewards("default", [name])
