"""The `r1lite` command: help, errors as one line with exit code 2, chat with and without an adapter."""

import gc

import pytest

from r1lite.cli import _collector_paused, main


def test_top_level_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "sft", "chat", "rewards", "report"):
        assert command in out


@pytest.mark.parametrize("command", [["train"], ["sft"], ["chat"], ["report"], ["rewards", "check"], ["eval"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    assert "usage: r1lite" in capsys.readouterr().out


def test_imports_run_with_the_collector_paused_and_it_is_back_on_after_them():
    """Every command imports under `_collector_paused`; the collector must be on again afterwards, even where an
    import fails, or a long training run would never free its reference cycles."""
    with _collector_paused():
        assert not gc.isenabled()
        import r1lite.errors  # noqa: F401
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0  # what the imports left alive is out of the collector's later passes
    with pytest.raises(ImportError), _collector_paused():
        import r1lite.no_such_module  # noqa: F401
    assert gc.isenabled()
    gc.unfreeze()


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

    import r1lite.chat as chat_module
    from r1lite.prompts import SYSTEM_PROMPT

    seen = []
    real_build_prompt = chat_module.build_prompt
    monkeypatch.setattr(chat_module, "build_prompt", lambda q, s: seen.append(s) or real_build_prompt(q, s))
    adapter = tmp_path / "adapter"
    get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=2, target_modules=["q_proj"])
    ).save_pretrained(adapter)
    question = "How many r's are in strawberry?"
    assert main(["chat", "--model", str(tiny_model_dir), "--max_completion_length", "5", question]) == 0
    assert (
        main(
            [
                "chat",
                "--model",
                str(tiny_model_dir),
                "--adapter",
                str(adapter),
                "--max_completion_length",
                "5",
                question,
            ]
        )
        == 0
    )
    assert seen == [None, SYSTEM_PROMPT]  # the recipe's probe: bare template before, format prompt after
    assert capsys.readouterr().out.strip()


def test_interactive_chat_answers_each_typed_question(tiny_model_dir, monkeypatch):
    from r1lite.chat import chat
    from r1lite.config import ChatConfig, parse_config

    typed = iter(["What is 2 + 2?", "And 3 + 3?", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(typed))
    shown = []
    chat(parse_config(ChatConfig, ["--model", str(tiny_model_dir), "--max_completion_length", "3"]), write=shown.append)
    out = "".join(shown)
    assert out.startswith("r1lite chat: ") and out.count("tokens/s") == 2  # the empty line ended the chat


def test_empty_question_is_refused(capsys):
    assert main(["chat", "  "]) == 2
    assert "the question is empty" in capsys.readouterr().err


def test_rewards_check_table(tiny_model_dir, gsm8k_dir, capsys):
    code = main(
        [
            "rewards",
            "check",
            "--model",
            str(tiny_model_dir),
            "--dataset",
            str(gsm8k_dir),
            "--max_train_samples",
            "2",
            "--num_generations",
            "2",
            "--max_completion_length",
            "4",
            "--rewards",
            "tests.helpers:length_reward",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "2 prompts x 2 completions" in out
    for name in ("default.correctness", "seed.strict_format", "tests.helpers:length_reward"):
        assert name in out, name


def test_rewards_check_refuses_a_misspelled_reward_before_loading_a_model(capsys, monkeypatch):
    import r1lite.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(["rewards", "check", "--rewards", "corectness"]) == 2
    assert "unknown reward 'corectness'" in capsys.readouterr().err


def test_train_refuses_a_misspelled_reward_before_loading_a_model(capsys, monkeypatch):
    import r1lite.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    assert main(["train", "--rewards", "correctnes", "--max_steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "unknown reward 'correctnes'" in err and "Traceback" not in err


def test_ctrl_c_outside_training_is_one_line_and_exit_130(monkeypatch, capsys):
    import r1lite.cli as cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.HANDLERS, "report", interrupted)
    assert main(["report", "somewhere"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "r1lite report: interrupted" and "Traceback" not in err


def test_freed_memory_stays_in_the_process_unless_the_environment_says_otherwise(monkeypatch):
    import ctypes
    import platform

    from r1lite import cli

    calls = []

    class FakeLibc:
        def mallopt(self, option, value):
            calls.append((option, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    cli._reuse_freed_memory()
    assert calls == [(-3, 32 * 1024 * 1024), (-1, 1 << 30)]
    calls.clear()
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    cli._reuse_freed_memory()
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))  # musl and others: left alone
    cli._reuse_freed_memory()
    assert calls == []
