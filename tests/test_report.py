"""`r1lite report`: plots, report.md and a self-contained report.html from a synthetic run directory."""

import json
import re

import pytest
import yaml

from r1lite.errors import ReportError
from r1lite.report import _fence, plan_headline, strict_format_key, write_report
from r1lite.report_data import (
    default_window,
    eval_section,
    moving_average,
    phase_shares,
    read_jsonl,
    throughput,
    tokens_per_second,
    window_means,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS = 30


def train_record(step: int) -> dict:
    progress = step / STEPS
    return {
        "step": step,
        "epoch": step / 300,
        "loss": 0.001 * step,
        "grad_norm": 0.2 + 0.01 * (step % 3),
        "learning_rate": 5e-6 * (1 - progress),
        "reward": round(0.2 + 0.05 * step, 4),
        "reward_std": 0.3,
        "rewards/xmlcount_reward/mean": 0.1 + 0.01 * step,
        "rewards/xmlcount_reward/std": 0.05,
        "rewards/correctness_reward/mean": 2.0 * progress if step % 2 else None,
        "rewards/correctness_reward/std": 0.1,
        "completions/mean_length": 100 + 2 * step,
        "completions/min_length": 50 + step,
        "completions/max_length": 200.0,
        "completions/clipped_ratio": 0.5 * (1 - progress),
        "frac_reward_zero_std": 1 - progress,
        "kl": 1e-4 * step,
        "entropy": 1.2 - 0.01 * step,
        "step_time": 12.3,
        "num_tokens": 1000.0 * step,  # running total: 1000 prompt + completion tokens a step
        "time/generation": 6.0,
        "time/rewards": 0.0,
        "time/backward": 4.0,
        "time/optimizer": 0.05,
        "time/step": 12.5,
    }


def sample(step: int, k: int) -> dict:
    reply = f"<reasoning>\nthought at step {step} #{k}\n</reasoning>\n<answer>\n{step + k}\n</answer>\n"
    return {
        "step": step,
        "question": f"What is {step} + {k}?",
        "gold": str(step + k),
        "completion": reply,
        "rewards": {"xmlcount_reward": 0.5, "correctness_reward": 2.0},
        "reward": 2.5,
    }


# The structure `r1lite eval --baseline --output RUN_DIR/eval.json` writes (settings shortened).
EVAL_JSON = {
    "settings": {
        "model": "embedded:smollm2-135m-instruct",
        "dataset": "gsm8k",
        "dataset_test_split": "test",
        "temperature": 0.0,
        "max_completion_length": 256,
        "adapter": "runs/synthetic/adapter",
        "baseline": True,
    },
    "backend": "hf",
    "base": {
        "metrics": {
            "n": 100,
            "num_samples": 1,
            "accuracy_strict": 0.0,
            "accuracy_lenient": 0.02,
            "format_strict": 0.0,
            "format_soft": 0.0,
            "mean_completion_tokens": 185.12,
            "clipped_ratio": 0.28,
        },
        "seconds": 98.3,
        "records": "runs/synthetic/eval.base.jsonl",
    },
    "adapter": {
        "metrics": {
            "n": 100,
            "num_samples": 1,
            "accuracy_strict": 0.02,
            "accuracy_lenient": 0.02,
            "format_strict": 0.9,
            "format_soft": 0.9,
            "mean_completion_tokens": 101.0,
            "clipped_ratio": 0.1,
        },
        "seconds": 84.3,
        "records": "runs/synthetic/eval.jsonl",
    },
    "difference": {
        "n": 0,
        "num_samples": 0,
        "accuracy_strict": 0.02,
        "accuracy_lenient": 0.0,
        "format_strict": 0.9,
        "format_soft": 0.9,
        "mean_completion_tokens": -84.12,
        "clipped_ratio": -0.18000000000000002,
    },
    "table": "runs/synthetic/eval.md",
}


def make_run_dir(path, with_eval: bool = False):
    """A finished run's directory: metrics.jsonl (with a line cut short), config.yaml, samples.jsonl and, if asked,
    eval.json."""
    lines = [json.dumps(train_record(step)) for step in range(1, STEPS + 1)]
    for step in (10, 20, 30):
        record = {"step": step, "eval/accuracy_strict": step / 100, "eval/format_strict": 0.4}
        lines.append(json.dumps(record))
    lines.append(json.dumps({"step": STEPS, "train_runtime": 370.5, "train_loss": 0.01}))
    lines.append('{"step": 31, "loss": 0.0')  # a run killed mid-write
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    config = {
        "model": "embedded:smollm2-135m-instruct",
        "learning_rate": 5e-6,
        "max_steps": STEPS,
        "run_name": "synthetic-run",
    }
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    samples = [sample(step, k) for step in (1, 10, 20, 30) for k in (0, 1)]
    (path / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    if with_eval:
        (path / "eval.json").write_text(json.dumps(EVAL_JSON, indent=2))
    return path


@pytest.fixture
def run_dir(tmp_path):
    return make_run_dir(tmp_path)


def test_report_writes_plots_markdown_and_html(run_dir):
    written = write_report(run_dir)
    out = run_dir / "report"
    assert {p.parent for p in written.values()} == {out}
    expected = {
        "headline",
        "rewards",
        "completion_length",
        "reward_signal",
        "kl_entropy",
        "optimization",
        "eval",
        "time",
    }
    assert expected <= set(written)
    for name in expected:
        data = written[name].read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name
    assert written["markdown"] == out / "report.md" and written["html"] == out / "report.html"


def test_markdown_content(run_dir):
    md = write_report(run_dir)["markdown"].read_text()
    assert "# Training report: synthetic-run" in md
    assert f"30 logged steps, step 1 to 30 · run directory: {run_dir}" in md
    assert "| reward | 0.3 | 1.65 | 1.7 (step 30) |" in md  # first/last 10% = 3 steps each
    assert "eval/accuracy_strict" in md and "train_runtime: 370.5" in md
    assert "run_name: synthetic-run" in md and "```yaml" in md
    assert "](headline.png)" in md and "](rewards.png)" in md and "](eval.png)" in md
    assert "skipped unreadable line(s) of metrics.jsonl: 35 (cut by a stopped run)" in md
    # Early and late in training: steps 1 and 30, two samples each; not the steps between.
    for step in (1, 30):
        assert f"(step {step})" in md and f"thought at step {step} #0" in md and f"thought at step {step} #1" in md
    assert "thought at step 10" not in md and "thought at step 20" not in md


def test_markdown_leads_with_the_outcome_and_ends_with_the_config(run_dir):
    md = write_report(make_run_dir(run_dir, with_eval=True))["markdown"].read_text()
    order = [
        "# Training report",
        "## Held-out evaluation: before and after training",
        "**Throughput:**",
        "](headline.png)",
        "## Sample completions early and late in training",
        "## Final metrics",
        "## Plots",
        "](rewards.png)",
        "## Config",
        "run_name: synthetic-run",
    ]
    positions = [md.index(marker) for marker in order]
    assert positions == sorted(positions), dict(zip(order, positions, strict=True))


def test_before_after_table_from_eval_json(run_dir):
    md = write_report(make_run_dir(run_dir, with_eval=True))["markdown"].read_text()
    # The figures as `r1lite eval` writes them to eval.md; n and num_samples go to the caption.
    assert "| metric | before (base) | after (adapter) | difference |" in md
    assert "| accuracy_strict | 0.0% | 2.0% | +2.0 pp |" in md
    assert "| format_strict | 0.0% | 90.0% | +90.0 pp |" in md
    assert "| mean_completion_tokens | 185.1 | 101.0 | -84.1 |" in md
    assert "| clipped_ratio | 28.0% | 10.0% | -18.0 pp |" in md
    assert "| n |" not in md
    assert "adapter runs/synthetic/adapter" in md and "100 questions × 1 reply · greedy decoding" in md


def test_eval_figures_carry_their_intervals():
    data = json.loads(json.dumps(EVAL_JSON))
    data["base"]["intervals"] = {"accuracy_strict": [0.0, 0.037]}
    data["adapter"]["intervals"] = {"accuracy_strict": {"low": 0.0055, "high": 0.07}}
    data["difference_intervals"] = {"accuracy_strict": [-0.01, 0.05]}
    rows = {row[0]: row for row in eval_section(data).rows}
    assert rows["accuracy_strict"] == [
        "accuracy_strict",
        "0.0% [0.0%, 3.7%]",
        "2.0% [0.5%, 7.0%]",
        "+2.0 pp [-1.0 pp, +5.0 pp]",
    ]
    assert rows["format_strict"] == ["format_strict", "0.0%", "90.0%", "+90.0 pp"]  # no interval given


def test_eval_without_baseline_is_one_column():
    single = {"settings": EVAL_JSON["settings"], **EVAL_JSON["adapter"]}
    section = eval_section(single)
    assert section.header == ["metric", "adapter"]
    assert ["accuracy_strict", "2.0%"] in section.rows and "--baseline" in section.note


def test_missing_eval_json_says_how_to_write_one(run_dir):
    md = write_report(run_dir)["markdown"].read_text()
    hint = f"r1lite eval --adapter {run_dir / 'adapter'} --baseline --output {run_dir / 'eval.json'}"
    assert f"No eval.json in the run directory; `{hint}` writes one." in md
    page = (run_dir / "report" / "report.html").read_text()
    assert f"No eval.json in the run directory; <code>{hint}</code> writes one." in page


@pytest.mark.parametrize(
    "text",
    [
        '{"base": {"metrics": {"accuracy_strict": 0.1',  # cut short
        "[1, 2]",
        '{"backend": "hf"}',
        '{"base": {"metrics": {"accuracy_strict": "high"}}, "adapter": {"metrics": {"accuracy_strict": 0.2}}}',
        '{"base": {"metrics": {"accuracy_strict": NaN}}, "adapter": {"metrics": {"accuracy_strict": 0.2}}}',
    ],
)
def test_unreadable_eval_json_is_a_note_not_a_crash(run_dir, text):
    (run_dir / "eval.json").write_text(text)
    written = write_report(run_dir)
    md, page = written["markdown"].read_text(), written["html"].read_text()
    assert "eval.json could not be read (" in md and "eval.json could not be read (" in page
    assert "| metric | before (base)" not in md and not re.search(r"\bnan\b", md, re.IGNORECASE)


def test_throughput_line(run_dir):
    md = write_report(run_dir)["markdown"].read_text()
    line = next(line for line in md.splitlines() if line.startswith("**Throughput:**"))
    assert "12.3 s/step (median of 30 logged steps, step_time)" in line
    # 1000 tokens a step over 12.3 s of step_time per step.
    assert "81.3 tokens/s (prompt + completion tokens, TRL's num_tokens, per second of step_time)" in line
    # Phases against time/step (12.5 s): generation 6 s, backward 4 s, optimizer 0.05 s; rewards took no time.
    assert line.endswith("step time: generation 48%, backward 32%, optimizer 0.4%")


def test_throughput_leaves_out_what_was_not_logged():
    steps = [1.0, 2.0, 3.0]
    assert throughput({}) == []
    assert throughput({"step_time": (steps, [2.0, 4.0, 3.0])}) == ["3 s/step (median of 3 logged steps, step_time)"]
    # No step time to divide by: no tokens/s and no shares, rather than NaN.
    assert tokens_per_second({"num_tokens": (steps, [10.0, 20.0, 30.0])}, ([], [])) is None
    assert phase_shares({"time/generation": (steps, [1.0, 1.0, 1.0])}) == []
    # A running total that drops (a resumed run) is not counted as negative tokens.
    series = {"num_tokens": (steps, [100.0, 50.0, 150.0]), "step_time": (steps, [1.0, 1.0, 2.0])}
    assert tokens_per_second(series, series["step_time"]) == 50.0
    idle = {
        "step_time": (steps, [0.0, 0.0, 0.0]),
        "num_tokens": (steps, [0.0] * 3),
        "time/generation": (steps, [0.0] * 3),
    }
    assert throughput(idle) == ["0 s/step (median of 3 logged steps, step_time)"]


def test_headline_shows_reward_strict_format_and_length():
    steps = [1.0, 2.0]
    series = {
        key: (steps, [1.0, 2.0])
        for key in (
            "reward",
            "rewards/strict_int_reward/mean",
            "rewards/strict_format_reward/mean",
            "rewards/soft_format_reward/mean",
            "completions/mean_length",
            "completions/min_length",
            "completions/max_length",
        )
    }
    plot = plan_headline(series, None)
    assert [p.key for p in plot.panels] == ["reward", "rewards/strict_format_reward/mean", "completions/mean_length"]
    assert plot.panels[-1].band is not None
    assert strict_format_key({"rewards/strict_int_reward/mean": series["reward"]}) == "rewards/strict_int_reward/mean"
    assert plan_headline({"kl": series["reward"]}, None) is None


def test_html_is_self_contained_and_escaped(run_dir):
    page = write_report(run_dir)["html"].read_text()
    assert page.count("data:image/png;base64,") >= 8
    assert "&lt;reasoning&gt;" in page and "<reasoning>" not in page
    assert "src='rewards.png'" not in page  # no links to files beside it
    assert "<details><summary>config.yaml</summary>" in page and "<details open" not in page  # folded


def test_minimal_run_without_config_or_samples(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "reward": s / 10}) + "\n" for s in range(1, 4))
    )
    written = write_report(tmp_path, smooth=1)
    assert set(written) == {"headline", "rewards", "markdown", "html"}
    md = written["markdown"].read_text()
    assert "no config.yaml" in md and "No completion log" in md and "Throughput" not in md


def test_missing_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="metrics.jsonl not found"):
        write_report(tmp_path)
    with pytest.raises(ReportError, match="run directory not found"):
        write_report(tmp_path / "nope")


@pytest.mark.parametrize("text", ["", "\n", '{"step": 1, "rew'])
def test_metrics_without_records_is_a_clear_error(tmp_path, text):
    (tmp_path / "metrics.jsonl").write_text(text)
    with pytest.raises(ReportError, match="no metric records"):
        write_report(tmp_path)


def test_smooth_must_be_positive(run_dir):
    with pytest.raises(ReportError, match="smooth"):
        write_report(run_dir, smooth=0)


def test_read_jsonl_counts_bad_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n[1, 2]\nnot json\n\n{"step": 2}\n')
    records, bad = read_jsonl(path)
    assert records == [{"step": 1}, {"step": 2}] and bad == [2, 3]  # the lines, by number


def test_smoothing_helpers():
    assert moving_average([1.0, 2.0, 3.0, 4.0, 5.0], 3) == [1.5, 2.0, 3.0, 4.0, 4.5]
    assert moving_average([1.0, 5.0], 1) == [1.0, 5.0]
    assert moving_average([2.0, 4.0, 6.0], 2) == [3.0, 5.0, 6.0]  # an even window leans forward
    assert window_means(list(map(float, range(20)))) == (0.5, 18.5)
    assert window_means([3.0]) == (3.0, 3.0)
    assert default_window(10) == 1 and default_window(250) == 17 and default_window(10_000) == 50


def test_fence_outlasts_backticks_in_a_completion():
    fenced = _fence("use ```python``` here")
    assert fenced.startswith("````\n") and fenced.endswith("\n````")


def test_question_by_question_sign_tests_follow_the_table(run_dir):
    data = json.loads(json.dumps(EVAL_JSON))
    data["paired"] = {"accuracy_strict": {"better": 9, "worse": 2, "p_sign_test": 0.0654}}
    assert eval_section(data).paired == [
        "accuracy_strict: better on 9 questions, worse on 2 (two-sided sign test p = 0.065)"
    ]
    data["paired"] = {"accuracy_strict": {"better": "many"}}  # malformed: left out, not a crash
    assert eval_section(data).paired == []
    out = make_run_dir(run_dir, with_eval=True)
    written = json.loads((out / "eval.json").read_text())
    written["paired"] = {"format_strict": {"better": 90, "worse": 0, "p_sign_test": 1.6e-27}}
    (out / "eval.json").write_text(json.dumps(written))
    report = write_report(out)
    md, page = report["markdown"].read_text(), report["html"].read_text()
    line = "format_strict: better on 90 questions, worse on 0 (two-sided sign test p = 1.6e-27)"
    assert f"- {line}" in md and md.index("| format_strict |") < md.index(line)
    assert f"<li>{line}</li>" in page
