"""Hostile model text, given to every reward of both sets and to the answer checker: each returns a score (or
None), raises nothing, and evaluates nothing. Their speed is measured, not asserted:
`python benchmarks/answer_check_speed.py` prints the slowest case (target: under 50 ms per completion)."""

import builtins
import importlib.util
from pathlib import Path

import pytest

from r1lite.answers import check_answer
from r1lite.rewards.corrected import CORRECTED_REWARDS
from r1lite.rewards.seed import SEED_REWARDS

_spec = importlib.util.spec_from_file_location(
    "answer_check_speed", Path(__file__).resolve().parents[1] / "benchmarks" / "answer_check_speed.py"
)
_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench)
HOSTILE = _bench.INPUTS  # the benchmark's inputs, so that what is timed is what is tested

REWARDS = {f"default.{n}": f for n, f in CORRECTED_REWARDS.items()} | {f"seed.{n}": f for n, f in SEED_REWARDS.items()}
# The recipe's soft-format regex backtracks quadratically on this one (2.2 s measured); kept to reproduce the recipe.
SEED_SLOW = {"soft boundaries, unclosed"}


@pytest.fixture(autouse=True)
def nothing_is_evaluated(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("model text reached eval/exec/compile")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, refuse)
    monkeypatch.setattr("os.system", refuse)


@pytest.mark.parametrize("label", sorted(HOSTILE))
def test_the_answer_checker_reads_without_evaluating(label):
    check = check_answer(HOSTILE[label], "18")
    assert check.tagged is None or isinstance(check.tagged, str)
    assert isinstance(check.strict, bool) and isinstance(check.lenient, bool)


@pytest.mark.parametrize("label", sorted(HOSTILE))
@pytest.mark.parametrize("reward", sorted(REWARDS))
def test_every_reward_scores_hostile_text(reward, label):
    if reward.startswith("seed.soft_format") and label in SEED_SLOW:
        pytest.skip("the recipe's own regex, kept as published: seconds on this input (docs/rewards.md)")
    (score,) = REWARDS[reward](
        prompts=[[]], completions=[[{"role": "assistant", "content": HOSTILE[label]}]], answer=["18"]
    )
    assert score is None or isinstance(score, float)


def test_numbers_that_would_explode_are_not_computed():
    for text in ("<answer>\n1e999\n</answer>", "<answer>\n10**10**10\n</answer>", "<answer>\n9**9**9\n</answer>"):
        check = check_answer(text, "18")
        assert not check.strict and not check.lenient
