"""`r1lite chat`: the recipe's before/after probe, with and without the trained adapter.

With a question it samples one reply, prints it as generated and returns (the probe: the output is the reply and
nothing else, unless --show asks for a view). Without one it is an interactive session: questions typed at the
terminal until an empty line, Ctrl-D or Ctrl-C, each reply streamed as it is generated, by default with its
reasoning and its answer shown apart (--show raw|split|answer), and a line of token statistics after it. Each
question is asked on its own: there is no conversation memory, as the recipe's format is one question, one reply.

Streaming uses the one decoding loop of eval and rewards check (`engine.generate_replies` with a streamer), so a
streamed reply is the reply the same settings and seed give without streaming, token for token. With an adapter
the format system prompt is used unless --system_prompt says otherwise (`ChatArgs.prompt`).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from transformers import TextStreamer

from r1lite.answers import ANSWER_CLOSE, ANSWER_OPEN, extract_tagged_answer
from r1lite.config import ChatConfig
from r1lite.data import build_prompt
from r1lite.engine import Reply, generate_replies
from r1lite.models import load_for_generation
from r1lite.prompts import SYSTEM_PROMPT

Write = Callable[[str], None]

REASONING_OPEN = "<reasoning>"
REASONING_CLOSE = "</reasoning>"
# Each tag and the section it starts (None: back outside the tags).
TAGS = {REASONING_OPEN: "reasoning", REASONING_CLOSE: None, ANSWER_OPEN: "answer", ANSWER_CLOSE: None}
LABELS = {"reasoning": "Reasoning:", "answer": "Answer:"}
THINKING = "thinking…"


def _stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


# ----------------------------------------------------------------------------------------------- generation


def _generate(model, tokenizer, question: str, config: ChatConfig, streamer=None) -> Reply:
    g = config.generation
    prompt = build_prompt(question, config.chat.prompt())
    (replies,) = generate_replies(
        model,
        tokenizer,
        [prompt],
        temperature=g.temperature,
        top_p=g.top_p,
        max_completion_length=g.max_completion_length,
        batch_size=1,
        seed=g.seed,
        progress=False,
        streamer=streamer,
    )
    return replies[0]


def ask(model, tokenizer, question: str, config: ChatConfig) -> str:
    """One sampled reply; the system prompt is ChatArgs.prompt()'s (the format prompt when an adapter is loaded)."""
    return _generate(model, tokenizer, question, config).text


class PieceStreamer(TextStreamer):
    """transformers' TextStreamer handing each finished piece of text to `on_text` instead of printing it.

    It decodes the tokens of the current line together and lets text out up to the last space (or a whole CJK
    character, or a line end), so a piece never holds half a word's tokenization or half a multi-byte character.
    The pieces joined are the reply's text. `tokens` counts the generated tokens seen so far. Setting `stop`
    ends the reply at the next token, between two pieces (KeyboardInterrupt from `put`)."""

    def __init__(self, tokenizer, on_text: Write):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text
        self.tokens = 0
        self.stop = False

    def put(self, value) -> None:
        if self.stop:
            raise KeyboardInterrupt
        if not self.next_tokens_are_prompt:
            self.tokens += value.numel()
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.on_text(text)


# ----------------------------------------------------------------------------------------------- showing a reply


class ReplyView:
    """Shows a reply that arrives in pieces, as it arrives.

    raw: the text exactly as generated. split: what is inside <reasoning> under a "Reasoning:" label and what is
    inside <answer> under an "Answer:" label, the tags left out; text outside the tags is shown as it is. answer:
    only what is inside <answer>, after a "thinking…" line that shows the model is at work. A tag may come split
    across pieces ("<reas", "oning>"): text that could be the start of a tag waits for the next piece. Whitespace
    at the start and end of each section is dropped. A reply without an <answer> tag is still shown whole, with a
    note saying so. `text` holds everything fed, as written."""

    def __init__(self, show: str, write: Write):
        self.show = show
        self.text = ""
        self._write = write
        self._held = ""  # not shown yet: possibly the start of a tag
        self._section: str | None = None  # "reasoning", "answer", or None outside the tags
        self._seen: set[str] = set()
        self._fresh = True  # at the start of a section: leading whitespace is dropped
        self._space = ""  # whitespace held back until more text of the same section follows
        self._line_open = False  # what was written last does not end its line
        if show == "answer":
            self._out(THINKING)

    def feed(self, text: str) -> None:
        self.text += text
        if self.show == "raw":
            self._out(text)
            return
        self._held += text
        self._scan(final=False)

    def close(self, stopped: bool = False) -> None:
        """The reply is complete, or `stopped` part-way: show what was held back, and a note where the tags are
        missing (in answer mode, with the reply as written: a reply is never left unseen)."""
        if self.show != "raw":
            self._scan(final=True)
        self._newline()
        if self.show == "raw" or (stopped and self.show == "split"):
            return
        if not self.text.strip():
            self._out("" if stopped else "(empty reply)\n")
        elif self.show == "answer" and extract_tagged_answer(self.text) is None:
            why = "stopped before the answer" if stopped else f"no {ANSWER_OPEN} tag"
            self._out(f"({why}; the reply as written:)\n{self.text.strip()}\n")
        elif self.show == "split" and "answer" not in self._seen:
            missing = f"{REASONING_OPEN}/{ANSWER_OPEN} tags" if not self._seen else f"{ANSWER_OPEN} tag"
            self._out(f"(no {missing}; the reply is shown as written)\n")

    def _scan(self, final: bool) -> None:
        while self._held:
            start = self._held.find("<")
            # Each step takes its text off `_held` before showing it: nothing is shown twice.
            if start < 0:
                text, self._held = self._held, ""
                self._show(text)
                return
            if start > 0:
                text, self._held = self._held[:start], self._held[start:]
                self._show(text)
            tag = next((t for t in TAGS if self._held.startswith(t)), None)
            if tag is not None:
                self._held = self._held[len(tag) :]
                self._enter(TAGS[tag])
            elif not final and any(t.startswith(self._held) for t in TAGS):
                return  # the start of a tag, maybe: wait for the next piece
            else:
                self._held = self._held[1:]
                self._show("<")

    def _visible(self) -> bool:
        return self.show == "split" or self._section == "answer"

    def _enter(self, section: str | None) -> None:
        self._section, self._fresh, self._space = section, True, ""
        if section is not None:
            self._seen.add(section)
            if self._visible():
                self._newline()
                self._out(LABELS[section] + "\n")

    def _show(self, text: str) -> None:
        if not self._visible():
            return
        if self._fresh:
            text = text.lstrip()
            if not text:
                return
            self._fresh = False
            self._newline()
        body = text.rstrip()
        if body:
            body, self._space = self._space + body, ""
            self._out(body)
        self._space += text[len(text.rstrip()) :]

    def _newline(self) -> None:
        if self._line_open:
            self._out("\n")

    def _out(self, text: str) -> None:
        if text:
            self._write(text)
            self._line_open = not text.endswith("\n")


# ----------------------------------------------------------------------------------------------- the session


def answer(model, tokenizer, question: str, config: ChatConfig, write: Write, show: str) -> Reply | None:
    """Stream one reply to `write` as `show` says, then a statistics line. Ctrl-C stops the reply (None)."""
    view = ReplyView(show, write)
    streamer = PieceStreamer(tokenizer, view.feed)
    start = time.perf_counter()
    try:
        with _ctrl_c_stops(streamer):
            reply = _generate(model, tokenizer, question, config, streamer)
    except KeyboardInterrupt:
        streamer.end()  # what was generated before the stop
        view.close(stopped=True)
        write(f"[stopped after {_stats(streamer.tokens, time.perf_counter() - start)}]\n")
        return None
    view.close()
    clipped = f"; cut at max_completion_length {config.generation.max_completion_length}" if reply.clipped else ""
    write(f"[{_stats(reply.num_tokens, time.perf_counter() - start)}{clipped}]\n")
    return reply


@contextmanager
def _ctrl_c_stops(streamer: PieceStreamer) -> Iterator[None]:
    """While a reply is generated, Ctrl-C stops it at the next token, so that the text shown so far stays whole; a
    second Ctrl-C interrupts at once. Off the main thread (where signals cannot be caught) Ctrl-C is left as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame) -> None:
        streamer.stop = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


def _stats(tokens: int, seconds: float) -> str:
    rate = tokens / seconds if seconds > 0 else 0.0
    return f"{tokens} token{'' if tokens == 1 else 's'} in {seconds:.1f} s, {rate:.1f} tokens/s"


def banner(config: ChatConfig, show: str) -> str:
    """Model, adapter, system prompt (shortened), sampling settings, and how to quit."""
    c, g = config.chat, config.generation
    model = config.model.model + (f" + adapter {c.adapter}" if c.adapter else " (no adapter)")
    prompt = c.prompt()
    if prompt is None:
        system = "none (the bare chat template)"
    elif prompt == SYSTEM_PROMPT:
        system = f'the format prompt ("{_shorten(prompt, 45)}")'
    else:
        system = f'"{_shorten(prompt, 70)}"' if prompt.strip() else "empty"
    return (
        f"r1lite chat: {model}\n"
        f"system prompt: {system}\n"
        f"sampling: temperature {g.temperature}, top_p {g.top_p}, seed {g.seed}, up to "
        f"{g.max_completion_length} new tokens; replies shown {show} (--show raw|split|answer)\n"
        "Each question is answered on its own, without memory of earlier ones. "
        "An empty line, Ctrl-D or Ctrl-C quits; Ctrl-C during a reply stops it.\n"
    )


def _shorten(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1].rstrip() + "…"


def chat(config: ChatConfig, questions: Iterable[str] | None = None, write: Write | None = None) -> None:
    """Answer `config.chat.question`, or each of `questions` (default: lines typed at the terminal) in a session.

    `write` receives everything shown, piece by piece (default: standard output, flushed at each piece)."""
    write = write or _stdout
    show = config.chat.view()
    if config.chat.question is not None:
        model, tokenizer = load_for_generation(config.model, config.remote.trust_remote_code, config.chat.adapter)
        if config.chat.show is None:  # the probe: the reply as generated and nothing else
            write(ask(model, tokenizer, config.chat.question, config) + "\n")
        else:
            answer(model, tokenizer, config.chat.question, config, write, show)
        return
    try:
        model, tokenizer = load_for_generation(config.model, config.remote.trust_remote_code, config.chat.adapter)
        write(banner(config, show))
        for question in questions if questions is not None else _typed(write):
            if not question.strip():
                break
            answer(model, tokenizer, question, config, write, show)
    except KeyboardInterrupt:  # while loading, or a second Ctrl-C while a stopped reply was being wrapped up
        write("\n")


def _typed(write: Write) -> Iterator[str]:
    """Lines typed after a "> " prompt until end of input or Ctrl-C; a line read from a pipe is echoed, so that
    the transcript shows the question."""
    terminal = sys.stdin.isatty()
    if terminal:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
    while True:
        try:
            line = input("> ")
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return
        if not terminal:
            write(line + "\n")
        yield line
