"""`r1lite eval`: accuracy and format rates on GSM8K-style questions, prompted exactly as in training.

Outputs, beside ``--output`` (default ``eval/<name>.json``): the summary JSON, a per-question JSONL
(``<stem>.jsonl``: replies, extracted answers, verdicts) and with ``--baseline`` the base model's
records (``<stem>.base.jsonl``) and a side-by-side table (``<stem>.md``).

``evaluate_model`` is the reusable core (the CLI and ``PeriodicEval`` during training both call it):
batched, left-padded generation, longest prompts first so each batch pads little; a reply leaves its
batch as soon as it ends (``decode``); ``torch.inference_mode``, and the RNG forked so that a
training run's random stream is left untouched.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, TrainerCallback
from transformers.generation.logits_process import TopPLogitsWarper

from r1lite.attention import use_grouped_attention
from r1lite.data import HUB_GSM8K, load_prepared
from r1lite.eval_metrics import metrics_table, score_question, summarise
from r1lite.models import attach_adapter, load_model
from r1lite.prompts import SYSTEM_PROMPT

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "embedded:smollm2-135m-instruct"
SAMPLING_TEMPERATURE = 0.8  # with several samples and no --temperature: the recipe's sampling temperature
# Sequences generated together. On the 2-core CPU, 200 GSM8K questions: 1.38 q/s at 32, 1.49 q/s at 64
# (benchmarks/eval_throughput.py).
BATCH_SIZE = 64


class EvalError(ValueError):
    """Evaluation settings that cannot work; the message says which and why."""


@dataclass(frozen=True)
class Reply:
    text: str
    num_tokens: int  # generated tokens, the end-of-sequence token included
    clipped: bool  # cut by max_new_tokens before an end-of-sequence token


@dataclass
class EvalResult:
    metrics: dict[str, float]  # eval_metrics.summarise: accuracy_strict, format_soft, pass@k_strict, ...
    records: list[dict[str, Any]]  # one per question, in dataset order
    seconds: float  # wall time of generation and scoring


# ----------------------------------------------------------------------------------------------- generation


def check_generation_settings(num_samples: int, temperature: float, max_new_tokens: int, batch_size: int) -> None:
    if num_samples < 1:
        raise EvalError(f"num_samples must be at least 1, got {num_samples}")
    if temperature < 0:
        raise EvalError(f"temperature must be >= 0, got {temperature}")
    if num_samples > 1 and temperature == 0:
        raise EvalError("num_samples > 1 needs a temperature > 0: greedy decoding would repeat one reply")
    if max_new_tokens < 1 or batch_size < 1:
        raise EvalError(f"max_new_tokens and batch_size must be positive, got {max_new_tokens} and {batch_size}")


def _encode(tokenizer, prompt: list[dict] | str) -> list[int]:
    if isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    encoded = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(encoded["input_ids"])


def _eos_ids(model, tokenizer) -> list[int]:
    configured = model.generation_config.eos_token_id
    ids = set(configured) if isinstance(configured, list) else {configured}
    return sorted(i for i in ids | {tokenizer.eos_token_id} if i is not None)


def _pick(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Next token per row: argmax, or a sample at `temperature` within the top-p nucleus (no top-k and no
    repetition penalty, as in training; a model's own generation_config is not consulted)."""
    if temperature == 0:
        return logits.argmax(-1)
    scores = logits.float() / temperature
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return torch.multinomial(torch.softmax(scores, dim=-1), 1).squeeze(1)


def _forward(model, tokens, mask, positions, cache) -> torch.Tensor:
    # use_cache explicitly: training with gradient checkpointing switches the model's default off.
    out = model(input_ids=tokens, attention_mask=mask, position_ids=positions, past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    return out.logits[:, -1]  # (B, V)


def decode(model, input_ids, attention_mask, *, num_samples: int, temperature: float, top_p: float,
           max_new_tokens: int, eos: list[int]) -> list[list[int]]:
    """Generated tokens (up to and including EOS) for each row of a left-padded batch, `num_samples`
    consecutive rows per prompt.

    Unlike `generate`, a row leaves the batch as soon as it ends instead of riding along until the
    longest reply is done, and each prompt is encoded once however many samples it gets.
    """
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): left padding shifts positions
    cache = DynamicCache(config=model.config)
    logits = _forward(model, input_ids, attention_mask, positions, cache)
    if num_samples > 1:
        cache.batch_repeat_interleave(num_samples)
        logits, attention_mask, positions = (t.repeat_interleave(num_samples, dim=0)
                                             for t in (logits, attention_mask, positions))
    rows = torch.arange(logits.shape[0])  # which output row each batch row is
    position = positions[:, -1:]  # (B, 1)
    eos_ids = torch.tensor(eos, device=logits.device)
    out: list[list[int]] = [[] for _ in range(len(rows))]
    for step in range(max_new_tokens):
        tokens = _pick(logits, temperature, top_p)  # (B,)
        for row, token in zip(rows.tolist(), tokens.tolist(), strict=True):
            out[row].append(token)
        alive = ~torch.isin(tokens, eos_ids)
        if step == max_new_tokens - 1 or not alive.any():
            break
        if not alive.all():
            keep = alive.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, tokens, attention_mask, position = rows[keep], tokens[keep], attention_mask[keep], position[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(rows), 1)], dim=1)
        position = position + 1
        logits = _forward(model, tokens[:, None], attention_mask, position, cache)
    return out


def generate_replies(
    model, tokenizer, prompts: Sequence[list[dict] | str], *, num_samples: int = 1, temperature: float = 0.0,
    top_p: float = 1.0, max_new_tokens: int = 512, batch_size: int = BATCH_SIZE, seed: int = 0, progress: bool = True,
) -> list[list[Reply]]:
    """`num_samples` replies per prompt; a batch holds `batch_size` sequences (batch_size // num_samples prompts)."""
    check_generation_settings(num_samples, temperature, max_new_tokens, batch_size)
    encoded = [_encode(tokenizer, prompt) for prompt in prompts]
    # Longest first: similar lengths share a batch (little padding), and memory peaks at the start.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    per_batch = max(1, batch_size // num_samples)
    eos = _eos_ids(model, tokenizer)
    replies: list[list[Reply]] = [[] for _ in encoded]
    bar = tqdm(total=len(encoded), desc="eval", unit="q", disable=not progress, dynamic_ncols=True)
    # fork_rng: sampling here must not shift the random stream of a training run that calls us.
    with torch.random.fork_rng(), torch.inference_mode():
        torch.manual_seed(seed)
        for start in range(0, len(order), per_batch):
            ids = order[start : start + per_batch]
            batch = tokenizer.pad(
                {"input_ids": [encoded[i] for i in ids]}, padding_side="left", return_tensors="pt"
            ).to(model.device)
            generated = decode(model, batch["input_ids"], batch["attention_mask"], num_samples=num_samples,
                               temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, eos=eos)
            for row, tokens in enumerate(generated):
                clipped = tokens[-1] not in eos
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                replies[ids[row // num_samples]].append(Reply(text, len(tokens), clipped))
            bar.update(len(ids))
    bar.close()
    return replies


def evaluate_model(
    model, tokenizer, dataset, *, num_samples: int = 1, temperature: float = 0.0, top_p: float = 1.0,
    max_new_tokens: int = 512, batch_size: int = BATCH_SIZE, seed: int = 0, progress: bool = True,
) -> EvalResult:
    """Generate for every prepared row (``prompt``, ``answer``, ``question``) and score the replies.

    The model is put in eval mode and returned to its previous mode afterwards (training reuses this).
    """
    rows = dataset.to_list() if hasattr(dataset, "to_list") else list(dataset)
    if not rows:
        raise EvalError("no questions to evaluate")
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        replies = generate_replies(
            model, tokenizer, [row["prompt"] for row in rows], num_samples=num_samples, temperature=temperature,
            top_p=top_p, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, progress=progress,
        )
    finally:
        model.train(was_training)
    records = []
    for index, (row, group) in enumerate(zip(rows, replies, strict=True)):
        scored = score_question(row["question"], row["answer"], [r.text for r in group],
                                [r.num_tokens for r in group], [r.clipped for r in group])
        records.append({"index": index, **scored})
    return EvalResult(summarise(records), records, time.perf_counter() - start)


def load_for_eval(model: str, precision: str = "auto", load_in_4bit: bool = False):
    """A model and tokenizer for generation only: in eval mode, with r1lite's grouped attention on CPU."""
    lm, tokenizer = load_model(model, precision, load_in_4bit)
    use_grouped_attention(lm)
    return lm.eval(), tokenizer


def merge_adapter(peft_model):
    """The adapter merged into the weights (one matmul per layer instead of three), except on quantized weights."""
    if getattr(peft_model.get_base_model(), "hf_quantizer", None) is not None:
        return peft_model  # merging would round the adapter into 4-bit weights
    return peft_model.merge_and_unload()


# ----------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1lite eval", description="Accuracy and format rates on GSM8K-style "
                                     "questions, prompted as in training.")
    add = parser.add_argument
    add("--model", default=DEFAULT_MODEL, help="hub id, local directory or embedded:<name>")
    add("--adapter", default=None, help="LoRA adapter directory (a run's adapter/ or checkpoint-N/)")
    add("--baseline", action="store_true", help="also evaluate the model without the adapter; print both")
    add("--dataset", default=HUB_GSM8K, help="hub id, a .jsonl/.json/.parquet file, a folder, or arith[:spec]")
    add("--split", default="test")
    add("--limit", type=int, default=None, help="evaluate the first N questions")
    add("--num_samples", type=int, default=1, help="replies per question; > 1 adds pass@k and majority vote")
    add("--temperature", type=float, default=None,
        help=f"0 = greedy (default with one sample); {SAMPLING_TEMPERATURE} by default with several")
    add("--top_p", type=float, default=1.0)
    add("--max_new_tokens", type=int, default=512)
    add("--batch_size", type=int, default=BATCH_SIZE, help="sequences generated together (questions x samples)")
    add("--seed", type=int, default=0, help="sampling and few-shot example choice")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--system_prompt", default=None, help="replace the recipe's format system prompt")
    prompt.add_argument("--no_system_prompt", action="store_true",
                        help="the bare chat template (the recipe's 'before' probe)")
    add("--few_shot", type=int, default=0, help="worked examples from the train split before each question")
    add("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    add("--load_in_4bit", action="store_true", help="4-bit weights (CUDA only); the adapter then stays unmerged")
    add("--output", default=None, help="summary JSON path (default eval/<model-or-adapter-name>.json)")
    add("--quiet", action="store_true", help="no progress bar")
    return parser


def parse_eval_args(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise EvalError(f"--limit must be positive, got {args.limit}")
    if args.few_shot < 0:
        raise EvalError(f"--few_shot must be >= 0, got {args.few_shot}")
    if args.baseline and not args.adapter:
        raise EvalError("--baseline compares the model with and without an adapter: pass --adapter DIR")
    if not 0 < args.top_p <= 1:
        raise EvalError(f"--top_p must be in (0, 1], got {args.top_p}")
    if args.temperature is None:
        args.temperature = 0.0 if args.num_samples == 1 else SAMPLING_TEMPERATURE
    check_generation_settings(args.num_samples, args.temperature, args.max_new_tokens, args.batch_size)
    if args.no_system_prompt:
        args.system_prompt = None
    elif args.system_prompt is None:
        args.system_prompt = SYSTEM_PROMPT
    return args


def run_name(model: str, adapter: str | None) -> str:
    """A file name for a run: the adapter's last two path parts (runs/x/adapter -> x-adapter), else the model's."""
    if adapter:
        parts = Path(adapter).expanduser().resolve().parts[-2:]
        return "-".join(parts)
    return model.removeprefix("embedded:").rstrip("/").split("/")[-1]


def _save(result: EvalResult, path: Path) -> dict[str, Any]:
    """Write the per-question records as JSONL; return the summary entry that points at them."""
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in result.records))
    return {"metrics": result.metrics, "seconds": round(result.seconds, 1), "records": str(path)}


def eval_command(argv: list[str]) -> str:
    """Run `r1lite eval`; return what to print (the metrics table and where the files went)."""
    args = parse_eval_args(argv)
    settings = {key: value for key, value in vars(args).items() if key not in ("output", "quiet", "no_system_prompt")}
    # The questions first: a bad dataset fails in seconds, before a model is loaded.
    dataset = load_prepared(args.dataset, args.split, args.system_prompt, args.few_shot, args.limit, seed=args.seed)
    model, tokenizer = load_for_eval(args.model, args.precision, args.load_in_4bit)
    generation = dict(num_samples=args.num_samples, temperature=args.temperature, top_p=args.top_p,
                      max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed,
                      progress=not args.quiet)
    output = Path(args.output) if args.output else Path("eval") / f"{run_name(args.model, args.adapter)}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    records_path = output.with_suffix(".jsonl")

    if not args.baseline:
        if args.adapter:
            model = merge_adapter(attach_adapter(model, args.adapter))
        result = evaluate_model(model, tokenizer, dataset, **generation)
        summary = {"settings": settings, **_save(result, records_path)}
        output.write_text(json.dumps(summary, indent=2) + "\n")
        table = metrics_table({run_name(args.model, args.adapter): result.metrics})
        return f"{table}\n\nsummary: {output}\nper question: {records_path}"

    # Attach before the (long) base evaluation so a mismatched adapter fails at once; the base
    # model is the same weights with the adapter switched off. Both runs share the seed.
    peft_model = attach_adapter(model, args.adapter)
    with peft_model.disable_adapter():
        base = evaluate_model(peft_model, tokenizer, dataset, **generation)
    adapted = evaluate_model(merge_adapter(peft_model), tokenizer, dataset, **generation)
    table = metrics_table({"base": base.metrics, "adapter": adapted.metrics})
    table_path, base_path = output.with_suffix(".md"), output.with_suffix(".base.jsonl")
    table_path.write_text(f"# {args.model} vs {args.adapter} ({args.dataset} [{args.split}])\n\n{table}\n")
    summary = {
        "settings": settings,
        "base": _save(base, base_path),
        "adapter": _save(adapted, records_path),
        "difference": {k: adapted.metrics[k] - base.metrics[k] for k in base.metrics},
        "table": str(table_path),
    }
    output.write_text(json.dumps(summary, indent=2) + "\n")
    return f"{table}\n\nsummary: {output}\ntable: {table_path}\nper question: {records_path}, {base_path}"


# ----------------------------------------------------------------------------------------------- training


class PeriodicEval(TrainerCallback):
    """Evaluate the training model on held-out questions every `every` steps and at the end of training.

    The metrics go to every callback's ``on_log`` (so ``MetricsWriter`` writes them to metrics.jsonl)
    as ``eval/<metric>`` and to ``state.log_history``, like ``Trainer.log`` does, but without calling
    ``GRPOTrainer.log``: that would consume and reset the training metrics gathered for the step.
    Without a trainer the results are only kept in ``history``.
    """

    def __init__(self, dataset, tokenizer, every: int, *, trainer=None, prefix: str = "eval/", **generation):
        check_generation_settings(generation.get("num_samples", 1), generation.get("temperature", 0.0),
                                  generation.get("max_new_tokens", 512), generation.get("batch_size", BATCH_SIZE))
        self.dataset = dataset
        self.tokenizer = tokenizer
        self.every = every
        self.trainer = trainer
        self.prefix = prefix
        self.generation = {"progress": False, **generation}
        self.history: list[dict[str, Any]] = []  # {"step": N, "eval/<metric>": value, ...} per evaluation

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self._evaluate(args, state, control, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.history or self.history[-1]["step"] != state.global_step:
            self._evaluate(args, state, control, model)

    def _evaluate(self, args, state, control, model) -> None:
        # The PEFT-wrapped training model, unmerged: evaluate_model switches it to eval mode and back.
        result = evaluate_model(model, self.tokenizer, self.dataset, **self.generation)
        logs = {f"{self.prefix}{key}": value for key, value in result.metrics.items()}
        logs[f"{self.prefix}seconds"] = round(result.seconds, 1)
        self.history.append({"step": state.global_step, **logs})
        logger.info("step %d: %s", state.global_step,
                    ", ".join(f"{k}={v:.3f}" for k, v in logs.items() if isinstance(v, float)))
        if self.trainer is not None:
            state.log_history.append({**logs, "step": state.global_step})
            # CallbackHandler.on_log clears control.should_log, which would drop this step's training log.
            should_log = control.should_log
            self.trainer.callback_handler.on_log(args, state, control, logs)
            control.should_log = should_log
