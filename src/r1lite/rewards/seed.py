"""The recipe's five reward functions, exactly as the recipe defines them, defects included.

Kept so that the recipe can be reproduced to the number; ``r1lite.rewards.corrected`` holds
the default set. Differences are listed in docs/rewards.md.
"""

import re

from r1lite.rewards.base import completion_texts

_STRICT = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$")
_SOFT = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>")


def extract_xml_answer(text: str) -> str:
    """Text after the last ``<answer>``, cut at the next ``</answer>``, stripped (whole text if no tag)."""
    answer = text.split("<answer>")[-1]
    answer = answer.split("</answer>")[0]
    return answer.strip()


def correctness_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """2.0 when the extracted answer equals the gold string exactly."""
    extracted = [extract_xml_answer(t) for t in completion_texts(completions)]
    # As in the recipe, a gold column of the wrong length is silently truncated.
    return [2.0 if pred == gold else 0.0 for pred, gold in zip(extracted, answer, strict=False)]


def int_reward(prompts, completions, **kwargs) -> list[float]:
    """0.5 when the extracted answer is made of digits only."""
    return [0.5 if extract_xml_answer(t).isdigit() else 0.0 for t in completion_texts(completions)]


def strict_format_reward(prompts, completions, **kwargs) -> list[float]:
    """0.5 for the exact layout; without re.DOTALL, multi-line reasoning never matches."""
    return [0.5 if _STRICT.match(t) else 0.0 for t in completion_texts(completions)]


def soft_format_reward(prompts, completions, **kwargs) -> list[float]:
    """0.5 for tags in order; without re.DOTALL, the newline after <reasoning> defeats it."""
    return [0.5 if _SOFT.match(t) else 0.0 for t in completion_texts(completions)]


def count_xml(text: str) -> float:
    score = 0.0
    if text.count("<reasoning>\n") == 1:
        score += 0.125
    if text.count("\n</reasoning>\n") == 1:
        score += 0.125
    if text.count("\n<answer>\n") == 1:
        score += 0.125
        score -= len(text.split("\n</answer>\n")[-1]) * 0.001
    if text.count("\n</answer>") == 1:
        score += 0.125
        score -= (len(text.split("\n</answer>")[-1]) - 1) * 0.001
    return score


def xmlcount_reward(prompts, completions, **kwargs) -> list[float]:
    """0.125 per well-placed tag, minus a penalty for text after the answer."""
    return [count_xml(t) for t in completion_texts(completions)]


# The recipe's order (it sets the column order of the logged metrics).
SEED_REWARDS = {
    "xmlcount": xmlcount_reward,
    "soft_format": soft_format_reward,
    "strict_format": strict_format_reward,
    "int": int_reward,
    "correctness": correctness_reward,
}
