"""GSM8K preparation: gold extraction, prompts, few-shot without leakage, dropped rows, file formats."""

import json

import pytest

from r1lite.data import (
    DataError,
    build_prompt,
    extract_gold,
    few_shot_messages,
    load_prepared,
    load_rows,
    prepare,
    target_reply,
    worked_reasoning,
)
from r1lite.prompts import SYSTEM_PROMPT


@pytest.mark.parametrize(
    "answer, gold",
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", "72"),
        ("He pays 2,125 in total.\n#### 2,125", "2,125"),
        ("The temperature fell.\n#### -10", "-10"),
        ("#### 1,450,000 ", "1,450,000"),
        ("no final line here", None),
        ("####   ", None),
    ],
)
def test_extract_gold(answer, gold):
    assert extract_gold(answer) == gold


def test_real_rows_become_conversational_prompts(gsm8k_rows):
    dataset, stats = prepare(gsm8k_rows[:10])
    assert stats.kept == 10 and stats.dropped == 0
    row = dataset[0]
    assert row["prompt"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": gsm8k_rows[0]["question"]},
    ]
    assert row["answer"] == "72" and row["question"] == gsm8k_rows[0]["question"]


def test_system_prompt_is_the_recipes_exact_text():
    expected = "\nRespond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>\n"
    assert SYSTEM_PROMPT == expected


def test_malformed_rows_are_dropped_and_counted(gsm8k_rows):
    bad = [
        {"question": "No final answer?", "answer": "It is 4."},
        {"question": "", "answer": "#### 3"},
        {"answer": "#### 3"},
        {"question": "What?", "answer": None},
        {"question": "Numbers?", "answer": 12},
    ]
    dataset, stats = prepare(gsm8k_rows[:3] + bad)
    assert (stats.kept, stats.no_gold, stats.missing_fields) == (3, 1, 4)
    assert len(dataset) == 3


def test_no_usable_rows_is_an_error():
    with pytest.raises(DataError, match="no usable rows"):
        prepare([{"question": "q", "answer": "no marker"}])


def test_target_reply_strips_calculator_annotations(gsm8k_rows):
    reply = target_reply(gsm8k_rows[0]["answer"])
    assert reply.startswith("<reasoning>\nNatalia sold 48/2 = 24 clips in May.")
    assert reply.endswith("</reasoning>\n<answer>\n72\n</answer>\n")
    assert "<<" not in worked_reasoning(gsm8k_rows[0]["answer"])


def test_few_shot_never_shows_the_asked_question(gsm8k_rows):
    import random

    pool = gsm8k_rows[:3]
    for seed in range(50):  # with k=2 of a 3-row pool, the asked question is drawn often
        shots = few_shot_messages(pool, 2, pool[0]["question"], random.Random(seed))
        users = [m["content"] for m in shots if m["role"] == "user"]
        assert len(users) == 2 and pool[0]["question"] not in users
        assert all(m["content"].startswith("<reasoning>\n") for m in shots if m["role"] == "assistant")


def test_few_shot_prompt_layout(gsm8k_rows):
    dataset, _ = prepare(gsm8k_rows[:20], few_shot=1, seed=3)
    prompt = dataset[5]["prompt"]
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user"]
    assert prompt[-1]["content"] == gsm8k_rows[5]["question"] != prompt[1]["content"]


def test_few_shot_needs_enough_rows():
    rows = [{"question": "q1", "answer": "#### 1"}]
    with pytest.raises(DataError, match="few_shot=1"):
        prepare(rows, few_shot=1)


def test_bare_prompt_has_no_system_message():
    assert build_prompt("Hi?", system_prompt=None) == [{"role": "user", "content": "Hi?"}]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_local_file_formats(tmp_path, gsm8k_rows, fmt):
    import datasets

    rows = gsm8k_rows[:5]
    path = tmp_path / f"train.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    else:
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    assert load_rows(str(path)) == rows
    assert load_rows(str(tmp_path), "train") == rows  # a folder holding train.<fmt>


def test_folder_split_and_limit(gsm8k_dir):
    test = load_prepared(str(gsm8k_dir), "test", limit=7)
    assert len(test) == 7 and test[0]["answer"] == "18"


def test_missing_inputs_are_clear(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_rows(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="no 'test' file"):
        load_rows(str(tmp_path), "test")
    (tmp_path / "train.csv").write_text("question,answer\n")
    with pytest.raises(DataError, match="unsupported"):
        load_rows(str(tmp_path / "train.csv"))


def test_offline_hub_error_says_how_to_pass_a_local_copy(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="--dataset path/to/gsm8k"):
        load_rows("openai/gsm8k-r1lite-missing", "train")


def test_long_prompts_are_dropped(gsm8k_rows, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    lengths = sorted(
        len(tokenizer.apply_chat_template(build_prompt(r["question"]), add_generation_prompt=True)["input_ids"])
        for r in gsm8k_rows[:10]
    )
    dataset, stats = prepare(gsm8k_rows[:10], tokenizer=tokenizer, max_prompt_length=lengths[4])
    assert stats.too_long == sum(n > lengths[4] for n in lengths) > 0
    assert stats.kept == len(dataset) == 10 - stats.too_long


# ----------------------------------------------------------------------------------------------- bad files
# A row that parses but cannot be scored is dropped and counted; a file that does not parse stops, saying where.


def _good_lines(gsm8k_rows, n=3):
    return [json.dumps(row) for row in gsm8k_rows[:n]]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "dataset file not found"),
        (b"", "is empty"),
        (b"\n\n", "has no rows"),
    ],
)
def test_missing_or_empty_files(tmp_path, content, message):
    path = tmp_path / "train.jsonl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_rows(str(path))


def test_a_broken_json_line_names_its_line(tmp_path, gsm8k_rows):
    lines = _good_lines(gsm8k_rows)
    lines.insert(2, '{"question": "cut short", "answ')
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train.jsonl, line 3: not valid JSON .*fix or delete that line"):
        load_rows(str(path))


def test_non_utf8_bytes_name_their_line(tmp_path, gsm8k_rows):
    path = tmp_path / "train.jsonl"
    path.write_bytes(("\n".join(_good_lines(gsm8k_rows, 2)) + "\n").encode() + b'{"question": "caf\xe9"}\n')
    with pytest.raises(DataError, match="line 3: not UTF-8 text .*re-encode the file as UTF-8"):
        load_rows(str(path))


def test_csv_is_refused_with_the_formats_that_work(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("question,answer\nWhat is 1+1?,#### 2\n")
    with pytest.raises(DataError, match=r"unsupported file type '.csv'; use one of .jsonl, .json, .parquet"):
        load_rows(str(path))


def test_a_parquet_file_with_the_wrong_schema_names_the_missing_field(tmp_path):
    from datasets import Dataset

    path = tmp_path / "train.parquet"
    Dataset.from_list([{"prompt": "What is 1+1?", "solution": "2"}]).to_parquet(str(path))
    with pytest.raises(DataError, match=r"no 'question' or 'answer' field in any row \(fields found: prompt, solution"):
        load_rows(str(path))


def test_rows_with_missing_or_extra_columns(tmp_path, gsm8k_rows):
    rows = [
        dict(gsm8k_rows[0], source="extra column, ignored"),
        {"question": "no answer here"},
        gsm8k_rows[1],
        {"question": "no marker", "answer": "it is 4"},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset, stats = prepare(load_rows(str(path)))
    assert len(dataset) == 2 and stats.missing_fields == 1 and stats.no_gold == 1
