"""`r1lite eval`: accuracy and format rates on GSM8K-style questions, prompted exactly as in training.

Outputs, beside ``--output`` (default ``eval/<name>.json``): the summary JSON, a per-question JSONL
(``<stem>.jsonl``: replies, extracted answers, verdicts) and with ``--baseline`` the base model's
records (``<stem>.base.jsonl``) and a side-by-side table (``<stem>.md``).

``evaluate_model`` is the reusable core (the CLI and the ``PeriodicEval`` callback both call it); the
decoding itself is r1lite.engine's.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from r1lite.config import EvalConfig
from r1lite.data import load_prepared
from r1lite.engine import Reply, generate_replies, pick_backend, vllm_generate_replies
from r1lite.errors import EvalError
from r1lite.eval_metrics import (
    metrics_table,
    paired_comparison,
    paired_lines,
    rate_intervals,
    score_question,
    summarise,
)
from r1lite.models import for_generation, load_for_generation, load_tokenizer, resolve_model_path

logger = logging.getLogger(__name__)


@dataclass
class EvalResult:
    metrics: dict[str, float]  # eval_metrics.summarise: accuracy_strict, format_soft, pass@k_strict, ...
    records: list[dict[str, Any]]  # one per question, in dataset order
    seconds: float  # wall time of generation and scoring


def score(rows: list[dict[str, Any]], replies: list[list[Reply]], seconds: float) -> EvalResult:
    records = []
    for index, (row, group) in enumerate(zip(rows, replies, strict=True)):
        scored = score_question(
            row["question"],
            row["answer"],
            [r.text for r in group],
            [r.num_tokens for r in group],
            [r.clipped for r in group],
        )
        records.append({"index": index, **scored})
    return EvalResult(summarise(records), records, seconds)


def evaluate_model(model, tokenizer, dataset, **generation) -> EvalResult:
    """Generate for every prepared row (``prompt``, ``answer``, ``question``) and score the replies.

    `generation` goes to engine.generate_replies. The model is put in eval mode and returned to its previous mode
    afterwards (training reuses this)."""
    rows = dataset.to_list() if hasattr(dataset, "to_list") else list(dataset)
    if not rows:
        raise EvalError("no questions to evaluate")
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        replies = generate_replies(model, tokenizer, [row["prompt"] for row in rows], **generation)
    finally:
        model.train(was_training)
    return score(rows, replies, time.perf_counter() - start)


def run_name(model: str, adapter: str | None) -> str:
    """A file name for a run: the adapter's last two path parts (runs/x/adapter -> x-adapter), else the model's."""
    if adapter:
        parts = Path(adapter).expanduser().resolve().parts[-2:]
        return "-".join(parts)
    return model.removeprefix("embedded:").rstrip("/").split("/")[-1]


def _save(result: EvalResult, path: Path) -> dict[str, Any]:
    """Write the per-question records as JSONL; return the summary entry that points at them, with the 95%
    interval of every rate metric."""
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in result.records))
    return {
        "metrics": result.metrics,
        "intervals": rate_intervals(result.records),
        "seconds": round(result.seconds, 1),
        "records": str(path),
    }


class _Evaluator:
    """Evaluates the base model and/or the adapter with one backend, loading the model once."""

    def __init__(self, config: EvalConfig, rows: list[dict[str, Any]]):
        self.config, self.rows = config, rows
        g = config.generation
        self.backend = pick_backend(g.backend)
        self.generation = dict(
            num_generations=g.num_generations,
            temperature=g.temperature,
            top_p=g.top_p,
            max_completion_length=g.max_completion_length,
            seed=g.seed,
        )
        self.hf_only = dict(batch_size=g.batch_size, progress=not config.eval.quiet)
        self.model = self.tokenizer = None
        if self.backend == "hf":
            # Attached now, so a mismatched adapter fails before the long base evaluation; merged only after it.
            self.model, self.tokenizer = load_for_generation(
                config.model, config.remote.trust_remote_code, config.eval.adapter, merge=False
            )
        else:
            self.tokenizer = load_tokenizer(resolve_model_path(config.model.model))

    def run(self, with_adapter: bool) -> EvalResult:
        if self.backend == "hf":
            if not with_adapter and self.config.eval.adapter:  # the base: the same weights, adapter switched off
                with self.model.disable_adapter():
                    return evaluate_model(self.model, self.tokenizer, self.rows, **self.hf_only, **self.generation)
            self.model = for_generation(self.model)
            return evaluate_model(self.model, self.tokenizer, self.rows, **self.hf_only, **self.generation)
        adapter = self.config.eval.adapter if with_adapter else None
        start = time.perf_counter()
        replies = vllm_generate_replies(
            resolve_model_path(self.config.model.model),
            adapter,
            self.tokenizer,
            [row["prompt"] for row in self.rows],
            lora_rank=_adapter_rank(adapter),
            **self.generation,
        )
        return score(self.rows, replies, time.perf_counter() - start)


def _adapter_rank(adapter: str | None) -> int:
    if adapter is None:
        return 16
    return int(json.loads((Path(adapter) / "adapter_config.json").read_text()).get("r", 64))


def eval_command(config: EvalConfig) -> str:
    """Run `r1lite eval`; return what to print (the metrics table and where the files went)."""
    m, d, e = config.model, config.data, config.eval
    settings = {
        **asdict(m),
        **asdict(d),
        **asdict(config.generation),
        **asdict(e),
        "system_prompt": config.system_prompt(),
    }  # the prompt used, resolved
    # The questions first: a bad dataset fails in seconds, before a model is loaded.
    dataset = load_prepared(
        d.dataset,
        d.dataset_test_split,
        config.system_prompt(),
        d.few_shot,
        d.max_eval_samples,
        seed=config.generation.seed,
        sample=True,
    )
    rows = dataset.to_list()  # never empty: load_prepared stops on a split with no usable row
    output = Path(e.output) if e.output else Path("eval") / f"{run_name(m.model, e.adapter)}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    records_path = output.with_suffix(".jsonl")
    evaluator = _Evaluator(config, rows)

    if not e.baseline:
        result = evaluator.run(with_adapter=True)
        summary = {"settings": settings, "backend": evaluator.backend, **_save(result, records_path)}
        output.write_text(json.dumps(summary, indent=2) + "\n")
        table = metrics_table({run_name(m.model, e.adapter): result.metrics})
        return f"{table}\n\nsummary: {output}\nper question: {records_path}"

    base = evaluator.run(with_adapter=False)  # before merging: the merge consumes the adapter
    adapted = evaluator.run(with_adapter=True)
    table = metrics_table({"base": base.metrics, "adapter": adapted.metrics})
    paired = paired_comparison(base.records, adapted.records)
    table += "\n\nQuestion by question:\n" + "\n".join(f"- {line}" for line in paired_lines(paired))
    table_path, base_path = output.with_suffix(".md"), output.with_suffix(".base.jsonl")
    table_path.write_text(f"# {m.model} vs {e.adapter} ({d.dataset} [{d.dataset_test_split}])\n\n{table}\n")
    summary = {
        "settings": settings,
        "backend": evaluator.backend,
        "base": _save(base, base_path),
        "adapter": _save(adapted, records_path),
        "difference": {k: adapted.metrics[k] - base.metrics[k] for k in base.metrics},
        "paired": paired,
        "table": str(table_path),
    }
    output.write_text(json.dumps(summary, indent=2) + "\n")
    return f"{table}\n\nsummary: {output}\ntable: {table_path}\nper question: {records_path}, {base_path}"
