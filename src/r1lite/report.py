"""`r1lite report RUN_DIR`: plots and a readable account of a training run.

Reads ``metrics.jsonl`` (TRL's metric keys, one record per logged step; ``eval/`` or ``eval_`` keys
are evaluation records), ``config.yaml`` and, when present, the completions TRL logged
(``completions/completions_<step>.parquet``; older runs: ``samples.jsonl``); writes into
``RUN_DIR/report/`` one PNG per group of metrics, ``report.md`` (links the PNGs) and ``report.html``
(self-contained: PNGs embedded, so it can be mailed or attached to an issue).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from r1lite.errors import ReportError
from r1lite.rewards.base import completion_text

logger = logging.getLogger(__name__)

# TRL's end-of-training record: whole-run numbers, not series.
SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss", "total_flos")
NOT_PLOTTED = {"step", "epoch", *SUMMARY_KEYS}
SCHEDULES = {"learning_rate", "num_tokens"}  # set by the trainer, not noisy: drawn as they are
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


@dataclass
class Panel:
    key: str
    series: Series
    band: tuple[Series, Series] | None = None  # (low, high), e.g. min/max completion length
    smooth: bool = True  # False for schedules: averaging would blur the warm-up peak that is the point


@dataclass
class Plot:
    name: str  # file stem
    title: str
    panels: list[Panel]
    window: int


# ----------------------------------------------------------------------------------------- reading


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


def _load_metrics(run_dir: Path) -> tuple[dict[str, Series], dict[str, float], list[int]]:
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


# ------------------------------------------------------------------------------------------- plots


def _is_eval(key: str) -> bool:
    return key.startswith(("eval/", "eval_")) and not key.endswith(("_runtime", "_per_second"))


def plan_plots(series: dict[str, Series], smooth: int | None) -> list[Plot]:
    """Group the logged metrics into figures; a group with nothing logged is left out."""
    train_points = [len(s[0]) for k, s in series.items() if not _is_eval(k)]
    window = smooth or default_window(max(train_points, default=1))

    def panels(keys):
        return [Panel(k, series[k], smooth=k not in SCHEDULES) for k in keys if k in series]

    reward_keys = ["reward"] + sorted(k for k in series if k.startswith("rewards/") and k.endswith("/mean"))
    length = panels(["completions/mean_length"])
    if length and "completions/min_length" in series and "completions/max_length" in series:
        length[0].band = (series["completions/min_length"], series["completions/max_length"])
    eval_keys = sorted(k for k in series if _is_eval(k))
    time_keys = sorted(k for k in series if k.startswith("time/") or k == "step_time")
    plots = [
        Plot("rewards", "Rewards (mean over completions)", panels(reward_keys), window),
        Plot("completion_length", "Completion length (tokens)", length + panels(["completions/clipped_ratio"]), window),
        Plot(
            "reward_signal",
            "Learning signal: groups whose rewards all tie",
            panels(["frac_reward_zero_std", "reward_std"]),
            window,
        ),
        Plot("kl_entropy", "KL to the reference and policy entropy", panels(["kl", "entropy"]), window),
        Plot("optimization", "Optimisation", panels(["learning_rate", "loss", "grad_norm"]), window),
        Plot(
            "eval",
            "Evaluation",
            panels(eval_keys),
            smooth or default_window(max((len(series[k][0]) for k in eval_keys), default=1)),
        ),
        Plot("time", "Time per step (seconds)", panels(time_keys), window),
    ]
    shown = {p.key for plot in plots for p in plot.panels}
    shown |= {"completions/min_length", "completions/max_length"}
    # Keys this module does not know (TRL adds some each release) still get drawn, up to a readable dozen.
    others = sorted(k for k in series if k not in shown and not k.endswith("/std"))
    plots.append(Plot("other", "Other logged metrics", panels(others[:12]), window))
    return [plot for plot in plots if plot.panels]


def _ylabel(key: str) -> str:
    if key.startswith("rewards/") or key == "reward":
        return "reward"
    return "tokens" if key.endswith("_length") else key.split("/")[-1]


def draw(plot: Plot, path: Path) -> Path:
    """One PNG: a grid of panels, raw points faint, the moving average bold."""
    cols = min(3, len(plot.panels))
    rows = math.ceil(len(plot.panels) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.4 * rows + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(plot.title, fontsize=13, fontweight="bold")
    for i, panel in enumerate(plot.panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        steps, values = panel.series
        if panel.band is not None:
            (low_x, low), (high_x, high) = panel.band
            if low_x == high_x == steps:
                ax.fill_between(steps, low, high, color="tab:blue", alpha=0.12, label="min–max")
        smooth = panel.smooth and plot.window > 1 and len(values) > 2
        ax.plot(
            steps,
            values,
            color="tab:blue",
            alpha=0.35 if smooth else 1.0,
            lw=0.8,
            marker="." if len(values) < 60 else None,
            ms=4,
            label="raw",
        )
        if smooth:
            ax.plot(
                steps,
                moving_average(values, plot.window),
                color="tab:blue",
                lw=2,
                label=f"moving average ({plot.window})",
            )
        ax.set_title(panel.key, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(_ylabel(panel.key))
        ax.grid(alpha=0.3)
        if smooth or panel.band is not None:
            ax.legend(fontsize=8, loc="best")
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------------- tables, samples


def metrics_table(series: dict[str, Series]) -> list[list[str]]:
    """Rows of (metric, first 10%, last 10%, last value at step N)."""
    rewards = sorted(k for k in series if k.startswith("rewards/") and k.endswith("/mean"))
    keys = [k for k in TABLE_KEYS[:2] if k in series] + rewards
    keys += [k for k in TABLE_KEYS[2:] if k in series] + sorted(k for k in series if _is_eval(k))
    rows = []
    for key in keys:
        steps, values = series[key]
        first, last = window_means(values)
        rows.append([key, fmt(first), fmt(last), f"{fmt(values[-1])} (step {steps[-1]:g})"])
    return rows


TABLE_HEADER = ["metric", "mean, first 10%", "mean, last 10%", "last value"]


def pick_samples(samples: list[dict[str, Any]], per_step: int = 2) -> list[tuple[str, float, list[dict]]]:
    """Samples at the logged steps closest to the start, middle and end of training."""
    by_step: dict[float, list[dict]] = {}
    for sample in samples:
        step = _number(sample.get("step"))
        if step is not None and isinstance(sample.get("completion"), str):
            by_step.setdefault(step, []).append(sample)
    if not by_step:
        return []
    steps = sorted(by_step)
    targets = [("Start", steps[0]), ("Middle", (steps[0] + steps[-1]) / 2), ("End", steps[-1])]
    picked, seen = [], set()
    for label, target in targets:
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


def _reward_text(sample: dict[str, Any]) -> str:
    total = fmt(_number(sample.get("reward")))
    rewards = sample.get("rewards") if isinstance(sample.get("rewards"), dict) else {}
    parts = [f"{name} {fmt(_number(v))}" for name, v in rewards.items()]
    return f"{total} ({', '.join(parts)})" if parts else total


# ---------------------------------------------------------------------------------- markdown, html


def _fence(text: str, lang: str = "") -> str:
    # A fence longer than any backtick run inside, so a completion cannot close it early.
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


@dataclass
class Content:
    name: str
    run_dir: Path
    notes: list[str]
    config_text: str
    table: list[list[str]]
    plots: list[tuple[str, Path]]  # (title, png)
    samples: list[tuple[str, float, list[dict]]]


def to_markdown(c: Content) -> str:
    lines = [f"# Training report: {c.name}", "", f"Run directory: `{c.run_dir}`", ""]
    lines += [f"- {note}" for note in c.notes] + ["", "## Config", "", _fence(c.config_text, "yaml"), ""]
    lines += ["## Final metrics", "", "| " + " | ".join(TABLE_HEADER) + " |", "|---|---:|---:|---:|"]
    lines += ["| " + " | ".join(row) + " |" for row in c.table]
    lines += ["", "## Plots", ""]
    for title, png in c.plots:
        lines += [f"### {title}", "", f"![{title}]({png.name})", ""]
    lines += ["## Sample completions", ""]
    if not c.samples:
        lines += ["No completion log in the run directory (TRL's log_completions writes completions/).", ""]
    for label, step, samples in c.samples:
        lines += [f"### {label} of training (step {step:g})", ""]
        for s in samples:
            # Escaped so that a tag in a question shows as text rather than vanishing as HTML.
            question = html.escape(str(s.get("question", "")), quote=False)
            lines += [
                f"**Question:** {question}",
                "",
                f"**Gold:** `{s.get('gold', '')}` · **Reward:** {_reward_text(s)}",
                "",
                _fence(s["completion"]),
                "",
            ]
    return "\n".join(lines)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px}
td:not(:first-child){text-align:right}
pre{background:#f6f8fa;padding:10px;white-space:pre-wrap;border-radius:4px}img{max-width:100%}
.sample{border-left:3px solid #4a90d9;padding-left:12px;margin:1em 0}"""


def to_html(c: Content) -> str:
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>r1lite report: {e(c.name)}</title>",
        f"<style>{CSS}</style></head><body><h1>Training report: {e(c.name)}</h1>",
        f"<p>Run directory: <code>{e(str(c.run_dir))}</code></p><ul>",
    ]
    parts += [f"<li>{e(note)}</li>" for note in c.notes]
    header = "".join(f"<th>{e(h)}</th>" for h in TABLE_HEADER)
    parts += [
        "</ul><h2>Config</h2><details open><summary>config.yaml</summary>",
        f"<pre>{e(c.config_text)}</pre></details>",
        f"<h2>Final metrics</h2><table><tr>{header}</tr>",
    ]
    parts += ["<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>" for row in c.table]
    parts += ["</table><h2>Plots</h2>"]
    for title, png in c.plots:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f"<h3>{e(title)}</h3><img alt='{e(title)}' src='data:image/png;base64,{data}'>")
    parts.append("<h2>Sample completions</h2>")
    for label, step, samples in c.samples:
        parts.append(f"<h3>{e(label)} of training (step {step:g})</h3>")
        for s in samples:
            parts.append(
                f"<div class='sample'><p><b>Question:</b> {e(str(s.get('question', '')))}</p>"
                f"<p><b>Gold:</b> <code>{e(str(s.get('gold', '')))}</code> · <b>Reward:</b> "
                f"{e(_reward_text(s))}</p><pre>{e(s['completion'])}</pre></div>"
            )
    parts.append("</body></html>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------- entry point


def _read_config(run_dir: Path) -> tuple[str, dict[str, Any]]:
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return "# no config.yaml in the run directory", {}
    text = path.read_text()
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        parsed = None
    return text, parsed if isinstance(parsed, dict) else {}


def write_report(run_dir: str | Path, smooth: int | None = None) -> dict[str, Path]:
    """Write the plots, report.md and report.html into RUN_DIR/report/; return {name: path}.

    ``smooth`` is the moving-average window in logged points (1: raw only); by default about 1/15 of
    the run for training metrics and of the evaluation points for eval metrics. Names are the PNG stems
    (``rewards``, ``completion_length``, ...) plus ``markdown`` and ``html``.
    """
    if smooth is not None and smooth < 1:
        raise ReportError(f"smooth must be a window of at least 1 step (1 = no smoothing), got {smooth}")
    run_dir = Path(run_dir).expanduser()
    series, summary, bad = _load_metrics(run_dir)
    config_text, config = _read_config(run_dir)
    samples, bad_samples = read_samples(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)

    written: dict[str, Path] = {}
    plots = []
    for plot in plan_plots(series, smooth):
        written[plot.name] = draw(plot, out / f"{plot.name}.png")
        plots.append((plot.title, written[plot.name]))

    steps = sorted({s for xs, _ in series.values() for s in xs})
    notes = [f"{len(steps)} logged steps, step {steps[0]:g} to {steps[-1]:g}"]
    notes += [f"{key}: {fmt(value)}" for key, value in summary.items()]
    if bad:
        notes.append(f"skipped unreadable line(s) of metrics.jsonl: {', '.join(map(str, bad))} (cut by a stopped run)")
    if bad_samples:
        notes.append(f"skipped {bad_samples} unreadable completion log file(s)")
    name = str(config.get("run_name") or run_dir.resolve().name)
    content = Content(name, run_dir, notes, config_text, metrics_table(series), plots, pick_samples(samples))
    written["markdown"] = out / "report.md"
    written["markdown"].write_text(to_markdown(content))
    written["html"] = out / "report.html"
    written["html"].write_text(to_html(content))
    return written
