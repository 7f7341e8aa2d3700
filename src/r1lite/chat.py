"""`r1lite chat`: the recipe's before/after probe, with and without the trained adapter.

With a question it samples one reply and returns; without one it reads questions from the terminal
until an empty line or end of input, each asked on its own (no conversation memory: the recipe's
format is one question, one reply).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from r1lite.config import ChatConfig
from r1lite.data import build_prompt
from r1lite.engine import generate_replies
from r1lite.models import load_for_generation


def ask(model, tokenizer, question: str, config: ChatConfig) -> str:
    """One sampled reply; the system prompt is ChatArgs.prompt()'s (the format prompt when an adapter is loaded)."""
    g = config.generation
    prompt = build_prompt(question, config.chat.prompt())
    (replies,) = generate_replies(
        model,
        tokenizer,
        [prompt],
        temperature=g.temperature,
        top_p=g.top_p,
        max_completion_length=g.max_completion_length,
        batch_size=1,
        seed=g.seed,
        progress=False,
    )
    return replies[0].text


def chat(config: ChatConfig, questions: Iterable[str] | None = None, say: Callable[[str], None] = print) -> None:
    """Answer `config.chat.question`, or each of `questions` (default: lines typed at the terminal)."""
    model, tokenizer = load_for_generation(config.model, config.remote.trust_remote_code, config.chat.adapter)
    if config.chat.question is not None:
        say(ask(model, tokenizer, config.chat.question, config))
        return
    for question in questions if questions is not None else _typed():
        if not question.strip():
            break
        say(ask(model, tokenizer, question, config))


def _typed() -> Iterable[str]:
    print("Ask a question (an empty line or Ctrl-D ends the chat).")
    while True:
        try:
            yield input("> ")
        except EOFError:
            return
