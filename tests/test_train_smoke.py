"""Two GRPO steps on a tiny llama: every LoRA parameter moves, and the run directory is complete."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from r1lite.config import RunConfig, parse_config
from r1lite.errors import ConfigError
from r1lite.train import train
from tests.helpers import tiny_run_argv


def parse_run_config(argv):
    return parse_config(RunConfig, argv)


def _argv(model_dir, gsm8k_dir, out, *extra):
    return tiny_run_argv(
        model_dir, gsm8k_dir / "train.jsonl", out, "--save_steps", "1", "--learning_rate", "1e-2", *extra
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir, gsm8k_dir):
    out = tmp_path_factory.mktemp("run")
    # Scores that differ within every group, so advantages (and gradients) are non-zero on a random model.
    train(
        parse_run_config(
            _argv(
                tiny_model_dir,
                gsm8k_dir,
                out,
                "--rewards",
                "tests.helpers:length_reward",
                "--eval_every",
                "1",
                "--max_eval_samples",
                "2",
                "--eval_max_completion_length",
                "4",
            )
        )
    )
    return out


def test_every_lora_parameter_changed(run_dir, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    trained = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    # The same fresh adapter PEFT would create: lora_B starts at zero, lora_A from the seeded init.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert trained, "adapter has no tensors"
    lora_b = {k: v for k, v in trained.items() if "lora_B" in k}
    assert lora_b and all(torch.count_nonzero(v) > 0 for v in lora_b.values()), "a lora_B stayed at its zero init"
    first = load_file(run_dir / "checkpoint-1" / "adapter_model.safetensors")
    unchanged = [k for k in trained if torch.equal(trained[k], first[k])]
    assert not unchanged, f"parameters that did not move between step 1 and 2: {unchanged}"
    assert isinstance(PeftModel.from_pretrained(base, run_dir / "adapter"), PeftModel)


def test_run_directory_contents(run_dir, gsm8k_dir):
    assert (run_dir / "config.yaml").is_file()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for key in (
        "reward",
        "reward_std",
        "frac_reward_zero_std",
        "completions/mean_length",
        "rewards/length_reward/mean",
        "learning_rate",
    ):
        assert key in steps[0], key
    evals = [r for r in records if "eval/accuracy_strict" in r]
    assert [r["step"] for r in evals] == [1, 2]  # every step, as eval_every says
    assert {"eval/format_strict", "eval/accuracy_lenient", "eval/n"} <= set(evals[0])
    # TRL's completion log, one file per logged step, with the gold answer r1lite adds as an extra column.
    from r1lite.report_data import read_samples

    logged = sorted(p.name for p in (run_dir / "completions").glob("*.parquet"))
    assert logged == ["completions_00001.parquet", "completions_00002.parquet"]
    samples, unreadable = read_samples(run_dir)
    assert unreadable == 0 and len(samples) == 2 * 4  # 2 steps x one group of 4
    assert {s["step"] for s in samples} == {1, 2}
    questions = {
        json.loads(line)["question"]: json.loads(line)["answer"].rsplit("####", 1)[1].strip()
        for line in (gsm8k_dir / "train.jsonl").read_text().splitlines()
    }
    assert all(s["gold"] == questions[s["question"]] for s in samples)  # each gold belongs to its question
    assert all(set(s["rewards"]) == {"length_reward"} for s in samples)
    assert (run_dir / "checkpoint-2").is_dir()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["max_steps"] == 2 and config["rewards"] == ["tests.helpers:length_reward"]
    assert "overwrite" not in config and "resume" not in config  # how it was started is not part of the recipe


def test_resume_continues_from_the_last_checkpoint(run_dir, tiny_model_dir, gsm8k_dir):
    config = parse_run_config(
        _argv(
            tiny_model_dir,
            gsm8k_dir,
            run_dir,
            "--rewards",
            "tests.helpers:length_reward",
            "--max_steps",
            "3",
            "--resume",
            "true",
        )
    )
    train(config)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "reward" in r] == [1, 2, 3]  # steps 1-2 kept, not re-run
    assert (run_dir / "checkpoint-3").is_dir()


def test_a_second_run_into_the_same_directory_is_refused_unless_asked(run_dir, tiny_model_dir, gsm8k_dir):
    before = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="already holds a run.*--resume true.*--overwrite true"):
        train(parse_run_config(_argv(tiny_model_dir, gsm8k_dir, run_dir, "--rewards", "tests.helpers:length_reward")))
    assert (run_dir / "metrics.jsonl").read_text() == before  # nothing touched


def test_overwrite_replaces_the_earlier_run(tmp_path, tiny_model_dir, gsm8k_dir):
    out = tmp_path / "run"
    argv = _argv(
        tiny_model_dir,
        gsm8k_dir,
        out,
        "--rewards",
        "tests.helpers:length_reward",
        "--max_steps",
        "1",
        "--save_steps",
        "1",
    )
    train(parse_run_config(argv))
    (out / "completions" / "completions_00007.parquet").write_bytes(b"left by an earlier, longer run")
    train(parse_run_config([*argv, "--overwrite", "true"]))
    assert sorted(p.name for p in (out / "completions").iterdir()) == ["completions_00001.parquet"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "reward" in r] == [1]
