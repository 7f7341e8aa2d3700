"""A run directory describes itself truly, and tracking goes through transformers' own integrations: TensorBoard
event files hold the logged metrics, metrics.jsonl stays the always-on record, config.yaml shows the precision the
run used, the model card names the real base model; backends and hub publishing that cannot work are refused in one
line before a model loads."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import yaml

from r1lite.config import RunConfig, parse_config
from r1lite.errors import ConfigError
from r1lite.model_card import describe_base, facts_from_run, render
from r1lite.models import resolve_dtype
from r1lite.train import check_outlets, train
from tests.helpers import tiny_run_argv


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_model_dir, gsm8k_dir):
    pytest.importorskip("tensorboard", reason="pip install 'r1lite[track]'")
    out = tmp_path_factory.mktemp("tracked")
    argv = tiny_run_argv(tiny_model_dir, gsm8k_dir / "train.jsonl", out, "--rewards", "tests.helpers:length_reward")
    # precision auto: the run decides bf16 or fp32 from this CPU, and config.yaml must say which
    train(parse_config(RunConfig, [*argv, "--precision", "auto", "--report_to", "tensorboard", "--save_steps", "1"]))
    return out


@pytest.mark.slow
def test_tensorboard_event_files_hold_the_metrics_jsonl_values(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list(tracked_run.glob("runs/*/events.out.tfevents.*"))
    assert len(events) == 1, events
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    logged = [json.loads(line) for line in (tracked_run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logged if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2]  # metrics.jsonl is written whatever report_to says
    for key in ("reward", "rewards/length_reward/mean", "completions/mean_length"):
        scalars = accumulator.Scalars(f"train/{key}")
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in steps], rel=1e-5)


@pytest.mark.slow
def test_config_yaml_records_the_precision_the_run_used(tracked_run):
    saved = yaml.safe_load((tracked_run / "config.yaml").read_text())
    assert saved["precision"] == "auto"
    assert saved["bf16"] is (resolve_dtype("auto", "cpu") == torch.bfloat16)
    assert saved["use_cpu"] is True and saved["report_to"] == "tensorboard"
    # and it loads again as a recipe
    again = parse_config(RunConfig, ["--config", str(tracked_run / "config.yaml")])
    assert again.trl["max_steps"] == 2


@pytest.mark.slow
def test_model_card_names_the_base_model_not_none(tracked_run, tiny_model_dir):
    for card in (tracked_run / "README.md", tracked_run / "adapter" / "README.md"):
        text = card.read_text()
        assert "[None]" not in text and "huggingface.co/None" not in text
        assert f"base model as given: `{tiny_model_dir}`" in text
        assert "library_name: peft" in text and "Respond in the following format" in text
        assert "- steps: 2" in text


def test_the_embedded_model_is_named_with_its_licence(tmp_path):
    base = describe_base("embedded:smollm2-135m-instruct")
    assert (base.hub_id, base.licence) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump({"model": "embedded:smollm2-135m-instruct", "reward_set": "x"})
    )
    card = render(facts_from_run(tmp_path, "adapter", usage=""))
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "license: apache-2.0" in card
    assert "(https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct)" in card and "Q4_1" in card
    assert describe_base("Qwen/Qwen2.5-3B-Instruct").hub_id == "Qwen/Qwen2.5-3B-Instruct"
    assert describe_base(str(tmp_path)).hub_id is None  # a local directory is named by its path, never a hub link


def _args(**kwargs):
    return SimpleNamespace(**{"report_to": [], "push_to_hub": False, **kwargs})


def test_a_missing_tracking_package_is_named_before_anything_loads(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name.startswith("tensorboard") else real(name)
    )
    with pytest.raises(
        ConfigError, match=r"report_to tensorboard needs the tensorboard package: pip install 'r1lite\["
    ):
        check_outlets(_args(report_to=["tensorboard"]))
    check_outlets(_args(report_to=[]))


def test_wandb_without_a_login_asks_for_offline_mode(monkeypatch, tmp_path):
    import importlib.machinery
    import importlib.util

    real = importlib.util.find_spec
    installed = importlib.machinery.ModuleSpec("wandb", None)  # the login check, whether or not wandb is here
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: installed if name == "wandb" else real(name))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with pytest.raises(ConfigError, match="WANDB_MODE=offline"):
        check_outlets(_args(report_to=["wandb"]))
    monkeypatch.setenv("WANDB_MODE", "offline")
    check_outlets(_args(report_to=["wandb"]))


def test_push_to_hub_offline_fails_in_one_clear_line(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="push_to_hub: HF_HUB_OFFLINE is set") as caught:
        check_outlets(_args(push_to_hub=True))
    assert "\n" not in str(caught.value)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no stored token
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=r"push_to_hub: .*hf auth login") as caught:
        check_outlets(_args(push_to_hub=True))
    assert "\n" not in str(caught.value)


@pytest.mark.slow
def test_publish_pushes_the_run_then_replaces_trls_card_with_ours(tracked_run, monkeypatch):
    # The hub cannot be reached from here: the two uploads are recorded instead of sent.
    import huggingface_hub

    from r1lite.train import publish

    calls = []

    class Trainer:
        hub_model_id = "someone/tracked"
        args = SimpleNamespace(hub_token=None)

        def push_to_hub(self, commit_message):
            (tracked_run / "README.md").write_text("This model is a fine-tuned version of [None]")  # TRL's draft
            calls.append(("push_to_hub", commit_message))

        def is_world_process_zero(self):
            return True

    def upload_file(self, *, path_or_fileobj, path_in_repo, repo_id, token, commit_message):
        calls.append(("upload_file", path_in_repo, repo_id, open(path_or_fileobj).read()))

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file", upload_file)
    publish(Trainer(), tracked_run)
    assert [c[0] for c in calls] == ["push_to_hub", "upload_file"]
    _, path, repo, card = calls[1]
    assert (path, repo) == ("README.md", "someone/tracked")
    assert "[None]" not in card and "base model as given" in card
