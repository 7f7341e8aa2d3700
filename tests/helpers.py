"""Reward functions for tests, importable by dotted path like a user's own rewards."""

from r1lite.rewards.base import completion_texts


def length_reward(prompts, completions, **kwargs):
    """Differs between almost any two completions: gives a random model a learning signal."""
    return [len(text) / 100.0 for text in completion_texts(completions)]


def failing_reward(prompts, completions, **kwargs):
    """Raises on completions containing the letter 'e' (most), scores the rest 1.0."""
    out = []
    for text in completion_texts(completions):
        if "e" in text:
            raise ValueError("cannot score this one")
        out.append(1.0)
    return out


def short_reward(prompts, completions, **kwargs):
    """Returns one score too few."""
    return [1.0] * (len(completions) - 1)


def string_reward(prompts, completions, **kwargs):
    return ["1.0" if i == 1 else 1.0 for i in range(len(completions))]


def nan_reward(prompts, completions, **kwargs):
    return [float("nan") if i == 1 else 0.5 for i in range(len(completions))]


def none_reward(prompts, completions, **kwargs):
    return [None if i == 1 else 0.5 for i in range(len(completions))]


def slow_reward(prompts, completions, **kwargs):
    import time

    end = time.monotonic() + 5
    while time.monotonic() < end:  # pure Python: the time limit can interrupt it
        pass
    return [1.0] * len(completions)


not_a_function = 42
