"""The two reward sets side by side: the seed reproduces the recipe's numbers, defects included;
the default set scores the same replies as the recipe meant to."""

import pytest

from r1lite.rewards import resolve_rewards
from r1lite.rewards.corrected import CORRECTED_REWARDS, format_ladder
from r1lite.rewards.seed import SEED_REWARDS

# The prompted layout, one line of reasoning (the only shape the recipe's strict regex accepts).
ONE_LINE = "<reasoning>\n9 * 2 = 18\n</reasoning>\n<answer>\n18\n</answer>\n"  # 58 characters
# The same layout as models write it: several lines of reasoning.
MULTI_LINE = (
    "<reasoning>\nShe sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = 18 dollars.\n</reasoning>\n"
    "<answer>\n18\n</answer>\n"
)
# Cut at the length limit before </answer>: 1,537 characters.
TRUNCATED = "<reasoning>\n" + "x" * 1500 + "\n</reasoning>\n<answer>\n18"


def tagged(answer: str) -> str:
    return f"<reasoning>\nworked it out\n</reasoning>\n<answer>\n{answer}\n</answer>\n"


def score(reward_set: dict, name: str, text: str, gold: str = "18") -> float:
    """One completion through a reward, called the way TRL calls it (conversational batch)."""
    completions = [[{"role": "assistant", "content": text}]]
    prompts = [[{"role": "user", "content": "question"}]]
    (value,) = reward_set[name](prompts=prompts, completions=completions, answer=[gold])
    return value


# (reward, completion, gold, seed score, default score): each of the recipe's known defects.
DEFECTS = [
    pytest.param("soft_format", MULTI_LINE, "18", 0.0, 0.5, id="soft-misses-newlines"),
    pytest.param("soft_format", ONE_LINE, "18", 0.0, 0.5, id="soft-misses-prompted-layout"),
    pytest.param("strict_format", MULTI_LINE, "18", 0.0, 0.5, id="strict-multi-line-reasoning"),
    pytest.param("strict_format", ONE_LINE.rstrip("\n"), "18", 0.0, 0.5, id="strict-ends-at-eos"),
    pytest.param("xmlcount", TRUNCATED, "18", 0.375 - 1.537, 0.375, id="xml-whole-text-penalty"),
    # Ends at EOS: the seed takes the whole reply (57 chars) as "after </answer>\n", plus the 0.001 bonus.
    pytest.param("xmlcount", ONE_LINE.rstrip("\n"), "18", 0.5 - 0.057 + 0.001, 0.5, id="xml-eos-bonus"),
    pytest.param("int", tagged("-3"), "-3", 0.0, 0.5, id="int-negative"),
    pytest.param("int", tagged("72.0"), "72", 0.0, 0.5, id="int-decimal"),
    pytest.param("int", tagged("$18"), "18", 0.0, 0.5, id="int-dollar"),
    pytest.param("int", tagged("1,000"), "1000", 0.0, 0.5, id="int-thousands"),
    pytest.param("int", "72", "72", 0.5, 0.0, id="int-untagged"),
    pytest.param("correctness", tagged("$18"), "18", 0.0, 2.0, id="correct-dollar"),
    pytest.param("correctness", tagged("1,000"), "1000", 0.0, 2.0, id="correct-thousands"),
    pytest.param("correctness", tagged("2125"), "2,125", 0.0, 2.0, id="correct-gold-separators"),
    pytest.param("correctness", tagged("72.0"), "72", 0.0, 2.0, id="correct-decimal"),
    pytest.param("correctness", "72", "72", 2.0, 0.0, id="correct-untagged"),
]

# Replies both sets score as intended, and the default set's own rules.
NORMAL = [
    pytest.param("xmlcount", ONE_LINE, "18", 0.5, 0.5, id="xml-complete"),
    pytest.param("xmlcount", MULTI_LINE, "18", 0.5, 0.5, id="xml-complete-multi-line"),
    pytest.param("xmlcount", "The answer is 18.", "18", 0.0, 0.0, id="xml-no-tags"),
    pytest.param("xmlcount", ONE_LINE + "extra text", "18", 0.48, 0.49, id="xml-trailing-text"),
    pytest.param("xmlcount", ONE_LINE + "x" * 1000, "18", -1.5, 0.0, id="xml-clamped"),
    pytest.param("xmlcount", ONE_LINE + ONE_LINE, "18", 0.0, 0.0, id="xml-tags-twice"),
    pytest.param("soft_format", "<reasoning>9*2=18</reasoning> <answer>18</answer>", "18", 0.5, 0.5, id="soft"),
    pytest.param("soft_format", MULTI_LINE + "more", "18", 0.0, 0.5, id="soft-trailing-text"),
    pytest.param("soft_format", "Sure!\n" + MULTI_LINE, "18", 0.0, 0.0, id="soft-text-before"),
    pytest.param("soft_format", "<reasoning>\nr\n</reasoning>\n<answer>\n18", "18", 0.0, 0.0, id="soft-unclosed"),
    pytest.param("soft_format", "<answer>18</answer><reasoning>r</reasoning>", "18", 0.0, 0.0, id="soft-order"),
    pytest.param("strict_format", ONE_LINE, "18", 0.5, 0.5, id="strict"),
    pytest.param("strict_format", MULTI_LINE + "  \n", "18", 0.0, 0.5, id="strict-trailing-space"),
    pytest.param("strict_format", ONE_LINE + "more", "18", 0.0, 0.0, id="strict-text-after"),
    pytest.param("strict_format", " " + ONE_LINE, "18", 0.0, 0.0, id="strict-text-before"),
    pytest.param("strict_format", ONE_LINE.replace("<answer>\n", "<answer>"), "18", 0.0, 0.0, id="strict-layout"),
    pytest.param("strict_format", ONE_LINE + ONE_LINE, "18", 0.0, 0.0, id="strict-twice"),
    pytest.param(
        "strict_format",
        ONE_LINE.replace("9 * 2 = 18", "I use <answer> tags"),
        "18",
        0.5,
        0.0,
        id="strict-tag-in-reasoning",
    ),
    pytest.param("int", ONE_LINE, "18", 0.5, 0.5, id="int"),
    pytest.param("int", tagged("+4"), "4", 0.0, 0.5, id="int-plus"),
    pytest.param("int", tagged("2.5"), "2.5", 0.0, 0.0, id="int-fraction"),
    pytest.param("int", tagged("18 dollars"), "18", 0.0, 0.0, id="int-unit"),
    pytest.param("int", tagged("1,0000"), "10000", 0.0, 0.0, id="int-bad-separators"),
    pytest.param("int", tagged("eighteen"), "18", 0.0, 0.0, id="int-words"),
    pytest.param("correctness", ONE_LINE, "18", 2.0, 2.0, id="correct"),
    pytest.param("correctness", MULTI_LINE, "17", 0.0, 0.0, id="correct-wrong"),
    pytest.param("correctness", tagged("-10"), "-10", 2.0, 2.0, id="correct-negative"),
    pytest.param("correctness", tagged("18 dollars"), "18", 0.0, 2.0, id="correct-unit"),
    pytest.param("correctness", "<answer>\n18", "18", 2.0, 2.0, id="correct-unclosed"),
    pytest.param("correctness", "The answer is 18.", "18", 0.0, 0.0, id="correct-sentence"),
]


@pytest.mark.parametrize(("name", "text", "gold", "seed", "default"), DEFECTS)
def test_recipe_defects_are_reproduced_by_seed_and_fixed_by_default(name, text, gold, seed, default):
    assert score(SEED_REWARDS, name, text, gold) == pytest.approx(seed)
    assert score(CORRECTED_REWARDS, name, text, gold) == pytest.approx(default)


@pytest.mark.parametrize(("name", "text", "gold", "seed", "default"), NORMAL)
def test_rewards_in_both_sets(name, text, gold, seed, default):
    assert score(SEED_REWARDS, name, text, gold) == pytest.approx(seed)
    assert score(CORRECTED_REWARDS, name, text, gold) == pytest.approx(default)


def test_xmlcount_whole_text_penalty_falls_below_minus_one_in_seed():
    assert score(SEED_REWARDS, "xmlcount", TRUNCATED) < -1


def test_sets_share_names_order_and_function_names():
    # TRL names its metrics after __name__: the same key must mean the same reward in both sets.
    assert list(CORRECTED_REWARDS) == list(SEED_REWARDS)
    for key in SEED_REWARDS:
        assert CORRECTED_REWARDS[key].__name__ == SEED_REWARDS[key].__name__


def test_plain_string_completions_and_batches():
    texts = [ONE_LINE, "The answer is 18.", tagged("$1,000.00")]
    batch = {"prompts": ["q"] * 3, "completions": texts, "answer": ["18", "18", "1000"]}
    for name, func in CORRECTED_REWARDS.items():
        scores = func(**batch)
        assert len(scores) == 3 and all(isinstance(s, float) for s in scores), name
    assert CORRECTED_REWARDS["correctness"](**batch) == [2.0, 0.0, 2.0]


def test_correctness_rejects_a_misaligned_gold_column():
    with pytest.raises(ValueError):
        CORRECTED_REWARDS["correctness"](prompts=["q", "q"], completions=[ONE_LINE, ONE_LINE], answer=["18"])


# Inputs built to defeat naive regexes; the default set must score them, fast (see
# benchmarks/answer_check_speed.py for the timings) and with these verdicts.
PATHOLOGICAL = [
    pytest.param(
        "<reasoning>\n" + "x" * 100_000 + "\n</reasoning>\n<answer>\n18\n</answer>",
        (0.5, 0.5, 0.5, 0.5, 2.0),
        id="100k-well-formed",
    ),
    pytest.param("<answer>" * 20_000, (0.0, 0.0, 0.0, 0.0, 0.0), id="answer-tags"),
    pytest.param("<reasoning>" + "</reasoning> <answer>" * 5_000, (0.0, 0.0, 0.0, 0.0, 0.0), id="soft-boundaries"),
    pytest.param(
        "<reasoning>\n" + "\n</reasoning>\n<answer>\n" * 4_000 + "\n</answer>",
        (0.25, 0.5, 0.0, 0.0, 0.0),
        id="strict-boundaries",
    ),
    pytest.param("<answer>\n" + "1," * 50_000 + "\n</answer>", (0.125, 0.0, 0.0, 0.0, 0.0), id="commas"),
    pytest.param("<answer>\n" + "9" * 100_000 + "\n</answer>", (0.125, 0.0, 0.0, 0.5, 0.0), id="long-number"),
]


@pytest.mark.parametrize(("text", "expected"), PATHOLOGICAL)
def test_pathological_completions_get_the_right_scores(text, expected):
    scores = tuple(score(CORRECTED_REWARDS, name, text) for name in CORRECTED_REWARDS)
    assert scores == pytest.approx(expected)


LADDER = [
    ("", 0.0),
    ("The answer is 18.", 0.0),
    ("Sure! <reasoning>\n6 * 3 = 18", 0.0),  # the layout must open the reply
    ("\n<reasoning>\n6 * 3 = 18", 0.125),  # leading whitespace is free
    ("<reasoning>\n6 * 3 = 18\n</reasoning>\nso 18", 0.25),
    ("<reasoning>\n6 * 3 = 18\n</reasoning>\n\n<answer>\n18", 0.375),
    ("<reasoning>\n6 * 3 = 18\n</reasoning>\n<answer>\n18\n</answer>\n", 0.5),
    ("<reasoning>\n\n</reasoning>\n<answer>\n\n</answer>", 0.5),  # empty blocks: format only, as strict_format
    # out of order pays nothing beyond the rungs already climbed in order
    ("<reasoning>\nx\n<answer>\n18\n</answer>\n</reasoning>\n", 0.25),
    ("</reasoning>\n<answer>\n18\n</answer>", 0.0),
    ("<answer>\n18\n</answer>\n<reasoning>\nx\n</reasoning>\n", 0.0),
]


@pytest.mark.parametrize(("text", "expected"), LADDER)
def test_format_ladder_pays_each_rung_only_in_order(text, expected):
    (func,) = resolve_rewards("default", ["format_ladder"])
    assert func(prompts=[[]], completions=[[{"role": "assistant", "content": text}]]) == [pytest.approx(expected)]


def test_format_ladder_top_means_soft_format_and_strict_layout_means_top():
    for text, _ in LADDER:
        if format_ladder(text) == 0.5:
            assert score(CORRECTED_REWARDS, "soft_format", text) == 0.5
        if score(CORRECTED_REWARDS, "strict_format", text) == 0.5:
            assert format_ladder(text) == 0.5


def test_format_ladder_is_linear_on_long_replies():
    text = "<reasoning>\n" + "\n</reasoning>\n" * 20_000 + "<answer>\n" + "\n</answer>" * 20_000
    assert format_ladder(text) == 0.25  # the answer block must follow the first close
    assert format_ladder("<reasoning>\n" + "x" * 200_000 + "\n</reasoning>\n<answer>\n" + "\n</answer>" * 20_000) == 0.5
    assert format_ladder("<reasoning>\n" + "x" * 200_000) == 0.125
