"""The recipe's prompt text, shared by data preparation, training, evaluation and chat."""

# Exact text from the recipe: it starts and ends with a newline.
SYSTEM_PROMPT = "\nRespond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n"

# The shape of a well-formed assistant reply (one-shot examples, SFT warm-up data).
REPLY_TEMPLATE = "<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>\n"


def format_reply(reasoning: str, answer: str) -> str:
    """Render a reply in the target format."""
    return REPLY_TEMPLATE.format(reasoning=reasoning.strip(), answer=answer.strip())
