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
