"""Answer checking shared by the rewards and by evaluation: extract a final answer, compare it with gold.

Two readings of a reply:
- strict: the text inside the last ``<answer>`` tag; a reply without the tag has no answer.
- lenient: the last number anywhere in the reply, whatever the format: a fair measure of a model
  that has not learned the tags (it matches all 5,276 ``is_correct`` labels of GSM8K's example
  solutions, see tests/test_answers.py).

Comparison is numeric when both sides read as numbers (``$1,000.00`` equals ``1000``), exact
(``fractions.Fraction``, so integers never round), and falls back to a case- and
whitespace-insensitive string comparison otherwise. Model text is only matched with
linear-time patterns, never evaluated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"

# A number inside running text. The minus sign only counts when it cannot be a subtraction
# ('16-3' is 16 and 3, '= -3' is -3). Thousands separators need full groups of three so that
# a list '1, 2, 3' stays three numbers. Of the two leading lookaheads, the character class lets
# the engine skip other text quickly and the second drops a '-' or '$' with no digit after it.
# No part can match the same text two ways, so there is no backtracking blow-up.
_NUMBER_IN_TEXT = re.compile(
    r"(?=[-−$\d])(?=[-−]?\$?\d)"
    r"(?:(?<![\w)\]])[-−])?\$?"
    r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
    r"(?:\.\d+)?"
    r"(?:/\d+)?",
    re.ASCII,
)

# A text that is essentially one number: sign, currency, separators, decimals, a fraction, and
# at most a short unit ('%', 'dollars', 'square feet') or a full stop after it.
_WHOLE_NUMBER = re.compile(
    r"(?P<sign>[-+−]?)\s*(?:\\?\$)?\s*"
    r"(?P<int>\d{1,3}(?:,\d{3})+|\d+)"
    r"(?:\.(?P<frac>\d+))?"
    r"(?:\s*/\s*(?P<den>\d+))?"
    r"\s*(?:\\?%|[A-Za-z]+(?: [A-Za-z]+){0,2})?\.?",
    re.ASCII,
)
_BOXED = re.compile(r"\\boxed\{(.*)\}")

# Longer answers are not "essentially a number"; the cap also bounds the exact arithmetic.
_MAX_NUMBER_CHARS = 100
# GSM8K answers are whole numbers; the tolerance only forgives float noise like 119.69999999999999.
_TOLERANCE = Fraction(1, 10**6)


def extract_tagged_answer(text: str) -> str | None:
    """Text inside the last ``<answer>``, up to the next ``</answer>`` (or the end), stripped.

    ``None`` when the reply has no ``<answer>`` tag; an unclosed tag still counts because a
    reply cut at the length limit may hold a complete answer.
    """
    start = text.rfind(ANSWER_OPEN)
    if start < 0:
        return None
    body = text[start + len(ANSWER_OPEN) :]
    end = body.find(ANSWER_CLOSE)
    return (body if end < 0 else body[:end]).strip()


def extract_last_number(text: str) -> str | None:
    """The last number in the text, as written minus any ``$`` (``'1,000.50'``, ``'-3'``, ``'3/4'``)."""
    numbers = _NUMBER_IN_TEXT.findall(text)
    return numbers[-1].replace("$", "") if numbers else None


def _unwrap(text: str) -> str:
    """Drop the decorations models put around a final answer: bold, code, ``\\boxed{}``, ``$...$``."""
    text = text.strip().strip("*`").strip()
    boxed = _BOXED.fullmatch(text)
    if boxed:
        text = boxed.group(1).strip()
    if len(text) > 2 and text[0] == "$" and text[-1] == "$":
        text = text[1:-1].strip()
    return text


def parse_number(text: str | None) -> Fraction | None:
    """The exact value of a text that is essentially one number, else ``None``.

    ``'$1,000.00'``, ``' 1000 '``, ``'1,000'``, ``'1000.0'``, ``'18%'``, ``'18 dollars'``,
    ``'\\boxed{18}'`` and ``'**18**'`` all read as 18 or 1000; ``'1,0000'``, ``'x = 5'`` and
    ``'5 or 6'`` are not numbers.
    """
    if text is None or len(text) > _MAX_NUMBER_CHARS:
        return None
    match = _WHOLE_NUMBER.fullmatch(_unwrap(text))
    if not match:
        return None
    digits = match["int"].replace(",", "")
    value = Fraction(f"{digits}.{match['frac']}" if match["frac"] else digits)
    if match["den"]:
        denominator = int(match["den"])
        if denominator == 0:
            return None
        value /= denominator
    return -value if match["sign"] in ("-", "−") else value


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def answers_equal(pred: str | None, gold: str) -> bool:
    """Whether a predicted answer matches the gold one: by value when both are numbers, else by text."""
    if pred is None:
        return False
    pred_value, gold_value = parse_number(pred), parse_number(gold)
    if pred_value is not None and gold_value is not None:
        return abs(pred_value - gold_value) <= _TOLERANCE * max(abs(gold_value), 1)
    return _normalise(pred) == _normalise(gold)


@dataclass(frozen=True)
class AnswerCheck:
    """Both readings of one reply against its gold answer."""

    tagged: str | None  # text inside the last <answer> tag; None without the tag
    last_number: str | None  # last number anywhere in the reply
    strict: bool  # the tagged answer equals gold (what the correctness reward pays for)
    lenient: bool  # the last number equals gold (format ignored)


def check_answer(text: str, gold: str) -> AnswerCheck:
    tagged = extract_tagged_answer(text)
    last_number = extract_last_number(text)
    return AnswerCheck(
        tagged=tagged,
        last_number=last_number,
        strict=answers_equal(tagged, gold),
        lenient=answers_equal(last_number, gold),
    )
