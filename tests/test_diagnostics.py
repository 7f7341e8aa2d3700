"""Reward diagnostics on hand-written groups: statistics, constant-reward flags and their causes."""

import pytest

from r1lite.diagnostics import check_all, format_table, likely_cause, summarise

GOOD = "<reasoning>\nSix plus six.\nThat is 12.\n</reasoning>\n<answer>\n12\n</answer>"
WRONG = "<reasoning>\nSix plus five.\n</reasoning>\n<answer>\n11\n</answer>"
PLAIN = "The answer is 12."


def test_summarise_statistics():
    s = summarise("r", [[0.0, 0.5], [0.5, 0.5]], max_score=0.5)
    assert s.mean == pytest.approx(0.375)
    assert s.std == pytest.approx(0.2165, abs=1e-4)
    assert s.zero_std_groups == 0.5 and s.at_max == 0.75 and not s.constant


def test_none_scores_are_counted_not_averaged():
    s = summarise("r", [[None, 1.0], [1.0, 1.0]])
    assert s.unverifiable == 1 and s.mean == 1.0 and s.constant


def test_plain_replies_flag_format_rewards_with_the_cold_start_fix():
    prompts = [[{"role": "user", "content": "q"}]] * 2
    stats = check_all(prompts, [[PLAIN, PLAIN], [PLAIN, "12"]], ["12", "12"])
    assert stats["default.strict_format"].constant
    assert "few_shot" in likely_cause("default.strict_format", stats["default.strict_format"], stats)
    # The recipe's int reward pays a bare "12" without any tags; the corrected one does not.
    assert not stats["seed.int"].constant and stats["default.int"].constant


def test_seed_format_regex_defect_is_named():
    prompts = [[{"role": "user", "content": "q"}]]
    stats = check_all(prompts, [[GOOD, WRONG, PLAIN]], ["12"])
    assert stats["seed.soft_format"].constant and not stats["default.soft_format"].constant
    assert "re.DOTALL" in likely_cause("seed.soft_format", stats["seed.soft_format"], stats)
    assert stats["default.correctness"].at_max == pytest.approx(1 / 3)
    table = format_table(stats)
    assert "seed.soft_format" in table and "NONE" in table and "re.DOTALL" in table


def test_user_reward_without_known_maximum_uses_the_observed_one():
    prompts = [[{"role": "user", "content": "q"}]]

    def length(prompts, completions, **kwargs):
        return [float(len(c[0]["content"])) for c in completions]

    stats = check_all(prompts, [[GOOD, PLAIN]], ["12"], extra={"length": length})
    assert stats["length"].max_score == len(GOOD) and stats["length"].at_max == 0.5
