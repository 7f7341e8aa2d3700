"""`r1lite chat`: the recipe's before/after probe, with and without the trained adapter."""

from __future__ import annotations

import torch

from r1lite.data import build_prompt
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
    lm.eval()
    inputs = tokenizer.apply_chat_template(
        build_prompt(question, system_prompt), add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(lm.device)
    torch.manual_seed(seed)
    with torch.inference_mode():
        output = lm.generate(
            **inputs, do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
            top_p=top_p if temperature > 0 else None, max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def sample_groups(
    model, tokenizer, prompts: list[list[dict]], num_generations: int, temperature: float = 1.0,
    max_new_tokens: int = 200, seed: int = 0,
) -> list[list[str]]:
    """`num_generations` sampled replies per conversational prompt, one prompt per generate call.

    One prompt at a time keeps the group together and needs no padding; diagnostics sample only
    a handful of prompts, so batching across prompts would save little here.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    groups = []
    model.eval()
    for prompt in tqdm(prompts, desc="sampling groups", unit="prompt"):
        inputs = tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(model.device)
        with torch.inference_mode():
            output = model.generate(
                **inputs, do_sample=True, temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens,
                num_return_sequences=num_generations, pad_token_id=tokenizer.pad_token_id,
            )
        start = inputs["input_ids"].shape[1]
        groups.append([tokenizer.decode(seq[start:], skip_special_tokens=True) for seq in output])
    return groups
