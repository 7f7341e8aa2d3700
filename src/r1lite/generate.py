"""`r1lite chat`: the recipe's before/after probe, with and without the trained adapter."""

from __future__ import annotations

from r1lite.data import build_prompt
from r1lite.evaluate import generate_replies
from r1lite.models import attach_adapter, load_model
from r1lite.prompts import SYSTEM_PROMPT


def chat(
    question: str,
    model: str = "embedded:smollm2-135m-instruct",
    adapter: str | None = None,
    system_prompt: str | None = None,
    temperature: float = 0.8,
    top_p: float = 0.95,
    max_new_tokens: int = 1024,
    precision: str = "auto",
    seed: int = 0,
) -> str:
    """One sampled reply. Without an adapter the bare chat template, with it the format system prompt."""
    if system_prompt is None and adapter is not None:
        system_prompt = SYSTEM_PROMPT
    lm, tokenizer = load_model(model, precision)
    if adapter:
        lm = attach_adapter(lm, adapter)
    prompt = build_prompt(question, system_prompt)
    (replies,) = generate_replies(lm, tokenizer, [prompt], temperature=temperature, top_p=top_p,
                                  max_new_tokens=max_new_tokens, batch_size=1, seed=seed, progress=False)
    return replies[0].text
