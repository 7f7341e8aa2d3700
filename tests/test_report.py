"""`r1lite report`: plots, report.md and a self-contained report.html from a synthetic run directory."""

import json

import pytest
import yaml

from r1lite.report import (
    ReportError,
    _fence,
    default_window,
    moving_average,
    read_jsonl,
    window_means,
    write_report,
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


@pytest.fixture
def run_dir(tmp_path):
    lines = [json.dumps(train_record(step)) for step in range(1, STEPS + 1)]
    for step in (10, 20, 30):
        record = {"step": step, "eval/accuracy_strict": step / 100, "eval/format_strict": 0.4}
        lines.append(json.dumps(record))
    lines.append(json.dumps({"step": STEPS, "train_runtime": 370.5, "train_loss": 0.01}))
    lines.append('{"step": 31, "loss": 0.0')  # a run killed mid-write
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    config = {
        "model": "embedded:smollm2-135m-instruct",
        "learning_rate": 5e-6,
        "max_steps": STEPS,
        "run_name": "synthetic-run",
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    samples = [sample(step, k) for step in (1, 10, 20, 30) for k in (0, 1)]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return tmp_path


def test_report_writes_plots_markdown_and_html(run_dir):
    written = write_report(run_dir)
    out = run_dir / "report"
    assert {p.parent for p in written.values()} == {out}
    expected = {"rewards", "completion_length", "reward_signal", "kl_entropy", "optimization", "eval", "time"}
    assert expected <= set(written)
    for name in expected:
        data = written[name].read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name
    assert written["markdown"] == out / "report.md" and written["html"] == out / "report.html"


def test_markdown_content(run_dir):
    md = write_report(run_dir)["markdown"].read_text()
    assert "# Training report: synthetic-run" in md
    assert "| reward | 0.3 | 1.65 | 1.7 (step 30) |" in md  # first/last 10% = 3 steps each
    assert "eval/accuracy_strict" in md and "train_runtime: 370.5" in md
    assert "run_name: synthetic-run" in md and "```yaml" in md
    assert "](rewards.png)" in md and "](eval.png)" in md
    assert "skipped unreadable line(s) of metrics.jsonl: 35 (cut by a stopped run)" in md
    # Start, middle and end of training: steps 1, 20 (closest to 15.5) and 30; not step 10.
    for step in (1, 20, 30):
        assert f"(step {step})" in md and f"thought at step {step} #1" in md
    assert "thought at step 10" not in md


def test_html_is_self_contained_and_escaped(run_dir):
    page = write_report(run_dir)["html"].read_text()
    assert page.count("data:image/png;base64,") >= 7
    assert "&lt;reasoning&gt;" in page and "<reasoning>" not in page
    assert "src='rewards.png'" not in page  # no links to files beside it


def test_minimal_run_without_config_or_samples(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "reward": s / 10}) + "\n" for s in range(1, 4))
    )
    written = write_report(tmp_path, smooth=1)
    assert set(written) == {"rewards", "markdown", "html"}
    md = written["markdown"].read_text()
    assert "no config.yaml" in md and "No completion log" in md


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
