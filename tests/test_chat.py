"""`r1lite chat`: streamed replies, the reasoning/answer view, the interactive session and the one-shot probe."""

from __future__ import annotations

import os
import signal

import pytest
import torch

import r1lite.chat as chat_module
from r1lite.chat import PieceStreamer, ReplyView, ask, chat
from r1lite.cli import main
from r1lite.config import ChatConfig, ModelArgs, parse_config
from r1lite.data import build_prompt
from r1lite.engine import generate_replies
from r1lite.errors import ConfigError, EvalError
from r1lite.models import load_for_generation
from r1lite.prompts import SYSTEM_PROMPT

REPLY = "<reasoning>\nStep one.\nStep two.\n</reasoning>\n<answer>\n42\n</answer>\n"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tokenizer = load_for_generation(ModelArgs(model=str(tiny_model_dir), precision="fp32"))
    # Random weights this small reply with blank lines only; scaled up, they write words (and multi-byte characters).
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(30)
    return model, tokenizer


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("chat") / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(path)
    return path


def _config(model_dir, *extra: str) -> ChatConfig:
    return parse_config(ChatConfig, ["--model", str(model_dir), "--max_completion_length", "12", *extra])


# ----------------------------------------------------------------------------------------------- streaming


class _Recorder(PieceStreamer):
    """Notes how many tokens had been generated when each piece came out."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, self._note)
        self.pieces: list[tuple[str, int]] = []

    def _note(self, text: str) -> None:
        self.pieces.append((text, self.tokens))


@pytest.mark.parametrize(("temperature", "seed"), [(0.0, 0), (1.0, 3)])
def test_streamed_pieces_arrive_one_by_one_and_join_to_the_reply(tiny, temperature, seed):
    model, tokenizer = tiny
    settings = dict(temperature=temperature, max_completion_length=40, batch_size=1, seed=seed, progress=False)
    prompt = build_prompt("What is 2 + 2?", SYSTEM_PROMPT)
    ((plain,),) = generate_replies(model, tokenizer, [prompt], **settings)
    streamer = _Recorder(tokenizer)
    ((streamed,),) = generate_replies(model, tokenizer, [prompt], streamer=streamer, **settings)
    assert streamed == plain  # streaming changes nothing in sampling, seed or end-of-sequence handling
    assert len(streamer.pieces) > 1
    assert streamer.pieces[0][1] < plain.num_tokens  # the first piece came out while the reply was being generated
    assert "".join(text for text, _ in streamer.pieces) == plain.text
    assert streamer.tokens == plain.num_tokens


def test_a_streamer_follows_one_reply(tiny):
    model, tokenizer = tiny
    prompts = [build_prompt(q, None) for q in ("a?", "b?")]
    with pytest.raises(EvalError, match="one reply"):
        generate_replies(model, tokenizer, prompts, streamer=PieceStreamer(tokenizer, print), progress=False)


# ----------------------------------------------------------------------------------------------- the view


def _view(show: str, chunks: list[str]) -> str:
    shown: list[str] = []
    view = ReplyView(show, shown.append)
    for chunk in chunks:
        view.feed(chunk)
    view.close()
    assert view.text == "".join(chunks)
    return "".join(shown)


@pytest.mark.parametrize(
    "chunks",
    [
        [REPLY],
        ["<reas", "oning>\nStep one.\n", "Step two.\n</reason", "ing>\n<", "answer>\n42", "\n</answer", ">\n"],
        list(REPLY),  # one character at a time: every tag split
    ],
)
def test_split_shows_reasoning_and_answer_under_labels_whatever_the_chunking(chunks):
    assert _view("split", chunks) == "Reasoning:\nStep one.\nStep two.\nAnswer:\n42\n"


@pytest.mark.parametrize("chunks", [[REPLY], list(REPLY)])
def test_answer_mode_hides_the_reasoning_behind_a_thinking_line(chunks):
    assert _view("answer", chunks) == "thinking…\nAnswer:\n42\n"


def test_raw_shows_the_text_exactly_as_generated():
    chunks = ["  <reas", "oning>\n x < y\n", "</reasoning>\n"]
    assert _view("raw", chunks) == "".join(chunks)


def test_the_view_streams_before_the_reply_ends():
    shown: list[str] = []
    view = ReplyView("split", shown.append)
    view.feed("<reasoning>\nStep one, ")
    assert "".join(shown) == "Reasoning:\nStep one,"  # the trailing space waits for more text of the section
    view.feed("then <ans")  # maybe a tag: held back
    assert "".join(shown) == "Reasoning:\nStep one, then"
    view.feed("wer>7")
    assert "".join(shown) == "Reasoning:\nStep one, then\nAnswer:\n7"


def test_a_reply_without_tags_is_still_shown_whole():
    untagged = ["The answer ", "is 3 < 4 <b", ">.\n"]
    split = _view("split", untagged)
    assert split == "The answer is 3 < 4 <b>.\n(no <reasoning>/<answer> tags; the reply is shown as written)\n"
    answer = _view("answer", untagged)
    assert answer == "thinking…\n(no <answer> tag; the reply as written:)\nThe answer is 3 < 4 <b>.\n"


def test_a_reply_cut_before_its_answer():
    chunks = ["<reasoning>\nFirst, 6 * 7 <", "ans"]  # cut at the length limit inside what looked like a tag
    assert _view("split", chunks) == "Reasoning:\nFirst, 6 * 7 <ans\n(no <answer> tag; the reply is shown as written)\n"
    assert _view("answer", chunks) == "thinking…\n(no <answer> tag; the reply as written:)\n" + "".join(chunks) + "\n"
    assert _view("split", []) == "(empty reply)\n"


def test_a_stopped_reply_shows_what_came_so_far():
    for show, expected in [
        ("split", "Reasoning:\nFirst, 6 * 7\n"),
        ("answer", "thinking…\n(stopped before the answer; the reply as written:)\n<reasoning>\nFirst, 6 * 7\n"),
    ]:
        shown: list[str] = []
        view = ReplyView(show, shown.append)
        view.feed("<reasoning>\nFirst, 6 * 7 ")
        view.close(stopped=True)
        assert "".join(shown) == expected


# ----------------------------------------------------------------------------------------------- the session


def test_session_uses_the_format_prompt_with_an_adapter_and_the_bare_template_without(
    tiny_model_dir, adapter, monkeypatch
):
    seen = []
    real = chat_module.build_prompt
    monkeypatch.setattr(chat_module, "build_prompt", lambda q, s: seen.append(s) or real(q, s))
    shown: list[str] = []
    chat(_config(tiny_model_dir, "--adapter", str(adapter)), questions=["What is 2 + 2?", ""], write=shown.append)
    with_adapter = "".join(shown)
    shown.clear()
    chat(_config(tiny_model_dir), questions=["What is 2 + 2?"], write=shown.append)
    without = "".join(shown)
    assert seen == [SYSTEM_PROMPT, None]
    assert (
        f"+ adapter {adapter}" in with_adapter and 'the format prompt ("Respond in the following format' in with_adapter
    )
    assert "(no adapter)" in without and "none (the bare chat template)" in without
    for transcript in (with_adapter, without):
        assert "replies shown split" in transcript and "Ctrl-D" in transcript and "without memory" in transcript
        assert transcript.count("tokens/s") == 1


def test_session_streams_each_reply_then_a_stats_line(tiny, tiny_model_dir, monkeypatch):
    model, tokenizer = tiny
    monkeypatch.setattr(chat_module, "load_for_generation", lambda *a, **k: (model, tokenizer))
    config = _config(tiny_model_dir, "--show", "raw", "--max_completion_length", "30")
    shown: list[str] = []
    chat(config, questions=["What is 2 + 2?", "And 3 + 3?"], write=shown.append)
    out = "".join(shown)
    for question in ("What is 2 + 2?", "And 3 + 3?"):
        reply = ask(model, tokenizer, question, config)
        assert reply in out  # the streamed text is the reply ask() gives with the same seed
    assert out.count(" tokens in ") == 2 and out.count("tokens/s") == 2
    assert len(shown) > 6  # banner, then many pieces per reply, then the stats lines


def test_ctrl_c_stops_the_reply_and_the_session_goes_on(tiny, tiny_model_dir, monkeypatch):
    model, tokenizer = tiny
    monkeypatch.setattr(chat_module, "load_for_generation", lambda *a, **k: (model, tokenizer))
    made = []

    class CtrlC(PieceStreamer):  # the first reply: Ctrl-C after 5 tokens
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self)

        def put(self, value):
            super().put(value)
            if len(made) == 1 and self.tokens == 5:
                os.kill(os.getpid(), signal.SIGINT)
                self.survived = True  # Ctrl-C waits for the next token: this piece is handled whole

    monkeypatch.setattr(chat_module, "PieceStreamer", CtrlC)
    handler = signal.getsignal(signal.SIGINT)
    shown: list[str] = []
    chat(_config(tiny_model_dir, "--show", "raw"), questions=["first?", "second?"], write=shown.append)
    out = "".join(shown)
    assert made[0].survived and "[stopped after 5 tokens in" in out  # stopped at the next token
    assert len(made) == 2 and made[1].tokens > 5 and out.count("tokens/s") == 2  # the second question got its reply
    assert signal.getsignal(signal.SIGINT) is handler


@pytest.mark.parametrize("ending", [EOFError, KeyboardInterrupt])
def test_ctrl_d_or_ctrl_c_at_the_prompt_ends_the_session(tiny, tiny_model_dir, monkeypatch, ending):
    model, tokenizer = tiny
    monkeypatch.setattr(chat_module, "load_for_generation", lambda *a, **k: (model, tokenizer))
    typed = iter(["What is 2 + 2?"])

    def type_(prompt=""):
        try:
            return next(typed)
        except StopIteration:
            raise ending from None

    monkeypatch.setattr("builtins.input", type_)
    shown: list[str] = []
    chat(_config(tiny_model_dir), write=shown.append)  # returns: no exception escapes
    assert "".join(shown).count("tokens/s") == 1


# ----------------------------------------------------------------------------------------------- one-shot


def test_one_shot_question_prints_the_raw_reply_and_nothing_else(tiny_model_dir, capsys):
    question = "How many r's are in strawberry?"
    assert main(["chat", "--model", str(tiny_model_dir), "--max_completion_length", "12", question]) == 0
    out = capsys.readouterr().out
    config = _config(tiny_model_dir, "--question", question)
    model, tokenizer = load_for_generation(config.model)
    ((reply,),) = generate_replies(
        model,
        tokenizer,
        [build_prompt(question, None)],
        temperature=0.8,
        top_p=0.95,
        max_completion_length=12,
        batch_size=1,
        seed=0,
        progress=False,
    )
    assert out == reply.text + "\n"  # no banner, no labels, no statistics: the recipe's probe as before


def test_one_shot_question_with_show_uses_the_view(tiny_model_dir, capsys):
    assert main(["chat", "--model", str(tiny_model_dir), "--max_completion_length", "5", "--show", "answer", "hi"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("thinking…\n(no <answer> tag; the reply as written:)\n") and "tokens/s" in out
    assert "r1lite chat:" not in out  # no banner for a single question


def test_show_choices(capsys):
    assert parse_config(ChatConfig, []).chat.view() == "split"
    assert parse_config(ChatConfig, ["hi"]).chat.view() == "raw"
    assert parse_config(ChatConfig, ["--show", "answer", "hi"]).chat.view() == "answer"
    with pytest.raises(ConfigError, match="show: 'both' is not one of raw, split, answer"):
        parse_config(ChatConfig, ["--show", "both"])
    assert main(["chat", "--show", "both", "hi"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
