"""Uncertainty in evaluation figures: Wilson intervals, the sign test, question-by-question comparison, and
held-out questions drawn with a seed from the whole split."""

from __future__ import annotations

import json

import pytest

from r1lite.data import load_prepared
from r1lite.eval_metrics import paired_comparison, rate_intervals, sign_test, wilson_interval


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [(0, 100, 0.0, 0.0370), (50, 100, 0.4038, 0.5962), (100, 100, 0.9630, 1.0), (9, 100, 0.0481, 0.1623)],
)
def test_wilson_interval_known_values(successes, n, low, high):
    assert wilson_interval(successes, n) == pytest.approx((low, high), abs=1e-4)


@pytest.mark.parametrize(
    ("better", "worse", "p"), [(9, 2, 0.06543), (10, 0, 0.001953), (5, 5, 1.0), (0, 0, 1.0), (20, 5, 0.004077)]
)
def test_sign_test_known_values(better, worse, p):
    assert sign_test(better, worse) == pytest.approx(p, rel=1e-3)
    assert sign_test(worse, better) == pytest.approx(p, rel=1e-3)  # two-sided


def _record(index, strict, fmt=None, replies=1):
    fmt = strict if fmt is None else fmt
    flags = {"strict": [strict] * replies, "lenient": [strict] * replies, "format_strict": [fmt] * replies}
    return {"index": index, **flags, "format_soft": [fmt] * replies, "clipped": [False] * replies}


def test_paired_comparison_counts_questions_that_moved():
    base = [_record(0, False), _record(1, False), _record(2, True), _record(3, True, fmt=False)]
    adapted = [_record(0, True), _record(1, False), _record(2, False), _record(3, True, fmt=True)]
    paired = paired_comparison(base, adapted)
    assert paired["accuracy_strict"] == {"better": 1, "worse": 1, "p_sign_test": 1.0}
    assert paired["format_strict"]["better"] == 2 and paired["format_strict"]["worse"] == 1
    with pytest.raises(ValueError, match="different questions"):
        paired_comparison(base, list(reversed(adapted)))


def test_rate_intervals_one_reply_and_several():
    one = [_record(i, i < 3) for i in range(10)]
    assert rate_intervals(one)["accuracy_strict"] == pytest.approx(list(wilson_interval(3, 10)), abs=1e-4)
    several = [_record(i, i < 3, replies=4) for i in range(10)]  # replies to one question move together
    low, high = rate_intervals(several)["accuracy_strict"]
    assert low < 0.3 < high and high - low > 0.5  # per-question means: as uncertain as 10 draws, not 40
    assert rate_intervals(one)["clipped_ratio"][0] == 0.0


def test_held_out_questions_are_drawn_from_the_whole_split(gsm8k_dir):
    every = [json.loads(line)["question"] for line in (gsm8k_dir / "test.jsonl").read_text().splitlines()]
    drawn = load_prepared(str(gsm8k_dir), "test", limit=8, seed=0, sample=True)["question"]
    again = load_prepared(str(gsm8k_dir), "test", limit=8, seed=0, sample=True)["question"]
    other = load_prepared(str(gsm8k_dir), "test", limit=8, seed=1, sample=True)["question"]
    assert drawn == again and drawn != other  # fixed by the seed
    positions = [every.index(q) for q in drawn]
    assert positions == sorted(positions) and max(positions) >= 8  # in split order, beyond the first 8
    first = load_prepared(str(gsm8k_dir), "test", limit=8)["question"]
    assert first == every[:8]  # without sample: the first rows (max_train_samples keeps this meaning)
    assert load_prepared(str(gsm8k_dir), "test", limit=100, sample=True)["question"] == every  # limit >= split
