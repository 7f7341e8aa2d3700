"""`r1lite report RUN_DIR`: plots and a readable account of a training run.

Reads ``metrics.jsonl`` (TRL's metric keys, one record per logged step; ``eval/`` or ``eval_`` keys
are evaluation records), ``config.yaml``, when present the completions TRL logged
(``completions/completions_<step>.parquet``; older runs: ``samples.jsonl``) and the held-out evaluation of
``r1lite eval --baseline --output RUN_DIR/eval.json``; writes into ``RUN_DIR/report/`` one PNG per group of
metrics, ``report.md`` (links the PNGs) and ``report.html`` (self-contained: PNGs embedded, so it can be
mailed or attached to an issue).

Both documents answer "did it work?" first: the before/after evaluation, the throughput, the reward, strict-format
and length curves and samples from early and late in training; then the metrics table and every plot; the
config last (folded in the HTML).
"""

from __future__ import annotations

import base64
import html
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from r1lite.errors import ReportError
from r1lite.report_data import (
    TABLE_HEADER,
    EvalSection,
    Series,
    default_window,
    fmt,
    is_eval_key,
    load_metrics,
    metrics_table,
    moving_average,
    pick_samples,
    read_eval,
    read_samples,
    reward_text,
    throughput,
)

logger = logging.getLogger(__name__)

SCHEDULES = {"learning_rate", "num_tokens"}  # set by the trainer, not noisy: drawn as they are


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


# ------------------------------------------------------------------------------------------- plots


def plan_plots(series: dict[str, Series], smooth: int | None) -> list[Plot]:
    """Group the logged metrics into figures; a group with nothing logged is left out."""
    train_points = [len(s[0]) for k, s in series.items() if not is_eval_key(k)]
    window = smooth or default_window(max(train_points, default=1))

    def panels(keys):
        return [Panel(k, series[k], smooth=k not in SCHEDULES) for k in keys if k in series]

    reward_keys = ["reward"] + sorted(k for k in series if k.startswith("rewards/") and k.endswith("/mean"))
    length = panels(["completions/mean_length"])
    if length and "completions/min_length" in series and "completions/max_length" in series:
        length[0].band = (series["completions/min_length"], series["completions/max_length"])
    eval_keys = sorted(k for k in series if is_eval_key(k))
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


def strict_format_key(series: dict[str, Series]) -> str | None:
    """The reward that checks the strict answer format (the recipe's goal in a word), found by its name."""
    strict = sorted(k for k in series if k.startswith("rewards/") and k.endswith("/mean") and "strict" in k)
    return next((k for k in strict if "format" in k), strict[0] if strict else None)


def plan_headline(series: dict[str, Series], smooth: int | None) -> Plot | None:
    """The three curves that say whether training did anything: total reward, strict format, reply length.

    They also appear among the grouped plots further down; here they sit side by side at the top of the report."""
    keys = ["reward", strict_format_key(series), "completions/mean_length"]
    panels = [Panel(k, series[k]) for k in keys if k in series]
    if not panels:
        return None
    length = panels[-1]
    if length.key == "completions/mean_length" and {"completions/min_length", "completions/max_length"} <= set(series):
        length.band = (series["completions/min_length"], series["completions/max_length"])
    train_points = [len(s[0]) for k, s in series.items() if not is_eval_key(k)]
    window = smooth or default_window(max(train_points, default=1))
    return Plot("headline", "Reward, strict format and completion length over training", panels, window)


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


# ---------------------------------------------------------------------------------- markdown, html


def _fence(text: str, lang: str = "") -> str:
    # A fence longer than any backtick run inside, so a completion cannot close it early.
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


@dataclass
class Content:
    """Everything the report says, in reading order: the answer to "did it work?" first, the config last."""

    name: str
    summary: str  # one line: steps and run directory
    notes: list[str]  # what could not be read
    evaluation: EvalSection
    throughput: list[str]
    headline: tuple[str, Path] | None  # (title, png)
    samples: list[tuple[str, float, list[dict]]]  # early and late in training
    table: list[list[str]]
    totals: list[str]  # TRL's end-of-training numbers
    plots: list[tuple[str, Path]]  # (title, png)
    config_text: str


EVAL_TITLE = "Held-out evaluation: before and after training"
SAMPLES_TITLE = "Sample completions early and late in training"
NO_SAMPLES = "No completion log in the run directory (TRL's log_completions writes completions/)."


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _md_eval(section: EvalSection) -> list[str]:
    lines = [f"## {EVAL_TITLE}", ""]
    if section.caption:
        lines += [section.caption, ""]
    if section.rows:
        lines += _md_table(section.header, section.rows) + [""]
    if section.paired:
        lines += ["Question by question:", ""] + [f"- {line}" for line in section.paired] + [""]
    return lines + ([section.note, ""] if section.note else [])


def _md_samples(picked: list[tuple[str, float, list[dict]]]) -> list[str]:
    lines = [f"## {SAMPLES_TITLE}", ""]
    if not picked:
        return lines + [NO_SAMPLES, ""]
    for label, step, samples in picked:
        lines += [f"### {label} of training (step {step:g})", ""]
        for s in samples:
            # Escaped so that a tag in a question shows as text rather than vanishing as HTML.
            question = html.escape(str(s.get("question", "")), quote=False)
            lines += [
                f"**Question:** {question}",
                "",
                f"**Gold:** `{s.get('gold', '')}` · **Reward:** {reward_text(s)}",
                "",
                _fence(s["completion"]),
                "",
            ]
    return lines


def to_markdown(c: Content) -> str:
    lines = [f"# Training report: {c.name}", "", c.summary, ""]
    lines += [f"- {note}" for note in c.notes] + ([""] if c.notes else [])
    lines += _md_eval(c.evaluation)
    if c.throughput:
        lines += ["**Throughput:** " + " · ".join(c.throughput), ""]
    if c.headline:
        lines += ["## Training curves", "", f"![{c.headline[0]}]({c.headline[1].name})", ""]
    lines += _md_samples(c.samples)
    lines += ["## Final metrics", ""] + _md_table(TABLE_HEADER, c.table) + [""]
    lines += [f"- {total}" for total in c.totals] + ([""] if c.totals else [])
    lines += ["## Plots", ""]
    for title, png in c.plots:
        lines += [f"### {title}", "", f"![{title}]({png.name})", ""]
    lines += ["## Config", "", _fence(c.config_text, "yaml"), ""]
    return "\n".join(lines)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:4px 10px}
td:not(:first-child){text-align:right}th{background:#f3f5f7}
pre{background:#f6f8fa;padding:10px;white-space:pre-wrap;border-radius:4px}img{max-width:100%}
.sample{border-left:3px solid #4a90d9;padding-left:12px;margin:1em 0}.note,.caption{color:#555}
details{margin:1em 0}summary{cursor:pointer;font-weight:bold}"""


def _html_table(header: list[str], rows: list[list[str]], table_id: str) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table id='{table_id}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_img(title: str, png: Path) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return f"<img alt='{html.escape(title)}' src='data:image/png;base64,{data}'>"


def _html_eval(section: EvalSection) -> str:
    e = html.escape
    parts = [f"<section id='evaluation'><h2>{e(EVAL_TITLE)}</h2>"]
    if section.caption:
        parts.append(f"<p class='caption'>{e(section.caption)}</p>")
    if section.rows:
        parts.append(_html_table(section.header, section.rows, "eval-table"))
    if section.paired:
        items = "".join(f"<li>{e(line)}</li>" for line in section.paired)
        parts.append(f"<p>Question by question:</p><ul class='paired'>{items}</ul>")
    if section.note:
        # The note's `command` reads as code, as in the markdown.
        note = re.sub(r"`([^`]+)`", r"<code>\1</code>", e(section.note))
        parts.append(f"<p class='note'>{note}</p>")
    return "".join(parts) + "</section>"


def _html_samples(picked: list[tuple[str, float, list[dict]]]) -> str:
    e = html.escape
    parts = [f"<section id='samples'><h2>{e(SAMPLES_TITLE)}</h2>"]
    if not picked:
        parts.append(f"<p class='note'>{e(NO_SAMPLES)}</p>")
    for label, step, samples in picked:
        parts.append(f"<h3>{e(label)} of training (step {step:g})</h3>")
        for s in samples:
            parts.append(
                f"<div class='sample'><p><b>Question:</b> {e(str(s.get('question', '')))}</p>"
                f"<p><b>Gold:</b> <code>{e(str(s.get('gold', '')))}</code> · <b>Reward:</b> "
                f"{e(reward_text(s))}</p><pre>{e(s['completion'])}</pre></div>"
            )
    return "\n".join(parts) + "</section>"


def to_html(c: Content) -> str:
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>r1lite report: {e(c.name)}</title>",
        f"<style>{CSS}</style></head><body><h1>Training report: {e(c.name)}</h1>",
        f"<p id='summary'>{e(c.summary)}</p>",
    ]
    if c.notes:
        parts.append("<ul class='note'>" + "".join(f"<li>{e(note)}</li>" for note in c.notes) + "</ul>")
    parts.append(_html_eval(c.evaluation))
    if c.throughput:
        parts.append(f"<p id='throughput'><b>Throughput:</b> {e(' · '.join(c.throughput))}</p>")
    if c.headline:
        parts.append(f"<section id='headline'><h2>Training curves</h2>{_html_img(*c.headline)}</section>")
    parts.append(_html_samples(c.samples))
    parts.append(f"<section id='metrics'><h2>Final metrics</h2>{_html_table(TABLE_HEADER, c.table, 'metrics-table')}")
    if c.totals:
        parts.append("<ul>" + "".join(f"<li>{e(total)}</li>" for total in c.totals) + "</ul>")
    parts.append("</section><section id='plots'><h2>Plots</h2>")
    parts += [f"<h3>{e(title)}</h3>{_html_img(title, png)}" for title, png in c.plots]
    parts += [
        "</section><section id='config'><h2>Config</h2>",
        # Closed: the settings matter when something looks wrong, not on a first read.
        f"<details><summary>config.yaml</summary><pre>{e(c.config_text)}</pre></details></section>",
        "</body></html>",
    ]
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
    (``headline``, ``rewards``, ``completion_length``, ...) plus ``markdown`` and ``html``.
    """
    if smooth is not None and smooth < 1:
        raise ReportError(f"smooth must be a window of at least 1 step (1 = no smoothing), got {smooth}")
    run_dir = Path(run_dir).expanduser()
    series, summary, bad = load_metrics(run_dir)
    config_text, config = _read_config(run_dir)
    samples, bad_samples = read_samples(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)

    written: dict[str, Path] = {}
    headline = plan_headline(series, smooth)
    if headline is not None:
        written[headline.name] = draw(headline, out / f"{headline.name}.png")
    plots = []
    for plot in plan_plots(series, smooth):
        written[plot.name] = draw(plot, out / f"{plot.name}.png")
        plots.append((plot.title, written[plot.name]))

    steps = sorted({s for xs, _ in series.values() for s in xs})
    notes = []
    if bad:
        notes.append(f"skipped unreadable line(s) of metrics.jsonl: {', '.join(map(str, bad))} (cut by a stopped run)")
    if bad_samples:
        notes.append(f"skipped {bad_samples} unreadable completion log file(s)")
    content = Content(
        name=str(config.get("run_name") or run_dir.resolve().name),
        summary=f"{len(steps)} logged steps, step {steps[0]:g} to {steps[-1]:g} · run directory: {run_dir}",
        notes=notes,
        evaluation=read_eval(run_dir),
        throughput=throughput(series),
        headline=(headline.title, written[headline.name]) if headline else None,
        samples=pick_samples(samples, positions=("Start", "End")),
        table=metrics_table(series),
        totals=[f"{key}: {fmt(value)}" for key, value in summary.items()],
        plots=plots,
        config_text=config_text,
    )
    written["markdown"] = out / "report.md"
    written["markdown"].write_text(to_markdown(content))
    written["html"] = out / "report.html"
    written["html"].write_text(to_html(content))
    return written
