"""``arith``: generated arithmetic word problems with integer answers, in GSM8K's row shape.

GSM8K is out of reach for a 135M model, so its correctness reward never moves; these problems can be
made as easy as needed (one-digit operands, one operation) and harder step by step, fully offline.

A problem is a chain evaluated left to right, ``((a op1 b) op2 c) ...``, which is how a story is told
("she has 7, buys 5 more, then eats 3"), so operator precedence never comes into it. Rules:

- operands are 1 .. 10**digits - 1; operators come from ``+ - *`` (no division, so answers are integers);
- subtraction never takes a running total below zero (a story cannot eat 9 of 5 apples), so every
  intermediate and final answer is a non-negative integer;
- the split is a property of the problem, not of the draw: a problem is in ``test`` when a stable hash
  of its canonical text (``7+5*3``) is 0 mod 10, else in ``train``. Train and test never share a problem,
  for any seed and across specs (``7+5`` is in the same split for ``digits=1`` and ``digits=2``);
- within a split, problems are distinct. When ``n`` exceeds the number of distinct problems (small specs),
  problems repeat in new wordings (never the same question text twice) with a warning; asking for more
  rows than problems x wordings is an error.

Rows are ``{"question", "answer"}`` where ``answer`` is a short worked solution, one step per line,
ending with ``#### <integer>``, so the GSM8K preparation in ``r1lite.data`` applies unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import operator
import random
from dataclasses import dataclass, field, fields
from typing import NamedTuple

from r1lite.errors import DataError

logger = logging.getLogger(__name__)

OPERATORS = "+-*"
MAX_DIGITS = 6
MAX_OPS = 5
SPLITS = ("train", "test")
TEST_BUCKETS = 10  # one problem in ten (by hash) is held out for test
ENUMERATE_LIMIT = 250_000  # specs with at most this many problems are listed exactly; larger ones are sampled
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul}


class ArithError(DataError):
    """A spec, dataset string or request the arith task cannot satisfy; the message says which field."""


@dataclass(frozen=True)
class ArithSpec:
    digits: int = field(default=1, metadata={"help": "Maximum digits per operand (1..10**digits-1)."})
    num_ops: int = field(default=1, metadata={"help": "Operations per problem; more means longer reasoning."})
    ops: str = field(default="+-", metadata={"help": "Allowed operators, any of '+-*' (no division)."})

    def __post_init__(self):
        for name, top in (("digits", MAX_DIGITS), ("num_ops", MAX_OPS)):
            value = getattr(self, name)
            # bool is an int subclass; digits=True is a mistake, not 1
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                raise ArithError(f"ArithSpec.{name} must be an integer from 1 to {top}, got {value!r}")
        if not isinstance(self.ops, str) or not self.ops:
            raise ArithError(f"ArithSpec.ops must be a non-empty string of operators from '{OPERATORS}'")
        unknown = sorted(set(self.ops) - set(OPERATORS))
        if unknown:
            raise ArithError(f"ArithSpec.ops: unknown operator(s) {unknown}; allowed: {OPERATORS!r}")
        if len(set(self.ops)) != len(self.ops):
            raise ArithError(f"ArithSpec.ops lists an operator twice: {self.ops!r}")

    @property
    def max_operand(self) -> int:
        return 10**self.digits - 1

    def __str__(self) -> str:
        return f"arith:digits={self.digits},num_ops={self.num_ops},ops={self.ops}"


class Problem(NamedTuple):
    operands: tuple[int, ...]
    ops: tuple[str, ...]

    @property
    def key(self) -> str:
        """Canonical text, e.g. ``7+5*3`` (read left to right); the split hash is taken over it."""
        parts = [str(self.operands[0])]
        for op, b in zip(self.ops, self.operands[1:], strict=True):
            parts += [op, str(b)]
        return "".join(parts)

    def steps(self) -> list[tuple[int, str, int, int]]:
        """``(left, op, right, result)`` per operation, left to right."""
        out, value = [], self.operands[0]
        for op, b in zip(self.ops, self.operands[1:], strict=True):
            result = _APPLY[op](value, b)
            out.append((value, op, b, result))
            value = result
        return out

    @property
    def value(self) -> int:
        return self.steps()[-1][3]


def split_of(problem: Problem) -> str:
    """``test`` or ``train``, from a hash that does not change between runs (unlike Python's ``hash``)."""
    digest = hashlib.blake2b(problem.key.encode(), digest_size=8).digest()
    return "test" if int.from_bytes(digest, "big") % TEST_BUCKETS == 0 else "train"


# ------------------------------------------------------------------------------------------- wordings


class Template(NamedTuple):
    noun: str
    plural: str
    start: str
    add: str
    sub: str
    mul: str
    question: str


# Placeholders: {name} {p} {o} {pos} (pronouns), {a}/{b} a quantity with its noun ("5 apples"),
# {b_more} ("5 more apples"), {n} a bare number.
TEMPLATES = (
    Template(
        "apple",
        "apples",
        "{name} has {a}.",
        "{p} picks {b_more} from the tree.",
        "{p} eats {b}.",
        "{p} swaps them for {n} times as many apples.",
        "How many apples does {name} have now?",
    ),
    Template(
        "coin",
        "coins",
        "{name} has {a} in a jar.",
        "{p} finds {b_more}.",
        "{p} spends {b} on a snack.",
        "{p} exchanges them for {n} times as many coins.",
        "How many coins does {name} have now?",
    ),
    Template(
        "marble",
        "marbles",
        "{name} has a bag with {a}.",
        "a friend gives {o} {b_more}.",
        "{p} loses {b} in the park.",
        "{p} wins a game that multiplies {pos} marbles by {n}.",
        "How many marbles does {name} have now?",
    ),
    Template(
        "sticker",
        "stickers",
        "{name} owns {a}.",
        "{p} buys {b_more}.",
        "{p} gives {b} to a friend.",
        "the number of stickers {p} owns grows to {n} times what it was.",
        "How many stickers does {name} own now?",
    ),
    Template(
        "book",
        "books",
        "There are {a} on {name}'s shelf.",
        "{name} adds {b_more}.",
        "{name} donates {b}.",
        "the number of books on the shelf becomes {n} times as large.",
        "How many books are on the shelf now?",
    ),
    Template(
        "cookie",
        "cookies",
        "{name} bakes {a}.",
        "{p} bakes {b_more}.",
        "{p} gives {b} to the neighbours.",
        "a bigger batch leaves {o} with {n} times as many cookies as before.",
        "How many cookies does {name} have now?",
    ),
    Template(
        "seashell",
        "seashells",
        "{name} has {a}.",
        "{p} collects {b_more} at the beach.",
        "{p} gives {b} to {pos} cousin.",
        "after another trip, {p} has {n} times as many seashells as before.",
        "How many seashells does {name} have now?",
    ),
)

# (name, subject, object, possessive)
NAMES = (
    ("Maya", "she", "her", "her"),
    ("Omar", "he", "him", "his"),
    ("Lena", "she", "her", "her"),
    ("Kofi", "he", "him", "his"),
    ("Priya", "she", "her", "her"),
    ("Tomas", "he", "him", "his"),
    ("Aiko", "she", "her", "her"),
    ("Diego", "he", "him", "his"),
    ("Zara", "she", "her", "her"),
    ("Ivan", "he", "him", "his"),
)
SURFACES = tuple((t, n) for t in range(len(TEMPLATES)) for n in range(len(NAMES)))


def _quantity(count: int, template: Template, more: bool = False) -> str:
    noun = template.noun if count == 1 else template.plural
    return f"{count} more {noun}" if more else f"{count} {noun}"


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


def render(problem: Problem, surface: int) -> dict[str, str]:
    """The row of one problem in one wording: a word problem and its worked solution."""
    template = TEMPLATES[SURFACES[surface][0]]
    name, subj, obj, pos = NAMES[SURFACES[surface][1]]
    words = {"name": name, "p": subj, "o": obj, "pos": pos}
    start = problem.operands[0]
    sentences = [template.start.format(a=_quantity(start, template), **words)]
    lines = [f"Start with {_quantity(start, template)}."]
    for i, (left, op, b, result) in enumerate(problem.steps()):
        phrase = {"+": template.add, "-": template.sub, "*": template.mul}[op]
        text = phrase.format(b=_quantity(b, template), b_more=_quantity(b, template, more=True), n=b, **words)
        # "Then" marks the order of events, which is the order of evaluation.
        sentences.append(_sentence(text) if i == 0 else f"Then {text}")
        lines.append(f"{left} {op} {b} = {result}")
    sentences.append(template.question.format(**words))
    lines.append(f"#### {problem.value}")
    return {"question": " ".join(sentences), "answer": "\n".join(lines)}


# ------------------------------------------------------------------------------------------- problems


class _TooMany(Exception):
    pass


def _enumerate(spec: ArithSpec, limit: int) -> list[Problem]:
    """Every valid problem of the spec in a fixed order; raises _TooMany past `limit` problems.

    Subtraction below zero is pruned as early as it appears, so subtraction-heavy specs whose raw space is
    huge but whose valid space is small (``digits=1,num_ops=5,ops=-`` has 210 problems) are still listed.
    """
    out: list[Problem] = []
    numbers = range(1, spec.max_operand + 1)

    def extend(operands: list[int], ops: list[str], value: int) -> None:
        if len(ops) == spec.num_ops:
            if len(out) == limit:
                raise _TooMany
            out.append(Problem(tuple(operands), tuple(ops)))
            return
        for op in spec.ops:
            for b in numbers:
                if op == "-" and b > value:
                    break  # numbers ascend: every larger b is negative too
                extend(operands + [b], ops + [op], _APPLY[op](value, b))

    for a in numbers:
        extend([a], [], a)
    return out


@functools.lru_cache(maxsize=2)  # one spec is used at a time; a listed space can hold 250k problems
def _pools(spec: ArithSpec) -> dict[str, tuple[Problem, ...]] | None:
    try:
        problems = _enumerate(spec, ENUMERATE_LIMIT)
    except _TooMany:
        return None
    pools: dict[str, list[Problem]] = {split: [] for split in SPLITS}
    for problem in problems:
        pools[split_of(problem)].append(problem)
    return {split: tuple(pool) for split, pool in pools.items()}


def _split_pool(spec: ArithSpec, split: str) -> tuple[Problem, ...] | None:
    """All problems of a split when the space is small enough to list, else None (then we sample)."""
    pools = _pools(spec)
    return None if pools is None else pools[split]


def max_rows(spec: ArithSpec, split: str) -> int | None:
    """The most rows ``generate`` can return for this split (problems x wordings); None when sampled.

    A loader can cap its request with it, e.g. to evaluate once on every test problem of a small spec.
    """
    pool = _split_pool(spec, split)
    return None if pool is None else len(pool) * len(SURFACES)


def _draw(spec: ArithSpec, rng: random.Random) -> Problem | None:
    """One random valid problem (None when a subtraction finds nothing left to take)."""
    value = rng.randint(1, spec.max_operand)
    operands, ops = [value], []
    for _ in range(spec.num_ops):
        op = rng.choice(spec.ops)
        if op == "-" and value < 1:
            return None
        # Drawing the subtrahend below the running total keeps every draw valid, at the cost of
        # slightly favouring small numbers after a subtraction; large spaces only, where that is harmless.
        b = rng.randint(1, min(spec.max_operand, value)) if op == "-" else rng.randint(1, spec.max_operand)
        value = _APPLY[op](value, b)
        operands.append(b)
        ops.append(op)
    return Problem(tuple(operands), tuple(ops))


def _sample_distinct(spec: ArithSpec, split: str, n: int, rng: random.Random) -> list[Problem]:
    seen: set[Problem] = set()
    out: list[Problem] = []
    attempts = 50 * n + 10_000  # test keeps ~1 draw in 10, so this is generous
    while len(out) < n and attempts:
        attempts -= 1
        problem = _draw(spec, rng)
        if problem is not None and problem not in seen and split_of(problem) == split:
            seen.add(problem)
            out.append(problem)
    if len(out) < n:
        raise ArithError(
            f"{spec} [{split}]: found only {len(out)} distinct problems of the {n} asked for; "
            "ask for fewer rows or widen the spec (more digits, more operators)"
        )
    return out


def _choose(spec: ArithSpec, split: str, n: int, rng: random.Random) -> list[tuple[Problem, int]]:
    """``n`` (problem, wording round) pairs: every distinct problem once before any repeats."""
    pool = _split_pool(spec, split)
    if pool is None:
        return [(p, 0) for p in _sample_distinct(spec, split, n, rng)]
    capacity = len(pool) * len(SURFACES)
    if n > capacity:
        raise ArithError(
            f"{spec} [{split}]: asked for {n} rows but the spec has only {len(pool)} distinct problems in "
            f"this split x {len(SURFACES)} wordings = {capacity} distinct questions; ask for fewer rows "
            "or widen the spec (e.g. arith:digits=2 or num_ops=2)"
        )
    if n > len(pool):
        logger.warning(
            "%s [%s]: %d rows from %d distinct problems; problems repeat in other wordings", spec, split, n, len(pool)
        )
    order = list(pool)
    rng.shuffle(order)
    return [(order[i % len(order)], i // len(order)) for i in range(n)]


def generate(n: int, split: str = "train", seed: int = 0, spec: ArithSpec = ArithSpec()) -> list[dict[str, str]]:
    """``n`` rows ``{"question", "answer"}``, deterministic in (n, split, seed, spec); see the module doc."""
    if split not in SPLITS:
        raise ArithError(f"arith: unknown split {split!r}; use one of {SPLITS}")
    if not isinstance(n, int) or n < 0:
        raise ArithError(f"arith: n must be a non-negative integer, got {n!r}")
    # A string seed is hashed with SHA-512 by `random`, so the stream is the same in every process.
    rng = random.Random(f"arith|{spec}|{split}|{seed}")
    rows = []
    for problem, round_ in _choose(spec, split, n, rng):
        # Each problem owns a shuffled list of wordings, so its k-th appearance never repeats an earlier one.
        wordings = list(range(len(SURFACES)))
        random.Random(f"arith-wording|{seed}|{problem.key}").shuffle(wordings)
        rows.append(render(problem, wordings[round_]))
    return rows


# ------------------------------------------------------------------------------------------- dataset strings


def parse_spec(text: str) -> ArithSpec:
    """``arith`` or ``arith:digits=2,num_ops=2,ops=+-*`` -> ArithSpec; unknown keys are named in the error."""
    name, _, options = text.strip().partition(":")
    if name != "arith":
        raise ArithError(f"not an arith dataset string: {text!r} (expected 'arith' or 'arith:key=value,...')")
    kinds = {f.name: f.type for f in fields(ArithSpec)}
    values: dict[str, int | str] = {}
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, eq, raw = (s.strip() for s in item.partition("="))
        if key not in kinds:
            raise ArithError(f"{text!r}: unknown key {key!r}; known keys: {', '.join(kinds)}")
        if not eq or not raw:
            raise ArithError(f"{text!r}: key {key!r} needs a value, e.g. {key}={getattr(ArithSpec(), key)}")
        if key in values:
            raise ArithError(f"{text!r}: key {key!r} given twice")
        if kinds[key] == "int":  # annotations are strings under `from __future__ import annotations`
            try:
                values[key] = int(raw)
            except ValueError:
                raise ArithError(f"{text!r}: {key} must be an integer, got {raw!r}") from None
        else:
            values[key] = raw
    return ArithSpec(**values)


def from_dataset_string(s: str, split: str, n: int, seed: int) -> list[dict[str, str]]:
    """Rows for a ``--dataset arith[:key=value,...]`` string (the entry point of ``r1lite.data``)."""
    return generate(n, split=split, seed=seed, spec=parse_spec(s))
