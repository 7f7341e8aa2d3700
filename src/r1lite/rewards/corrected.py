"""The default reward set: the recipe's five intentions, with its measured defects fixed.

Same names, order and scale as ``r1lite.rewards.seed``, so metric keys and the total reward stay
comparable; docs/rewards.md lists every difference with an example. All checks run in linear
time: the tags are found with ``str`` methods, and regexes only run where they cannot backtrack.
"""

import re

from r1lite.answers import ANSWER_CLOSE, ANSWER_OPEN, answers_equal, extract_tagged_answer
from r1lite.rewards.base import completion_texts

_TAGS = ("<reasoning>", "</reasoning>", ANSWER_OPEN, ANSWER_CLOSE)

# Only run once every tag is known to occur exactly once, so each '.*' has a single place to stop.
_STRICT = re.compile(r"<reasoning>\n.*\n</reasoning>\n<answer>\n.*\n</answer>\s*", re.DOTALL)
_REASONING_THEN_ANSWER = re.compile(r"</reasoning>\s*<answer>")

# A whole number as GSM8K writes its answers, give or take a sign, a '$', a '.0' and
# thousands separators in full groups of three: '-3', '+4', '$18', '1,000', '72.0'.
_INTEGER = re.compile(r"[-+−]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.0+)?", re.ASCII)

# The seed's tag strings: each tag on its own line is part of the target layout.
_XML_PARTS = ("<reasoning>\n", "\n</reasoning>\n", "\n<answer>\n", "\n</answer>")
_XML_PART_SCORE = 0.125
_TRAILING_PENALTY_PER_CHAR = 0.001


def _is_strict(text: str) -> bool:
    if any(text.count(tag) != 1 for tag in _TAGS):
        return False
    return _STRICT.fullmatch(text) is not None


def strict_format_reward(prompts, completions, **kwargs) -> list[float]:
    """0.5 for exactly the prompted layout: multi-line reasoning, optional whitespace after </answer>."""
    return [0.5 if _is_strict(t) else 0.0 for t in completion_texts(completions)]


def _is_soft(text: str) -> bool:
    """<reasoning>...</reasoning> then <answer>...</answer>, starting the reply, anything in between.

    Equivalent to a DOTALL regex match, found without backtracking: only the first
    '</reasoning> <answer>' boundary needs checking, as a later one has less text after it.
    """
    body = text.lstrip()
    if not body.startswith("<reasoning>"):
        return False
    boundary = _REASONING_THEN_ANSWER.search(body, len("<reasoning>"))
    return boundary is not None and body.find(ANSWER_CLOSE, boundary.end()) >= 0


def soft_format_reward(prompts, completions, **kwargs) -> list[float]:
    """0.5 when the reply starts with a reasoning block followed by an answer block, newlines allowed."""
    return [0.5 if _is_soft(t) else 0.0 for t in completion_texts(completions)]


def count_xml(text: str) -> float:
    """0.125 per tag line present exactly once, minus 0.001 per character after the last </answer>.

    Whitespace around that text is free (a reply may end at EOS or with a newline); the result is
    kept within [0, 0.5] so no reply is pushed below one that wrote nothing.
    """
    score = _XML_PART_SCORE * sum(text.count(part) == 1 for part in _XML_PARTS)
    _, closed, trailing = text.rpartition(ANSWER_CLOSE)
    if closed:
        score -= _TRAILING_PENALTY_PER_CHAR * len(trailing.strip())
    return max(score, 0.0)


def xmlcount_reward(prompts, completions, **kwargs) -> list[float]:
    """Partial credit per tag, so the format is learnable before the whole layout is right."""
    return [count_xml(t) for t in completion_texts(completions)]


def _is_integer_answer(text: str) -> bool:
    answer = extract_tagged_answer(text)
    return answer is not None and _INTEGER.fullmatch(answer) is not None


def int_reward(prompts, completions, **kwargs) -> list[float]:
    """0.5 when the tagged answer is written as a whole number; no tag, no reward."""
    return [0.5 if _is_integer_answer(t) else 0.0 for t in completion_texts(completions)]


def correctness_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """2.0 when the tagged answer equals gold by value ('$1,000.00' == '1,000'); untagged replies get 0."""
    # strict zip: a batch whose gold column does not line up with its completions is a bug upstream
    pairs = zip(completion_texts(completions), answer, strict=True)
    return [2.0 if answers_equal(extract_tagged_answer(t), gold) else 0.0 for t, gold in pairs]


# The layout as four rungs, each the next piece of text a well-formed reply writes after the last.
_LADDER = ("<reasoning>\n", "\n</reasoning>\n", "<answer>\n", "\n</answer>")
_LADDER_RUNG_SCORE = 0.125


def format_ladder(text: str) -> float:
    """0.125 per rung of the layout climbed in order, at most 0.5.

    Rungs: the reply opens with ``<reasoning>``; closes it; opens ``<answer>`` right after (whitespace
    between the blocks allowed, as soft_format does); closes it. A rung only counts once every rung
    below it is in place, and nothing is paid for tags out of order, so the score rises only along
    the path to the full layout. Everything after the answer block is left to xmlcount's penalty.
    """
    body = text.lstrip()
    if not body.startswith(_LADDER[0]):
        return 0.0
    rungs, pos = 1, len(_LADDER[0]) - 1  # the opening newline may also start an empty block's close
    close = body.find(_LADDER[1], pos)
    if close >= 0:
        rungs, pos = 2, close + len(_LADDER[1])
        after = body[pos:].lstrip()
        if after.startswith(_LADDER[2]):
            rungs = 3
            if after.find(_LADDER[3], len(_LADDER[2]) - 1) >= 0:
                rungs = 4
    return _LADDER_RUNG_SCORE * rungs


def format_ladder_reward(prompts, completions, **kwargs) -> list[float]:
    """Ordered partial credit for the layout (not in the recipe): a learning signal for pure RL from a cold start."""
    return [format_ladder(t) for t in completion_texts(completions)]


# Same keys and order as SEED_REWARDS: the order sets the column order of the logged metrics.
CORRECTED_REWARDS = {
    "xmlcount": xmlcount_reward,
    "soft_format": soft_format_reward,
    "strict_format": strict_format_reward,
    "int": int_reward,
    "correctness": correctness_reward,
}

# Rewards outside the recipe's five, named in a recipe's `rewards:` list with either set.
EXTRA_REWARDS = {"format_ladder": format_ladder_reward}
