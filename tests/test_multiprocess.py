"""Two processes over gloo, as `accelerate launch` starts them on several GPUs: only the main process writes the
run directory, every step is logged once, and a second launch resumes the run.

`accelerate launch --cpu` starts one process whatever --num_processes says (multi-CPU needs MPI in accelerate
1.x); the shipped DDP config launches through torch.distributed, which falls back to gloo on a CPU-only machine.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import tiny_run_argv

REPO = Path(__file__).resolve().parents[1]
DDP_CONFIG = REPO / "recipes" / "accelerate" / "ddp.yaml"


def _launch(out: Path, embedded_dir: Path, gsm8k_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    launch = ["--config_file", DDP_CONFIG, "--num_processes", "2", "--mixed_precision", "no", "-m", "r1lite", "train"]
    flags = tiny_run_argv(embedded_dir, gsm8k_dir, out, "--save_steps", "1", *extra)
    command = [sys.executable, "-m", "accelerate.commands.launch", *map(str, launch), *flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, embedded_dir, gsm8k_dir):
    out = tmp_path_factory.mktemp("ddp") / "run"
    done = _launch(out, embedded_dir, gsm8k_dir, "--max_steps", "2")
    assert done.stderr.count("training on cpu with 2 process(es)") == 2  # both ranks ran
    return out


@pytest.mark.slow
def test_only_the_main_process_writes_the_run_directory(two_process_run):
    out = two_process_run
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "adapter",
        "checkpoint-1",
        "checkpoint-2",
        "completions",
        "config.yaml",
        "metrics.jsonl",
    ]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "reward" in r] == [1, 2]  # one record per step, not one per rank
    # Each step's completion log holds the whole generation batch once: 4 per process x 2 processes.
    import pandas as pd

    for step in (1, 2):
        frame = pd.read_parquet(out / "completions" / f"completions_{step:05d}.parquet")
        assert len(frame) == 8 and set(frame["step"]) == {step}
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in (out / "checkpoint-2").iterdir()}


@pytest.mark.slow
def test_a_two_process_run_resumes(two_process_run, embedded_dir, gsm8k_dir):
    _launch(two_process_run, embedded_dir, gsm8k_dir, "--max_steps", "3", "--resume", "true")
    records = [json.loads(line) for line in (two_process_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "reward" in r] == [1, 2, 3]
    assert (two_process_run / "checkpoint-3").is_dir()
