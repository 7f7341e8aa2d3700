"""What every reward function shares: TRL's batched signature and completion text access.

A reward function takes ``prompts``, ``completions`` and the dataset columns (``answer``, ...)
as keyword arguments and returns one score per completion. ``None`` means "cannot verify":
TRL ignores it when it sums the weighted rewards.
"""

from collections.abc import Callable, Sequence
from typing import Any

RewardFunc = Callable[..., list[float | None]]


def completion_text(completion: Any) -> str:
    """Text of one completion, conversational (``[{"role": "assistant", "content": ...}]``) or plain."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    raise TypeError(f"cannot read a completion of type {type(completion).__name__}: {completion!r:.80}")


def completion_texts(completions: Sequence[Any]) -> list[str]:
    return [completion_text(c) for c in completions]
