"""The `r1lite` command: help, errors as one line with exit code 2, chat with and without an adapter."""

import pytest

from r1lite.cli import main


def test_top_level_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "sft", "chat", "rewards", "report"):
        assert command in out


@pytest.mark.parametrize("command", ["train", "sft", "chat", "report", "rewards"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: r1lite" in capsys.readouterr().out


def test_unknown_command(capsys):
    assert main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


def test_bad_override_is_one_clear_line(capsys):
    assert main(["train", "--max_steps", "soon"]) == 2
    err = capsys.readouterr().err
    assert "max_steps" in err and "invalid int value" in err and "Traceback" not in err


def test_missing_model_directory(capsys, tmp_path):
    assert main(["chat", "--model", str(tmp_path), "hi"]) == 2
    assert "not a model directory" in capsys.readouterr().err


def test_chat_with_and_without_adapter(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import r1lite.generate as generate

    seen = []
    real_build_prompt = generate.build_prompt
    monkeypatch.setattr(generate, "build_prompt", lambda q, s: seen.append(s) or real_build_prompt(q, s))
    adapter = tmp_path / "adapter"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                   LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(adapter)
    question = "How many r's are in strawberry?"
    assert main(["chat", "--model", str(tiny_model_dir), "--max_new_tokens", "5", question]) == 0
    assert main(["chat", "--model", str(tiny_model_dir), "--adapter", str(adapter), "--max_new_tokens", "5",
                 question]) == 0
    from r1lite.prompts import SYSTEM_PROMPT

    assert seen == [None, SYSTEM_PROMPT]  # the recipe's probe: bare template before, format prompt after
    assert capsys.readouterr().out.strip()
