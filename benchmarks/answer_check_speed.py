"""Milliseconds per completion for answer checking and each reward, on long and hostile completions.

    PYTHONPATH=src python benchmarks/answer_check_speed.py

The default set must stay well under 50 ms per completion on every input (it runs on every sampled
completion of every step); the seed set is timed once for comparison, since the recipe's soft_format
regex backtracks quadratically on some inputs.
"""

import time
from collections.abc import Callable
from functools import partial

from r1lite.answers import check_answer
from r1lite.rewards.corrected import CORRECTED_REWARDS
from r1lite.rewards.seed import SEED_REWARDS

GOLD = "18"
INPUTS = {
    "100k well-formed": "<reasoning>\n" + "She makes 9 * 2 = $18.\n" * 4_400 + "</reasoning>\n<answer>\n18\n</answer>",
    "100k prose, no tags": "Janet sells 16 - 3 - 4 = 9 eggs and makes $1,000.50 a day. " * 1_700,
    "<answer> x 20,000": "<answer>" * 20_000,
    "'1,' x 50,000": "1," * 50_000,
    "'1,000,' x 16,000": "1,000," * 16_000,
    "'9' x 100,000": "9" * 100_000,
    "'-$' x 50,000": "-$" * 50_000,
    "soft boundaries, unclosed": "<reasoning>" + "</reasoning> <answer>" * 5_000,
    "strict boundaries": "<reasoning>\n" + "\n</reasoning>\n<answer>\n" * 4_000 + "\n</answer>",
    # Hostile model text: none of it may be slow, and none of it is ever evaluated.
    "100k nested tags": "<reasoning><answer>" * 2_700 + "1" + "</answer></reasoning>" * 2_700,
    "'1' x 100,000": "1" * 100_000,
    "Unicode digits": "<answer>\n" + "\u0661\u0662\u0663 \u0967\u0968 \uff11\uff18 " * 3_000 + "\n</answer>",
    "1e999": "<reasoning>\nbig\n</reasoning>\n<answer>\n1e999\n</answer>\n",
    "10**10**10": "<reasoning>\npower\n</reasoning>\n<answer>\n10**10**10\n</answer>\n",
    "looks like code": "<answer>\n__import__('os').system('echo pwned') or (9**9**9)\n</answer>\n",
}


def time_ms(work: Callable[[], object], repeats: int) -> float:
    """Best of ``repeats`` runs: the least disturbed measurement of the same work."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def score_one(reward: Callable, text: str) -> list:
    return reward(prompts=["question"], completions=[text], answer=[GOLD])


def print_table(title: str, columns: dict[str, Callable[[str], object]], repeats: int) -> None:
    print(f"\n{title} (ms per completion, best of {repeats})")
    print(f"{'input':26} {'chars':>7} " + " ".join(f"{name:>13}" for name in columns))
    for label, text in INPUTS.items():
        times = [time_ms(partial(work, text), repeats) for work in columns.values()]
        print(f"{label:26} {len(text):>7} " + " ".join(f"{ms:>13.2f}" for ms in times))


def main() -> None:
    default_columns = {"check_answer": partial(check_answer, gold=GOLD)}
    default_columns |= {name: partial(score_one, reward) for name, reward in CORRECTED_REWARDS.items()}
    print_table("default: answers.check_answer and rewards.corrected", default_columns, repeats=5)
    slowest = max(
        (time_ms(partial(work, text), 3), name, label)
        for label, text in INPUTS.items()
        for name, work in default_columns.items()
    )
    print(f"\nslowest (default set): {slowest[0]:.2f} ms, {slowest[1]} on '{slowest[2]}' (target: under 50 ms)")
    seed_columns = {name: partial(score_one, reward) for name, reward in SEED_REWARDS.items()}
    print_table("seed: the recipe's rewards, for comparison", seed_columns, repeats=1)


if __name__ == "__main__":
    main()
