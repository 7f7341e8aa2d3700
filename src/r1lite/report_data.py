"""What a run directory holds, read for `r1lite report`: metric series, completions, the before/after evaluation
(eval.json) and throughput figures. No drawing and no markup here; report.py turns these into plots and pages.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

from r1lite import eval_metrics
from r1lite.errors import ReportError
from r1lite.rewards.base import completion_text

logger = logging.getLogger(__name__)

# TRL's end-of-training record: whole-run numbers, not series.
SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos")
NOT_PLOTTED = {"step", "epoch", *SUMMARY_KEYS}
# The metrics table, in this order (reward means and eval keys are added where they are found).
TABLE_KEYS = (
    "reward",
    "reward_std",
    "completions/mean_length",
    "completions/clipped_ratio",
    "frac_reward_zero_std",
    "kl",
    "entropy",
    "loss",
    "grad_norm",
    "learning_rate",
    "step_time",
)

Series = tuple[list[float], list[float]]  # (steps, values), sorted by step


# ----------------------------------------------------------------------------------------- reading


def is_eval_key(key: str) -> bool:
    return key.startswith(("eval/", "eval_")) and not key.endswith(("_runtime", "_per_second"))


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """The JSON objects of a file, and the numbers of the lines that were not one (a run killed mid-write cuts its
    last line in half)."""
    records, bad = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            bad.append(number)
    return records, bad


def _number(value: Any) -> float | None:
    # None/NaN mean "no value this step" (see callbacks._clean); bools are not metrics.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def collect_series(records: list[dict[str, Any]]) -> dict[str, Series]:
    """One (steps, values) series per metric key, skipping missing values; records need a ``step``."""
    points: dict[str, dict[float, float]] = {}
    for record in records:
        step = _number(record.get("step"))
        if step is None:
            continue
        for key, raw in record.items():
            value = _number(raw)
            if key not in NOT_PLOTTED and value is not None:
                points.setdefault(key, {})[step] = value  # a repeated step keeps its last record
    return {key: (sorted(p), [p[s] for s in sorted(p)]) for key, p in points.items()}


def load_metrics(run_dir: Path) -> tuple[dict[str, Series], dict[str, float], list[int]]:
    path = run_dir / "metrics.jsonl"
    if not run_dir.is_dir():
        raise ReportError(f"run directory not found: {run_dir}")
    if not path.is_file():
        raise ReportError(
            f"{path} not found: pass the output_dir of an `r1lite train` run (metrics.jsonl is written "
            "from the first logged step on)"
        )
    records, bad = read_jsonl(path)
    if bad:
        logger.warning(
            "%s: skipped unreadable line(s) %s (a run stopped mid-write leaves one)", path, ", ".join(map(str, bad))
        )
    series = collect_series(records)
    if not series:
        raise ReportError(
            f"{path} holds no metric records ({len(bad)} unreadable lines): the run stopped before its first "
            "logged step; train for at least logging_steps steps, then run the report again"
        )
    summary = {k: v for r in records for k in SUMMARY_KEYS if (v := _number(r.get(k))) is not None}
    return series, summary, bad


# ----------------------------------------------------------------------------------------- numbers


def default_window(num_points: int) -> int:
    """Smoothing window: ~1/15 of the run, so a 250-step run averages ~17 steps and 20 steps none."""
    return max(1, min(50, round(num_points / 15)))


def moving_average(values: list[float], window: int) -> list[float]:
    """Centred moving average (no lag, unlike an EMA); the window shrinks at both ends."""
    prefix = [0.0]
    for v in values:
        prefix.append(prefix[-1] + v)
    out = []
    for i in range(len(values)):
        lo, hi = max(0, i - (window - 1) // 2), min(len(values), i + window // 2 + 1)
        out.append((prefix[hi] - prefix[lo]) / (hi - lo))
    return out


def window_means(values: list[float], fraction: float = 0.1) -> tuple[float, float]:
    """Means of the first and of the last ``fraction`` of the points (at least one point each)."""
    k = max(1, math.ceil(len(values) * fraction))
    return sum(values[:k]) / k, sum(values[-k:]) / k


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


# ------------------------------------------------------------------------------- before/after eval


@dataclass
class EvalSection:
    """The held-out evaluation of eval.json as a table, or a note saying why there is none."""

    caption: str = ""  # what was evaluated on what
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""  # how to produce eval.json, why it could not be read, or what is missing from it
    paired: list[str] = field(default_factory=list)  # question-by-question counts and sign tests


EVAL_COUNTS = ("n", "num_samples")  # counts, not results: they go to the caption


def eval_command_hint(run_dir: Path) -> str:
    return f"r1lite eval --adapter {run_dir / 'adapter'} --baseline --output {run_dir / 'eval.json'}"


def _numeric(mapping: Any) -> dict[str, float]:
    """The finite numbers of a JSON object, in order; anything else (strings, lists, NaN) is left out."""
    if not isinstance(mapping, dict):
        return {}
    return {k: v for k, raw in mapping.items() if (v := _number(raw)) is not None}


def _interval(intervals: Any, key: str) -> tuple[float, float] | None:
    """An interval ``[low, high]`` for ``key`` from an ``intervals`` object, when eval.json has one."""
    bounds = intervals.get(key) if isinstance(intervals, dict) else None
    if isinstance(bounds, dict):
        bounds = [bounds.get("low"), bounds.get("high")]
    if isinstance(bounds, list | tuple) and len(bounds) == 2:
        low, high = _number(bounds[0]), _number(bounds[1])
        if low is not None and high is not None:
            return low, high
    return None


def _cell(format_figure, value: float, interval: tuple[float, float] | None) -> str:
    """A figure, followed by its interval when there is one, both formatted alike."""
    text = format_figure(value)
    return text if interval is None else f"{text} [{format_figure(interval[0])}, {format_figure(interval[1])}]"


def _eval_caption(data: dict[str, Any], counts: dict[str, float]) -> str:
    """One line naming the model, adapter, data and decoding, from the settings eval.json records."""
    settings = data.get("settings") if isinstance(data.get("settings"), dict) else {}
    parts = []
    if settings.get("model"):
        parts.append(f"base model {settings['model']}")
    if settings.get("adapter"):
        parts.append(f"adapter {settings['adapter']}")
    if settings.get("dataset"):
        split = settings.get("dataset_test_split")
        parts.append(f"{settings['dataset']}" + (f" [{split}]" if split else ""))
    if "n" in counts:
        replies = counts.get("num_samples", 1)
        parts.append(f"{counts['n']:g} questions × {replies:g} repl{'y' if replies == 1 else 'ies'}")
    if (temperature := _number(settings.get("temperature"))) is not None:
        parts.append("greedy decoding" if temperature == 0 else f"temperature {temperature:g}")
    if (limit := _number(settings.get("max_completion_length"))) is not None:
        parts.append(f"at most {limit:g} tokens a reply")
    return " · ".join(parts)


def eval_section(data: Any) -> EvalSection:
    """Before/after rows from the JSON of `r1lite eval` (figures formatted as eval.md formats them).

    With ``--baseline`` it holds ``base`` and ``adapter`` (each ``{"metrics": ...}``) and their ``difference``;
    without, one ``metrics`` object. Where a side also has ``intervals`` (``{metric: [low, high]}``, and
    ``difference_intervals`` beside ``difference``), each figure is followed by its interval."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    base, adapter = data.get("base"), data.get("adapter")
    if isinstance(base, dict) and isinstance(adapter, dict):
        sides = {"before (base)": base, "after (adapter)": adapter}
        note = ""
    elif "metrics" in data:
        sides = {"adapter": data}
        note = "eval.json has no baseline; add --baseline to compare with the base model."
    else:
        raise ValueError("neither base/adapter nor metrics in it")
    metrics = {name: _numeric(side.get("metrics")) for name, side in sides.items()}
    first, *others = metrics.values()
    keys = [k for k in first if k not in EVAL_COUNTS and all(k in m for m in others)]
    if not keys:
        raise ValueError("no metric figures in it")
    difference = _numeric(data.get("difference"))
    rows = []
    for key in keys:
        value = partial(eval_metrics.format_value, key)
        row = [key] + [_cell(value, metrics[name][key], _interval(sides[name].get("intervals"), key)) for name in sides]
        if len(sides) == 2:
            before, after = (metrics[name][key] for name in sides)
            change = partial(eval_metrics.format_difference, key)
            interval = _interval(data.get("difference_intervals"), key)
            row.append(_cell(change, difference.get(key, after - before), interval))
        rows.append(row)
    header = ["metric", *sides] + (["difference"] if len(sides) == 2 else [])
    caption = _eval_caption(data, {k: v for k, v in first.items() if k in EVAL_COUNTS})
    return EvalSection(caption, header, rows, note, _paired_lines(data.get("paired")))


def _paired_lines(paired: Any) -> list[str]:
    """eval.json's question-by-question comparison, where it is there and well formed."""
    if not isinstance(paired, dict):
        return []
    try:
        return eval_metrics.paired_lines(paired)
    except (KeyError, TypeError, ValueError):
        return []


def read_eval(run_dir: Path) -> EvalSection:
    """RUN_DIR/eval.json as a section; absent or unreadable, a one-line note instead (the report still gets
    written: the evaluation is optional and runs after training)."""
    path = run_dir / "eval.json"
    if not path.is_file():
        return EvalSection(note=f"No eval.json in the run directory; `{eval_command_hint(run_dir)}` writes one.")
    try:
        return eval_section(json.loads(path.read_text(errors="replace")))
    except (OSError, ValueError) as error:  # JSONDecodeError is a ValueError
        return EvalSection(note=f"eval.json could not be read ({error}); `{eval_command_hint(run_dir)}` rewrites it.")


# -------------------------------------------------------------------------------------- throughput


def _step_seconds(series: dict[str, Series]) -> tuple[str, Series] | None:
    """Seconds per optimizer step: TRL's ``step_time``, else r1lite's ``time/step``."""
    for key in ("step_time", "time/step"):
        if key in series:
            return key, series[key]
    return None


def tokens_per_second(series: dict[str, Series], seconds: Series) -> float | None:
    """Prompt plus completion tokens per second of step time, over the run.

    TRL's ``num_tokens`` is a running total of prompt and completion tokens; between two logged steps its growth is
    set against the step time of the steps in between (a logged step time is the mean over its logging window).
    Completion tokens alone would need the number of completions per step, which the metrics do not record."""
    if "num_tokens" not in series:
        return None
    time_at = dict(zip(*seconds, strict=True))
    steps, totals = series["num_tokens"]
    tokens = elapsed = 0.0
    for (prev_step, prev_total), (step, total) in pairwise(zip(steps, totals, strict=True)):
        if step in time_at and total >= prev_total:  # a total that drops (a restarted count) is skipped
            tokens += total - prev_total
            elapsed += time_at[step] * (step - prev_step)
    return tokens / elapsed if tokens > 0 and elapsed > 0 else None


def _percent(share: float) -> str:
    if share < 0.001:
        return "<0.1%"
    return f"{share:.0%}" if share >= 0.1 else f"{share:.1%}"


def phase_shares(series: dict[str, Series]) -> list[tuple[str, float]]:
    """Each ``time/<phase>`` as a share of the step (``time/step``, measured by the same clock, else
    ``step_time``), summed over the steps both were logged at; largest first, phases that took no time left out."""
    total_key = "time/step" if "time/step" in series else "step_time" if "step_time" in series else None
    if total_key is None:
        return []
    total_at = dict(zip(*series[total_key], strict=True))
    shares = []
    for key in sorted(k for k in series if k.startswith("time/") and k != "time/step"):
        common = [(value, total_at[step]) for step, value in zip(*series[key], strict=True) if step in total_at]
        spent, whole = sum(v for v, _ in common), sum(t for _, t in common)
        if spent > 0 and whole > 0:
            shares.append((key.removeprefix("time/"), spent / whole))
    return sorted(shares, key=lambda item: -item[1])


def throughput(series: dict[str, Series]) -> list[str]:
    """The parts of the throughput line; a part whose metrics were not logged is left out."""
    timed = _step_seconds(series)
    if timed is None:
        return []
    key, seconds = timed
    parts = [f"{statistics.median(seconds[1]):.3g} s/step (median of {len(seconds[1])} logged steps, {key})"]
    rate = tokens_per_second(series, seconds)
    if rate is not None:
        parts.append(f"{rate:.3g} tokens/s (prompt + completion tokens, TRL's num_tokens, per second of {key})")
    shares = phase_shares(series)
    if shares:
        parts.append("step time: " + ", ".join(f"{phase} {_percent(share)}" for phase, share in shares))
    return parts


# --------------------------------------------------------------------------------- tables, samples


def metrics_table(series: dict[str, Series]) -> list[list[str]]:
    """Rows of (metric, first 10%, last 10%, last value at step N)."""
    rewards = sorted(k for k in series if k.startswith("rewards/") and k.endswith("/mean"))
    keys = [k for k in TABLE_KEYS[:2] if k in series] + rewards
    keys += [k for k in TABLE_KEYS[2:] if k in series] + sorted(k for k in series if is_eval_key(k))
    rows = []
    for key in keys:
        steps, values = series[key]
        first, last = window_means(values)
        rows.append([key, fmt(first), fmt(last), f"{fmt(values[-1])} (step {steps[-1]:g})"])
    return rows


TABLE_HEADER = ["metric", "mean, first 10%", "mean, last 10%", "last value"]
POSITIONS = {"Start": 0.0, "Middle": 0.5, "End": 1.0}  # where in training, as a fraction of the logged steps


def pick_samples(
    samples: list[dict[str, Any]], per_step: int = 2, positions: tuple[str, ...] = ("Start", "Middle", "End")
) -> list[tuple[str, float, list[dict]]]:
    """Samples at the logged steps closest to the given positions in training (of ``POSITIONS``)."""
    by_step: dict[float, list[dict]] = {}
    for sample in samples:
        step = _number(sample.get("step"))
        if step is not None and isinstance(sample.get("completion"), str):
            by_step.setdefault(step, []).append(sample)
    if not by_step:
        return []
    steps = sorted(by_step)
    picked, seen = [], set()
    for label in positions:
        target = steps[0] + POSITIONS[label] * (steps[-1] - steps[0])
        step = min(steps, key=lambda s: (abs(s - target), s))
        if step not in seen:
            seen.add(step)
            picked.append((label, step, by_step[step][:per_step]))
    return picked


def read_samples(run_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """Completions with their rewards, as {step, question, gold, completion, rewards, reward}; and how many files
    or lines could not be read. TRL's completion log (one parquet file per logged step) or an older samples.jsonl."""
    files = sorted((run_dir / "completions").glob("completions_*.parquet"))
    if not files:
        legacy = run_dir / "samples.jsonl"
        if not legacy.is_file():
            return [], 0
        samples, bad_lines = read_jsonl(legacy)
        return samples, len(bad_lines)
    import pandas as pd

    samples, bad = [], 0
    for path in files:
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError):  # a file cut short by a kill
            bad += 1
            continue
        reward_columns = [c for c in frame.columns if c not in ("step", "prompt", "completion", "advantage", "gold")]
        for row in frame.to_dict("records"):
            rewards = {c: row[c] for c in reward_columns}
            samples.append(
                {
                    "step": row.get("step"),
                    "question": _last_content(row.get("prompt")),
                    "gold": row.get("gold", ""),
                    "completion": _last_content(row.get("completion")),
                    "rewards": rewards,
                    "reward": sum(v for v in rewards.values() if isinstance(v, float) and v == v),  # NaN: cannot verify
                }
            )
    return samples, bad


def _last_content(messages: Any) -> str:
    """The text of a conversational field as TRL logs it (a sequence of messages; an array after parquet)."""
    try:
        return completion_text(messages if isinstance(messages, str) else list(messages))
    except TypeError:  # not messages at all: nothing to show
        return ""


def reward_text(sample: dict[str, Any]) -> str:
    total = fmt(_number(sample.get("reward")))
    rewards = sample.get("rewards") if isinstance(sample.get("rewards"), dict) else {}
    parts = [f"{name} {fmt(_number(v))}" for name, v in rewards.items()]
    return f"{total} ({', '.join(parts)})" if parts else total
