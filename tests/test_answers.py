"""Answer extraction and comparison: tables of the forms models write, hostile inputs, and agreement
with the GSM8K authors' own correctness labels on 5,276 real model solutions."""

import json
from fractions import Fraction
from pathlib import Path

import pytest

from r1lite.answers import (
    AnswerCheck,
    answers_equal,
    check_answer,
    extract_last_number,
    extract_tagged_answer,
    parse_number,
)

# CI clones the repository with the shared data beside it.
SHARED_GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
SOLUTIONS = SHARED_GSM8K / "example_model_solutions.jsonl"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<reasoning>\nr\n</reasoning>\n<answer>\n18\n</answer>\n", "18"),
        ("<answer> 18 </answer>", "18"),
        ("<answer>1</answer> then <answer>\n2\n</answer>", "2"),  # the last tag wins
        ("<answer>\n18", "18"),  # cut before </answer>
        ("<answer>\n18\n</answer> trailing </answer>", "18"),
        ("<answer></answer>", ""),
        ("<answer>" * 3, ""),
        ("The answer is 18.", None),
        ("</answer>18", None),
        ("", None),
    ],
)
def test_extract_tagged_answer(text, expected):
    assert extract_tagged_answer(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She makes $1,000.50 a day.", "1,000.50"),
        ("It is 5.", "5"),
        ("The answer is -3", "-3"),
        ("x = -3.", "-3"),
        ("16-3", "3"),  # subtraction, not a negative number
        ("10 - 4", "4"),
        ("she owes -$5", "-5"),
        ("1,450,000 people", "1,450,000"),
        ("1, 2, 3", "3"),  # a list, not a thousands-separated number
        ("1,0000", "0000"),  # not a valid grouping: two numbers
        ("72.0", "72.0"),
        ("half is 1/2", "1/2"),
        ("<<9*2=18>>18\nA: 18", "18"),
        ("(-4)", "-4"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_last_number(text, expected):
    assert extract_last_number(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1000", Fraction(1000)),
        (" 1000 ", Fraction(1000)),
        ("$1,000.00", Fraction(1000)),
        ("1,000", Fraction(1000)),
        ("1000.0", Fraction(1000)),
        ("-10", Fraction(-10)),
        ("−10", Fraction(-10)),  # unicode minus
        ("+4", Fraction(4)),
        ("18%", Fraction(18)),
        ("18 dollars", Fraction(18)),
        ("18 square feet.", Fraction(18)),
        ("\\boxed{18}", Fraction(18)),
        ("$18$", Fraction(18)),
        ("\\$18", Fraction(18)),
        ("**18**", Fraction(18)),
        ("5.", Fraction(5)),
        ("0.5", Fraction(1, 2)),
        ("3/4", Fraction(3, 4)),
        ("12345678901234567890", Fraction(12345678901234567890)),  # exact, no float rounding
        ("1/0", None),
        ("1,0000", None),
        ("x = 5", None),
        ("5 or 6", None),
        ("eighteen", None),
        ("", None),
        (None, None),
        ("9" * 100_000, None),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("2125", "2,125", True),
        ("2,125", "2,125", True),
        ("$1,000", "1000", True),
        ("1000", "1000", True),
        ("1,000.00", "1000", True),
        ("1000.0", "1000", True),
        ("-10", "-10", True),
        ("10", "-10", False),
        ("119.69999999999999", "119.7", True),  # float noise is forgiven
        ("119.71", "119.7", False),
        ("17", "18", False),
        ("1001", "1000", False),
        ("Yes", " yes ", True),  # not numbers: text comparison, case and spacing ignored
        ("No", "yes", False),
        ("", "18", False),
        (None, "18", False),
        ("9" * 100_000, "9" * 100_000, True),
        ("9" * 100_000, "18", False),
    ],
)
def test_answers_equal(pred, gold, expected):
    assert answers_equal(pred, gold) is expected


@pytest.mark.parametrize(
    ("text", "gold", "expected"),
    [
        (
            "<reasoning>\n9 * 2 = 18\n</reasoning>\n<answer>\n$18\n</answer>\n",
            "18",
            AnswerCheck("$18", "18", True, True),
        ),
        ("She makes 18 dollars.", "18", AnswerCheck(None, "18", False, True)),
        (
            "<answer>\n18\n</answer> (double-checked with 2 methods)",
            "18",
            AnswerCheck("18", "2", True, False),
        ),
        ("<answer>\n17\n</answer>", "18", AnswerCheck("17", "17", False, False)),
        ("", "18", AnswerCheck(None, None, False, False)),
    ],
)
def test_check_answer(text, gold, expected):
    assert check_answer(text, gold) == expected


# Inputs that make naive patterns backtrack or overflow. Timings live in
# benchmarks/answer_check_speed.py; here, only that they finish with the right verdict.
@pytest.mark.parametrize(
    ("text", "gold", "strict", "lenient"),
    [
        pytest.param("x" * 99_980 + "<answer>\n18\n</answer>", "18", True, True, id="100k-chars"),
        pytest.param("<answer>" * 20_000, "18", False, False, id="answer-tags"),
        pytest.param("1," * 50_000, "1", False, True, id="commas"),
        pytest.param("1,000," * 16_000, "1000", False, True, id="groups"),
        pytest.param("9" * 100_000, "18", False, False, id="long-number"),
        pytest.param("-" * 100_000 + "$" * 100_000, "18", False, False, id="signs"),
        pytest.param("<answer>\n" + "1." * 50_000 + "\n</answer>", "1.1", False, True, id="dots"),
    ],
)
def test_pathological_inputs(text, gold, strict, lenient):
    check = check_answer(text, gold)
    assert (check.strict, check.lenient) == (strict, lenient)


def _gold(ground_truth: str) -> str:
    """The worked answer in the solutions file ends with 'A: <final>' (the same as test.jsonl's '####')."""
    return ground_truth.rsplit("A:", 1)[1].strip()


def test_lenient_check_agrees_with_gsm8k_labels():
    if not SOLUTIONS.is_file():
        pytest.skip(f"GSM8K example solutions not found at {SOLUTIONS} (clone 'shared' beside the repo)")
    rows = [json.loads(line) for line in SOLUTIONS.read_text().splitlines()]
    model_keys = [key for key in rows[0] if key not in ("question", "ground_truth")]
    disagreements = []
    for i, row in enumerate(rows):
        gold = _gold(row["ground_truth"])
        for key in model_keys:
            check = check_answer(row[key]["solution"], gold)
            if check.lenient != row[key]["is_correct"]:
                disagreements.append(
                    f"row {i} {key}: gold {gold!r}, read {check.last_number!r}, labelled {row[key]['is_correct']}"
                )
    total = len(rows) * len(model_keys)
    agreement = 1 - len(disagreements) / total
    report = f"agreement {agreement:.4%} on {total} solutions; disagreements:\n" + "\n".join(disagreements)
    print(report)
    assert total == 5_276
    assert not disagreements, report  # all 5,276 agree, as the README says


def test_solution_gold_is_the_test_split_gold():
    # The agreement test reads gold from 'A:'; it must be the '####' answer the rewards are trained on.
    test_split = SHARED_GSM8K / "test.jsonl"
    if not (SOLUTIONS.is_file() and test_split.is_file()):
        pytest.skip(f"GSM8K copy not found at {SHARED_GSM8K}")
    solutions = [json.loads(line) for line in SOLUTIONS.read_text().splitlines()]
    tests = [json.loads(line) for line in test_split.read_text().splitlines()]
    assert [_gold(row["ground_truth"]) for row in solutions] == [
        row["answer"].rsplit("####", 1)[1].strip() for row in tests
    ]
