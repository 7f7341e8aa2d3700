"""The arith task: answers checked by recomputing every step, determinism, disjoint splits, spec errors."""

import logging
import operator
import re

import pytest

from r1lite.tasks import arith
from r1lite.tasks.arith import ArithError, ArithSpec

STEP = re.compile(r"^(\d+) ([+*-]) (\d+) = (\d+)$")
PYTHON_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}

SPECS = [
    ArithSpec(),
    ArithSpec(digits=1, num_ops=2, ops="+-*"),
    ArithSpec(digits=2, num_ops=1, ops="*"),
    ArithSpec(digits=1, num_ops=4, ops="-"),  # tiny valid space inside a large raw one
    ArithSpec(digits=2, num_ops=3, ops="+-*"),  # too large to list: sampled
]


def solve(row: dict) -> tuple[tuple[int, ...], tuple[str, ...], int]:
    """Check a row's worked solution with Python arithmetic; return (operands, ops, final answer)."""
    lines = row["answer"].split("\n")
    start = re.fullmatch(r"Start with (\d+) \w+\.", lines[0])
    assert start, lines[0]
    value = int(start.group(1))
    operands, ops = [value], []
    for line in lines[1:-1]:
        match = STEP.match(line)
        assert match, f"not a step: {line!r}"
        left, op, right, result = int(match[1]), match[2], int(match[3]), int(match[4])
        assert left == value, f"step does not continue from the running total: {line!r}"
        assert PYTHON_OPS[op](left, right) == result, f"wrong arithmetic: {line!r}"
        assert result >= 0
        operands.append(right)
        ops.append(op)
        value = result
    assert lines[-1] == f"#### {value}"
    return tuple(operands), tuple(ops), value


def problem_key(row: dict) -> tuple:
    operands, ops, _ = solve(row)
    return operands, ops


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("split", ["train", "test"])
def test_every_answer_recomputes(spec, split):
    for row in arith.generate(30, split=split, seed=3, spec=spec):
        operands, ops, _ = solve(row)
        assert len(ops) == spec.num_ops and set(ops) <= set(spec.ops)
        assert all(1 <= x <= 10**spec.digits - 1 for x in operands)
        # The story states exactly the solution's numbers, in order (one number per sentence).
        assert [int(x) for x in re.findall(r"\d+", row["question"])] == list(operands)
        assert row["question"].endswith("?")


def test_deterministic_and_seeded():
    spec = ArithSpec(digits=2, num_ops=2)
    assert arith.generate(50, "train", 7, spec) == arith.generate(50, "train", 7, spec)
    assert arith.generate(50, "train", 7, spec) != arith.generate(50, "train", 8, spec)
    sampled = ArithSpec(digits=3, num_ops=3, ops="+-*")
    assert arith.generate(20, "test", 1, sampled) == arith.generate(20, "test", 1, sampled)


@pytest.mark.parametrize("spec", SPECS[:4], ids=str)
def test_splits_never_share_a_problem(spec):
    sizes = {split: len(arith._split_pool(spec, split)) for split in ("train", "test")}
    train = {problem_key(r) for r in arith.generate(sizes["train"], "train", 0, spec)}
    test = {problem_key(r) for r in arith.generate(sizes["test"], "test", 5, spec)}
    assert test and train and not train & test
    # As many rows as problems gives every problem once, and the two splits cover the whole space.
    assert (len(train), len(test)) == (sizes["train"], sizes["test"])
    assert len(train) + len(test) == len(arith._enumerate(spec, 10**6))


def test_sampled_splits_are_disjoint_and_distinct():
    spec = ArithSpec(digits=2, num_ops=3, ops="+-*")
    assert arith.max_rows(spec, "train") is None  # this space is sampled, not listed
    train_rows = arith.generate(3000, "train", 0, spec)
    train = [problem_key(r) for r in train_rows]
    test = [problem_key(r) for r in arith.generate(500, "test", 0, spec)]
    assert len(set(train)) == len(train) and len(set(test)) == len(test)
    assert not set(train) & set(test)


def test_split_follows_from_the_problem_across_specs():
    # '7+5' is a one-digit and a two-digit problem: both specs must put it in the same split.
    small, wide = ArithSpec(digits=1, ops="+"), ArithSpec(digits=2, ops="+")
    for split in ("train", "test"):
        every = len(arith._split_pool(small, split))
        narrow = {problem_key(r) for r in arith.generate(every, split, 0, small)}
        other = "test" if split == "train" else "train"
        assert not narrow & {problem_key(r) for r in arith.generate(2000, other, 0, wide)}


def test_problems_distinct_until_the_space_runs_out(caplog):
    spec = ArithSpec()
    problems = len(arith._split_pool(spec, "train"))
    rows = arith.generate(problems, "train", 0, spec)
    assert len({problem_key(r) for r in rows}) == problems
    with caplog.at_level(logging.WARNING, logger="r1lite.tasks.arith"):
        rows = arith.generate(3 * problems, "train", 0, spec)
    assert "repeat" in caplog.text
    assert len({r["question"] for r in rows}) == len(rows)  # repeats are new wordings


def test_more_rows_than_questions_is_an_error():
    spec = ArithSpec(ops="-")
    capacity = arith.max_rows(spec, "test")
    assert len(arith.generate(capacity, "test", 0, spec)) == capacity
    with pytest.raises(ArithError, match="distinct questions"):
        arith.generate(capacity + 1, "test", 0, spec)


def test_sampled_space_too_small_is_an_error(monkeypatch):
    # Pretend the tiny space is too large to list, so it goes through the sampler.
    monkeypatch.setattr(arith, "ENUMERATE_LIMIT", 3)
    arith._pools.cache_clear()
    try:
        spec = ArithSpec(ops="-")
        assert arith.max_rows(spec, "test") is None
        with pytest.raises(ArithError, match="distinct problems"):
            arith.generate(10, "test", 0, spec)
    finally:
        arith._pools.cache_clear()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"digits": 0}, "digits"),
        ({"digits": 7}, "digits"),
        ({"digits": True}, "digits"),
        ({"num_ops": 0}, "num_ops"),
        ({"num_ops": 2.0}, "num_ops"),
        ({"ops": ""}, "ops"),
        ({"ops": "+/"}, "ops"),
        ({"ops": "++"}, "ops"),
    ],
)
def test_spec_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"ArithSpec\.{field}"):
        ArithSpec(**kwargs)


@pytest.mark.parametrize("kwargs, match", [({"split": "validation"}, "split"), ({"n": -1}, "n must")])
def test_generate_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ArithError, match=match):
        arith.generate(**{"n": 1, **kwargs})


@pytest.mark.parametrize(
    "text, spec",
    [
        ("arith", ArithSpec()),
        ("arith:", ArithSpec()),
        ("arith:digits=2,num_ops=2", ArithSpec(digits=2, num_ops=2)),
        ("arith: ops=+-* , digits=3", ArithSpec(digits=3, ops="+-*")),
        ("arith:ops=*,", ArithSpec(ops="*")),
    ],
)
def test_parse_spec(text, spec):
    assert arith.parse_spec(text) == spec


@pytest.mark.parametrize(
    "text, match",
    [
        ("arith:digit=2", "unknown key 'digit'"),
        ("arith:digits=2,level=3", "unknown key 'level'"),
        ("arith:digits=two", "digits must be an integer"),
        ("arith:digits", "key 'digits' needs a value"),
        ("arith:digits=1,digits=2", "given twice"),
        ("arith:digits=9", r"ArithSpec\.digits"),
        ("arithmetic", "not an arith dataset string"),
    ],
)
def test_parse_spec_errors(text, match):
    with pytest.raises(ArithError, match=match):
        arith.parse_spec(text)


def test_from_dataset_string():
    rows = arith.from_dataset_string("arith:digits=2,num_ops=2", split="test", n=12, seed=4)
    assert rows == arith.generate(12, "test", 4, ArithSpec(digits=2, num_ops=2))
    assert all(len(solve(r)[1]) == 2 for r in rows)


def test_rows_go_through_gsm8k_preparation():
    from r1lite.data import extract_gold, prepare

    rows = arith.generate(20, "train", 0, ArithSpec(digits=2, num_ops=2, ops="+-*"))
    dataset, stats = prepare(rows)
    assert stats.kept == 20 and stats.dropped == 0
    assert dataset["answer"] == [str(solve(r)[2]) for r in rows] == [extract_gold(r["answer"]) for r in rows]
