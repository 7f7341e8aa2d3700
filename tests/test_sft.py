"""SFT warm-up data: prompts as in training, replies in the target format, the reply alone is learned."""

import pytest

from r1lite.data import DataError, prepare
from r1lite.prompts import SYSTEM_PROMPT
from r1lite.rewards.corrected import strict_format_reward
from r1lite.sft import sft, sft_rows
from tests.helpers import tiny_run_argv


def _sft_rows(rows, few_shot=0, seed=0):
    dataset, _ = prepare(rows, SYSTEM_PROMPT, few_shot, seed=seed)
    return sft_rows(dataset)


def test_rows_are_training_prompts_with_target_replies(gsm8k_rows):
    rows = _sft_rows(gsm8k_rows[:5])
    assert len(rows) == 5
    first = rows[0]
    assert first["prompt"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": gsm8k_rows[0]["question"]},
    ]
    (reply,) = first["completion"]
    assert reply["role"] == "assistant"
    assert reply["content"] == (
        "<reasoning>\nNatalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n</reasoning>\n<answer>\n72\n</answer>\n"
    )
    # Every rendered reply is one the strict format reward pays for.
    scores = strict_format_reward(prompts=None, completions=[r["completion"] for r in rows])
    assert scores == [0.5] * 5


def test_unusable_rows_are_dropped_and_none_left_is_an_error(gsm8k_rows):
    rows = _sft_rows(gsm8k_rows[:2] + [{"question": "q", "answer": "no marker"}, {"answer": "#### 1"}])
    assert len(rows) == 2
    with pytest.raises(DataError, match="no usable rows"):
        _sft_rows([{"question": "q", "answer": "no marker"}])


def test_few_shot_examples_are_drawn_as_in_training(gsm8k_rows):
    grpo_rows, _ = prepare(gsm8k_rows[:6], SYSTEM_PROMPT, 2, seed=1)
    sft = _sft_rows(gsm8k_rows[:6], few_shot=2, seed=1)
    assert [row["prompt"] for row in sft] == grpo_rows["prompt"]  # the same examples GRPO would show
    for row in sft:
        users = [m["content"] for m in row["prompt"] if m["role"] == "user"]
        assert len(users) == 3 and users[-1] not in users[:-1]


@pytest.mark.slow
def test_sft_writes_an_adapter_and_config_that_train_can_start_from(tiny_model_dir, gsm8k_dir, tmp_path, monkeypatch):
    import yaml

    from r1lite import callbacks
    from r1lite.config import RunConfig, SFTRunConfig, parse_config
    from r1lite.train import train

    releases = []  # freed heap blocks go back to the system after each optimizer step on a CPU
    monkeypatch.setattr(callbacks, "release_free_memory", lambda: releases.append(1) or True)

    adapter = sft(
        parse_config(
            SFTRunConfig,
            [
                "--model",
                str(tiny_model_dir),
                "--dataset",
                str(gsm8k_dir / "train.jsonl"),
                "--max_train_samples",
                "8",
                "--max_steps",
                "2",
                "--per_device_train_batch_size",
                "4",
                "--lora_r",
                "4",
                "--precision",
                "fp32",
                "--output_dir",
                str(tmp_path / "sft"),
                "--gradient_checkpointing",
                "false",
            ],
        )
    )
    assert (adapter / "adapter_model.safetensors").is_file()
    saved = yaml.safe_load((tmp_path / "sft" / "config.yaml").read_text())
    assert saved["max_steps"] == 2 and saved["lora_r"] == 4 and saved["max_train_samples"] == 8
    records = (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()
    assert len([r for r in records if '"loss"' in r]) == 2
    assert len(releases) == 2
    argv = tiny_run_argv(
        tiny_model_dir,
        gsm8k_dir / "train.jsonl",
        tmp_path / "grpo",
        "--init_adapter",
        adapter,
        "--max_train_samples",
        "8",
        "--max_steps",
        "1",
    )
    out = train(parse_config(RunConfig, argv))
    assert (out / "adapter_model.safetensors").is_file()
