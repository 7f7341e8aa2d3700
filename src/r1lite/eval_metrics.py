"""Evaluation metrics as pure functions: score one question's replies, then summarise many.

Two readings of every reply, as in ``r1lite.answers``: *strict* (the tagged answer) and *lenient*
(the last number). With several samples per question we also report pass@k (Chen et al. 2021,
"Evaluating Large Language Models Trained on Code": the unbiased estimator) and majority-vote
accuracy (Wang et al. 2022, self-consistency).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from math import comb, sqrt
from typing import Any

from r1lite.answers import answers_equal, check_answer, parse_number
from r1lite.rewards.corrected import soft_format_reward, strict_format_reward

# Metrics that are a share of replies or questions (shown as percentages in tables).
RATE_METRICS = ("accuracy_strict", "accuracy_lenient", "format_strict", "format_soft", "clipped_ratio")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chance that at least one of k replies drawn without replacement from n (c of them correct) is correct.

    Unbiased for k <= n: 1 - C(n-c, k) / C(n, k). With k == n it is 1.0 when any reply is correct.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every draw of k replies contains a correct one
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def pass_ks(num_samples: int) -> list[int]:
    """The k reported for n samples: powers of two below n, and n itself (pass@1 equals mean accuracy)."""
    ks = [1 << i for i in range(num_samples.bit_length()) if 1 << i < num_samples]
    return ks + [num_samples]


def vote_key(answer: str | None) -> str | None:
    """What votes are counted on: the exact value of a number ('$1,000' and '1000.0' agree), else the
    case- and whitespace-folded text. Empty or missing answers abstain (None)."""
    if answer is None or not answer.strip():
        return None
    value = parse_number(answer)
    return str(value) if value is not None else " ".join(answer.split()).casefold()


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most common answer (as first written); a tie goes to the answer seen first; None if all abstain."""
    first_written: dict[str, str] = {}
    votes: Counter[str] = Counter()
    for answer in answers:
        key = vote_key(answer)
        if key is None:
            continue
        first_written.setdefault(key, answer)
        votes[key] += 1
    if not votes:
        return None
    # Counter.most_common keeps insertion order among equal counts, so ties go to the first seen.
    return first_written[votes.most_common(1)[0][0]]


def format_flags(replies: list[str]) -> tuple[list[bool], list[bool]]:
    """Whether each reply is in the recipe's format, strictly and tolerantly (the corrected rewards' checks)."""
    strict = [score > 0 for score in strict_format_reward(None, replies)]
    soft = [score > 0 for score in soft_format_reward(None, replies)]
    return strict, soft


def score_question(
    question: str, gold: str, replies: list[str], num_tokens: list[int], clipped: list[bool]
) -> dict[str, Any]:
    """One question's record for the per-question JSONL: every reply with its answers and verdicts."""
    checks = [check_answer(reply, gold) for reply in replies]
    strict_format, soft_format = format_flags(replies)
    tagged = [check.tagged for check in checks]
    last_numbers = [check.last_number for check in checks]
    vote_strict, vote_lenient = majority_vote(tagged), majority_vote(last_numbers)
    return {
        "question": question,
        "gold": gold,
        "replies": replies,
        "tagged": tagged,
        "last_number": last_numbers,
        "strict": [check.strict for check in checks],
        "lenient": [check.lenient for check in checks],
        "format_strict": strict_format,
        "format_soft": soft_format,
        "completion_tokens": num_tokens,
        "clipped": clipped,
        "vote_strict": vote_strict,
        "vote_lenient": vote_lenient,
        "vote_strict_correct": answers_equal(vote_strict, gold),
        "vote_lenient_correct": answers_equal(vote_lenient, gold),
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarise(records: list[dict[str, Any]]) -> dict[str, float]:
    """Dataset-level metrics from per-question records (all with the same number of replies).

    Accuracies and format rates are shares of all replies, so with several samples they estimate the
    accuracy of one sampled reply; pass@k and maj@n (only for several samples) are shares of questions.
    """
    if not records:
        raise ValueError("no records to summarise")
    num_samples = len(records[0]["replies"])
    if any(len(r["replies"]) != num_samples for r in records):
        raise ValueError("every question needs the same number of replies")

    def share(key: str) -> float:
        return _mean([float(v) for r in records for v in r[key]])

    metrics: dict[str, float] = {
        "n": len(records),
        "num_samples": num_samples,
        "accuracy_strict": share("strict"),
        "accuracy_lenient": share("lenient"),
        "format_strict": share("format_strict"),
        "format_soft": share("format_soft"),
        "mean_completion_tokens": share("completion_tokens"),
        "clipped_ratio": share("clipped"),
    }
    if num_samples > 1:
        for reading in ("strict", "lenient"):
            for k in pass_ks(num_samples):
                scores = [pass_at_k(num_samples, sum(r[reading]), k) for r in records]
                metrics[f"pass@{k}_{reading}"] = _mean(scores)
            metrics[f"maj@{num_samples}_{reading}"] = _mean([float(r[f"vote_{reading}_correct"]) for r in records])
    return metrics


# ----------------------------------------------------------------------------------------------- uncertainty

# Per-question scores behind each rate metric (each a list with one value per reply).
RECORD_KEYS = {
    "accuracy_strict": "strict",
    "accuracy_lenient": "lenient",
    "format_strict": "format_strict",
    "format_soft": "format_soft",
    "clipped_ratio": "clipped",
}
Z95 = 1.959964


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: sound at 0% and 100%, where the normal one collapses."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_intervals(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    """95% intervals of each rate metric over questions. One reply per question: Wilson's. Several: the normal
    interval of the per-question means (replies to one question are not independent of each other)."""
    intervals = {}
    n = len(records)
    for metric, key in RECORD_KEYS.items():
        means = [_question_mean(r, key) for r in records]
        if all(len(r[key]) == 1 for r in records):
            low, high = wilson_interval(sum(means), n)
        else:
            mean = _mean(means)
            sd = sqrt(sum((m - mean) ** 2 for m in means) / max(1, n - 1))
            low, high = max(0.0, mean - Z95 * sd / sqrt(n)), min(1.0, mean + Z95 * sd / sqrt(n))
        intervals[metric] = [round(low, 4), round(high, 4)]
    return intervals


def _question_mean(record: dict[str, Any], key: str) -> float:
    return _mean([float(v) for v in record[key]])


def sign_test(better: int, worse: int) -> float:
    """Two-sided exact sign test: the chance of a split at least this uneven if neither side were better."""
    n = better + worse
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(better, worse) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_comparison(base: list[dict[str, Any]], adapted: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Question by question, for accuracy and format: how many questions the adapter scores higher on, how many
    lower, and the sign test's p-value. Both record lists cover the same questions in the same order."""
    if [r["index"] for r in base] != [r["index"] for r in adapted]:
        raise ValueError("the two evaluations cover different questions")
    out = {}
    for metric in ("accuracy_strict", "accuracy_lenient", "format_strict"):
        key = RECORD_KEYS[metric]
        pairs = [(_question_mean(b, key), _question_mean(a, key)) for b, a in zip(base, adapted, strict=True)]
        better = sum(after > before for before, after in pairs)
        worse = sum(after < before for before, after in pairs)
        out[metric] = {"better": better, "worse": worse, "p_sign_test": float(f"{sign_test(better, worse):.3g}")}
    return out


def paired_lines(paired: dict[str, dict[str, float]]) -> list[str]:
    return [
        f"{metric}: better on {c['better']} questions, worse on {c['worse']} (two-sided sign test p = "
        f"{c['p_sign_test']:.2g})"
        for metric, c in paired.items()
    ]


# ----------------------------------------------------------------------------------------------- tables


def is_rate(key: str) -> bool:
    return key in RATE_METRICS or key.startswith(("pass@", "maj@"))


def format_value(key: str, value: float) -> str:
    if is_rate(key):
        return f"{value:.1%}"
    return f"{value:g}" if key in ("n", "num_samples") else f"{value:.1f}"


def format_difference(key: str, diff: float) -> str:
    if key in ("n", "num_samples"):
        return ""
    return f"{diff * 100:+.1f} pp" if is_rate(key) else f"{diff:+.1f}"


def metrics_table(columns: dict[str, dict[str, float]]) -> str:
    """A Markdown table of metrics; with two columns, a third holds the difference (second minus first)."""
    names = list(columns)
    compare = len(names) == 2
    header = ["metric", *names] + (["difference"] if compare else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in columns[names[0]]:
        cells = [key] + [format_value(key, columns[name][key]) for name in names]
        if compare:
            cells.append(format_difference(key, columns[names[1]][key] - columns[names[0]][key]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
