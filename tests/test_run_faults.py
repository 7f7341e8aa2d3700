"""Faults during a run: kill -9 and resume, a kill while saving, a full disk, Ctrl-C and a scheduler's SIGTERM,
an output directory that cannot be written. Nothing is lost beyond the last complete checkpoint, and nothing is
half-kept."""

import errno
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from r1lite.callbacks import COMPLETE_MARKER
from r1lite.config import RunConfig, parse_config
from r1lite.errors import ConfigError, DiskFull
from r1lite.train import train
from tests.helpers import tiny_run_argv

STEPS = 8


def _argv(model_dir, gsm8k_dir, out, *extra):
    return tiny_run_argv(
        model_dir,
        gsm8k_dir / "train.jsonl",
        out,
        "--max_train_samples",
        "32",
        "--max_steps",
        STEPS,
        "--save_steps",
        "1",
        "--learning_rate",
        "1e-2",
        "--rewards",
        "tests.helpers:length_reward",
        "--logging_steps",
        "1",
        *extra,
    )


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"reward"' in line]


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "r1lite", "train", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )


def _wait_for(condition, process: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the run ended before the fault: {process.communicate()[1][-2000:]}"
        assert time.monotonic() < end, "timed out waiting for the run"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir, gsm8k_dir):
    out = tmp_path_factory.mktemp("whole")
    train(parse_config(RunConfig, _argv(tiny_model_dir, gsm8k_dir, out)))
    return out


@pytest.mark.slow
def test_kill_9_then_resume_loses_at_most_one_checkpoint_interval(tmp_path, tiny_model_dir, gsm8k_dir, uninterrupted):
    out = tmp_path / "killed"
    process = _start(_argv(tiny_model_dir, gsm8k_dir, out, "--save_steps", "2"))
    _wait_for(lambda: (out / "metrics.jsonl").is_file() and len(_steps(out)) >= 3, process)  # past checkpoint-2
    process.send_signal(signal.SIGKILL)
    process.wait()
    logged_at_kill = max(_steps(out))
    from r1lite.train import complete_checkpoints, step_of

    resumed_from = step_of(str(complete_checkpoints(out)[0][-1]))
    train(parse_config(RunConfig, _argv(tiny_model_dir, gsm8k_dir, out, "--save_steps", "2", "--resume", "true")))
    assert _steps(out) == list(range(1, STEPS + 1))  # no step missing, none twice
    lost = logged_at_kill - resumed_from
    print(f"kill -9: {logged_at_kill} steps logged, resumed from checkpoint-{resumed_from}: {lost} step(s) re-run")
    assert 0 <= lost <= 2  # at most save_steps
    # The same data, in the same order, as the uninterrupted run; the scheduler continued where it stopped.
    for step in range(1, STEPS + 1):
        name = f"completions/completions_{step:05d}.parquet"
        assert (
            pd.read_parquet(out / name)["prompt"].astype(str).tolist()
            == pd.read_parquet(uninterrupted / name)["prompt"].astype(str).tolist()
        ), step
    ours = {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "reward" in r}
    whole = {
        r["step"]: r
        for r in map(json.loads, (uninterrupted / "metrics.jsonl").read_text().splitlines())
        if "reward" in r
    }
    assert [ours[s]["learning_rate"] for s in ours] == [whole[s]["learning_rate"] for s in whole]
    same_rewards = [s for s in ours if ours[s]["reward"] == whole[s]["reward"]]
    trained, reference = (load_file(run / "adapter" / "adapter_model.safetensors") for run in (out, uninterrupted))
    drift = max((trained[k] - reference[k]).abs().max().item() for k in reference)
    print(
        f"kill -9: rewards equal to the uninterrupted run's on steps {same_rewards}; final adapter max |diff| "
        f"{drift:.2e}"
    )
    assert same_rewards == list(range(1, STEPS + 1)) and drift < 1e-5  # RNG, optimizer and scheduler restored


@pytest.mark.slow
def test_resume_skips_a_checkpoint_cut_short_while_saving(uninterrupted, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    shutil.rmtree(out / "adapter")
    (out / f"checkpoint-{STEPS}" / COMPLETE_MARKER).unlink()  # as if killed before the save finished
    (out / f"checkpoint-{STEPS}" / "optimizer.pt").write_bytes(b"half")
    from r1lite.train import _checkpoint_to_resume

    assert _checkpoint_to_resume(out) == str(out / f"checkpoint-{STEPS - 1}")


@pytest.mark.slow
def test_a_full_disk_is_a_clear_error_and_keeps_the_previous_checkpoint(
    tmp_path, tiny_model_dir, gsm8k_dir, monkeypatch
):
    real_save = torch.save
    saves = []

    def save(obj, f, *args, **kwargs):
        saves.append(str(f))
        if "checkpoint-2" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "run"
    with pytest.raises(DiskFull, match=r"is full .*checkpoint-1 is intact: free space, then --resume true"):
        train(parse_config(RunConfig, _argv(tiny_model_dir, gsm8k_dir, out)))
    assert (out / "checkpoint-1" / COMPLETE_MARKER).is_file()
    assert not (out / "checkpoint-2" / COMPLETE_MARKER).exists()
    assert load_file(out / "checkpoint-1" / "adapter_model.safetensors")  # readable, whole


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_a_checkpoint_says_where_and_exits_non_zero(tmp_path, tiny_model_dir, gsm8k_dir, sig, code):
    out = tmp_path / "run"
    process = _start(_argv(tiny_model_dir, gsm8k_dir, out, "--save_steps", "1000", "--max_steps", "1000"))
    _wait_for(lambda: (out / "metrics.jsonl").is_file() and len(_steps(out)) >= 2, process)
    process.send_signal(sig)
    _, err = process.communicate(timeout=300)
    assert process.returncode == code, err[-2000:]
    step = max(_steps(out))
    saved = out / f"checkpoint-{step}"
    assert f"stopped by {sig.name} after step {step}; checkpoint saved to {saved}; continue with --resume true" in err
    assert (saved / COMPLETE_MARKER).is_file() and not (out / "adapter").exists()


def test_an_output_dir_that_cannot_be_written(tmp_path, tiny_model_dir, gsm8k_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        train(parse_config(RunConfig, _argv(tiny_model_dir, gsm8k_dir, blocker)))
    with pytest.raises(ConfigError, match="cannot be written .* pass another --output_dir"):
        train(parse_config(RunConfig, _argv(tiny_model_dir, gsm8k_dir, blocker / "run")))
