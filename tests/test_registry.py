"""Reward registry: sets, names, dotted paths, and what happens when a reward raises."""

import pytest

from r1lite.rewards import (
    REWARD_SETS,
    RewardError,
    build_reward_funcs,
    guarded,
    import_reward,
    resolve_rewards,
)
from tests.helpers import failing_reward, length_reward

ORDER = ["xmlcount", "soft_format", "strict_format", "int", "correctness"]


def test_both_sets_have_the_recipes_names_in_order():
    for rewards in REWARD_SETS.values():
        assert list(rewards) == ORDER
    assert [f.__name__ for f in resolve_rewards("seed")] == [f"{n}_reward" for n in ORDER]


def test_every_registry_name_resolves_and_scores():
    for set_name, rewards in REWARD_SETS.items():
        for name in rewards:
            (func,) = resolve_rewards(set_name, [name])
            scores = func(prompts=[[]], completions=[[{"role": "assistant", "content": "x"}]], answer=["1"])
            assert len(scores) == 1 and isinstance(scores[0], float)


def test_extra_rewards_join_either_set_by_name():
    for set_name in REWARD_SETS:
        funcs = resolve_rewards(set_name, ["correctness", "format_ladder"])
        assert [f.__name__ for f in funcs] == ["correctness_reward", "format_ladder_reward"]
    with pytest.raises(RewardError, match="known: xmlcount, .*, correctness, format_ladder"):
        resolve_rewards("seed", ["ladder"])


def test_dotted_paths_and_subsets():
    funcs = resolve_rewards("default", ["correctness", "tests.helpers:length_reward", "tests.helpers.length_reward"])
    assert funcs[1] is length_reward is funcs[2]
    assert import_reward("tests.helpers:failing_reward") is failing_reward


@pytest.mark.parametrize(
    "names, match",
    [
        (["nope"], "unknown reward 'nope'"),
        (["tests.helpers:missing"], "cannot import"),
        (["no_module.x:y"], "cannot import"),
    ],
)
def test_bad_reward_names(names, match):
    with pytest.raises(RewardError, match=match):
        resolve_rewards("default", names)


def test_unknown_set():
    with pytest.raises(RewardError, match="reward_set 'best'"):
        resolve_rewards("best")


COMPLETIONS = [[{"role": "assistant", "content": c}] for c in ["abc", "the end", "xyz"]]


def test_a_raising_reward_names_itself_and_the_completion():
    func = guarded(failing_reward, "raise")
    assert func.__name__ == "failing_reward"  # TRL's metric key rewards/failing_reward/mean
    with pytest.raises(RewardError, match=r"'failing_reward' raised ValueError.*completion 1: 'the end'"):
        func(prompts=[[]] * 3, completions=COMPLETIONS, answer=["1"] * 3)


def test_none_policy_scores_failures_none_and_counts_them():
    logged = {}
    func = guarded(failing_reward, "none")
    scores = func(
        prompts=[[]] * 3,
        completions=COMPLETIONS,
        answer=["1"] * 3,
        log_metric=lambda key, value: logged.__setitem__(key, value),
    )
    assert scores == [1.0, None, 1.0]
    assert logged == {"rewards/failing_reward/errors": 1.0}


def test_guard_passes_good_batches_through():
    (func,) = build_reward_funcs("default", ["tests.helpers:length_reward"], "raise")
    assert func(prompts=[[]] * 3, completions=COMPLETIONS) == [0.03, 0.07, 0.03]
