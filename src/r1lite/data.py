"""GSM8K (or any question/answer set in its shape) prepared as the recipe says.

Each prepared row holds ``prompt`` (a conversation: the format system prompt, optional worked
examples, the question), ``answer`` (the gold final answer: the text after ``####``) and
``question``. Rows that cannot be scored are dropped and counted, never silently kept.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset

from r1lite.errors import DataError
from r1lite.prompts import SYSTEM_PROMPT, format_reply

logger = logging.getLogger(__name__)

HUB_GSM8K = "openai/gsm8k"
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
_CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations: 48/2 = <<48/2=24>>24


@dataclass
class PrepStats:
    kept: int = 0
    missing_fields: int = 0
    no_gold: int = 0
    too_long: int = 0

    @property
    def dropped(self) -> int:
        return self.missing_fields + self.no_gold + self.too_long


def extract_gold(answer: str) -> str | None:
    """The final answer of a GSM8K worked solution: the text after the last ``####``, stripped."""
    if "####" not in answer:
        return None
    gold = answer.rsplit("####", 1)[1].strip()
    return gold or None


def worked_reasoning(answer: str) -> str:
    """The reasoning part of a GSM8K solution, without calculator annotations or the final line."""
    return _CALCULATOR.sub("", answer.rsplit("####", 1)[0]).strip()


def target_reply(answer: str) -> str:
    """A GSM8K solution rendered in the recipe's reply format (few-shot examples and SFT data)."""
    gold = extract_gold(answer)
    if gold is None:
        raise DataError("a worked solution needs a final '#### <answer>' line")
    return format_reply(worked_reasoning(answer), gold)


# ----------------------------------------------------------------------------------------------- loading


def _find_split_file(folder: Path, split: str) -> Path:
    candidates = [folder / f"{split}{suffix}" for suffix in LOCAL_SUFFIXES]
    candidates += sorted(folder.glob(f"{split}-*.parquet")) + sorted(folder.glob(f"**/{split}-*.parquet"))
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(f"no '{split}' file in {folder} (expected {split}.jsonl, {split}.json or {split}.parquet)")


def _read_file(path: Path) -> list[dict[str, Any]]:
    """Rows of a local file. A row that parses but cannot be scored is dropped and counted later (`prepare`); a
    file that does not parse stops here, saying where: silently skipping corrupt lines would hide a broken copy."""
    from datasets import load_dataset

    if path.suffix not in LOCAL_SUFFIXES:
        raise DataError(
            f"{path}: unsupported file type '{path.suffix}'; use one of {', '.join(LOCAL_SUFFIXES)} "
            "with 'question' and 'answer' fields"
        )
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty")
    if path.suffix == ".jsonl":
        rows = _read_jsonl(path)
    else:
        builder = "parquet" if path.suffix == ".parquet" else "json"
        try:
            rows = load_dataset(builder, data_files=str(path), split="train").to_list()
        except Exception as exc:  # datasets raises many types for malformed files
            raise DataError(f"could not read {path}: {str(exc)[:300]}") from exc
    _check_columns(rows, path)
    return rows


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}, line {number}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                    "re-encode the file as UTF-8"
                ) from exc
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}, line {number}: not valid JSON ({exc.msg}, column {exc.colno}); fix or delete that line"
                ) from exc
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {number}: a row is a JSON object with 'question' and 'answer'")
            rows.append(row)
    return rows


def _check_columns(rows: list[dict[str, Any]], path: Path) -> None:
    """A file none of whose rows has a needed field is the wrong file, not a file with a few bad rows."""
    if not rows:
        raise DataError(f"{path} has no rows")
    found = set().union(*(row.keys() for row in rows))
    missing = [name for name in ("question", "answer") if name not in found]
    if missing:
        names = " or ".join(f"'{name}'" for name in missing)
        raise DataError(
            f"{path}: no {names} field in any row (fields found: {', '.join(sorted(found)) or 'none'}); "
            "GSM8K-style data has 'question' and 'answer'"
        )


def _read_hub(name: str, split: str) -> list[dict[str, Any]]:
    from datasets import load_dataset

    config = "main" if name == HUB_GSM8K else None
    try:
        return load_dataset(name, config, split=split).to_list()
    except Exception as exc:  # offline, unknown repo, unknown split
        raise DataError(
            f"could not load '{name}' (split '{split}') from the Hugging Face hub: {str(exc)[:200]}\n"
            "Offline? Pass a local copy instead: --dataset path/to/gsm8k (a folder with train.jsonl and "
            "test.jsonl) or --dataset path/to/train.jsonl."
        ) from exc


def load_rows(dataset: str, split: str = "train", n: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Raw rows (``question``, ``answer``) from a hub id, a file, a folder, or the ``arith`` task."""
    if dataset == "arith" or dataset.startswith("arith:"):
        return _arith_rows(dataset, split, n, seed)
    path = Path(dataset).expanduser()
    if path.is_dir():
        return _read_file(_find_split_file(path, split))
    if path.is_file():
        return _read_file(path)
    if path.suffix in LOCAL_SUFFIXES or dataset.startswith((".", "/", "~")):
        raise DataError(f"dataset file not found: {path}")
    return _read_hub(dataset, split)


def _arith_rows(dataset: str, split: str, n: int | None, seed: int) -> list[dict[str, Any]]:
    from r1lite.tasks import arith

    try:
        spec = arith.parse_spec(dataset)
        # Test: every problem of the split once (wordings beyond that add nothing). Train: plenty to sample.
        wanted = n or (2000 if split == "train" else 200)
        cap = arith.max_rows(spec, split)
        if cap is not None:
            distinct = cap // len(arith.SURFACES)
            wanted = min(wanted, cap if split == "train" else distinct)
        return arith.generate(wanted, split=split, seed=seed, spec=spec)
    except arith.ArithError as exc:
        raise DataError(f"--dataset {dataset}: {exc}") from exc


# ----------------------------------------------------------------------------------------------- prompts


def few_shot_messages(pool: list[dict[str, Any]], k: int, question: str, rng: random.Random) -> list[dict]:
    """K worked examples as user/assistant turns, drawn from `pool`, never the asked question itself."""
    if k == 0:
        return []
    # Draw one spare so that dropping the asked question still leaves k examples.
    drawn = rng.sample(pool, min(len(pool), k + 1))
    chosen = [row for row in drawn if row["question"].strip() != question.strip()][:k]
    if len(chosen) < k:
        raise DataError(f"few_shot={k} needs at least {k} usable rows besides the question, found {len(chosen)}")
    messages: list[dict] = []
    for row in chosen:
        messages.append({"role": "user", "content": row["question"]})
        messages.append({"role": "assistant", "content": target_reply(row["answer"])})
    return messages


def build_prompt(question: str, system_prompt: str | None = SYSTEM_PROMPT, shots: list[dict] | None = None):
    """The conversational prompt of one row; `system_prompt=None` gives the bare chat template."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    return messages + list(shots or []) + [{"role": "user", "content": question}]


def _usable(row: dict[str, Any], stats: PrepStats) -> str | None:
    question, answer = row.get("question"), row.get("answer")
    if not isinstance(question, str) or not question.strip() or not isinstance(answer, str):
        stats.missing_fields += 1
        return None
    gold = extract_gold(answer)
    if gold is None:
        stats.no_gold += 1
    return gold


def prepare(
    rows: list[dict[str, Any]],
    system_prompt: str | None = SYSTEM_PROMPT,
    few_shot: int = 0,
    few_shot_pool: list[dict[str, Any]] | None = None,
    tokenizer=None,
    max_prompt_length: int | None = None,
    seed: int = 0,
    source: str = "dataset",
) -> tuple[Dataset, PrepStats]:
    """Turn raw rows into training rows; drop and count what cannot be scored or does not fit."""
    stats = PrepStats()
    usable = [(row, gold) for row in rows if (gold := _usable(row, stats)) is not None]
    pool = [row for row, _ in usable] if few_shot_pool is None else _clean_pool(few_shot_pool)
    out = []
    for i, (row, gold) in enumerate(usable):
        # One generator per row: a row's examples do not depend on which rows came before it.
        shots = few_shot_messages(pool, few_shot, row["question"], random.Random(seed * 1_000_003 + i))
        prompt = build_prompt(row["question"], system_prompt, shots)
        if max_prompt_length and tokenizer is not None and _prompt_tokens(tokenizer, prompt) > max_prompt_length:
            stats.too_long += 1
            continue
        # `solution`: the worked solution, the target of the SFT warm-up.
        out.append({"prompt": prompt, "answer": gold, "question": row["question"], "solution": row["answer"]})
    stats.kept = len(out)
    _report(stats, source, max_prompt_length)
    if not out:
        raise DataError(
            f"{source}: no usable rows (need 'question' and an 'answer' ending with '#### <final answer>'; "
            f"{stats.missing_fields} missing fields, {stats.no_gold} without '####', {stats.too_long} too long)"
        )
    return Dataset.from_list(out), stats


def _clean_pool(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    stats = PrepStats()
    return [row for row in rows if _usable(row, stats) is not None]


def _prompt_tokens(tokenizer, prompt: list[dict]) -> int:
    encoded = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
    return len(encoded["input_ids"])


def _report(stats: PrepStats, source: str, max_prompt_length: int | None) -> None:
    if not stats.dropped:
        logger.info("%s: %d rows", source, stats.kept)
        return
    logger.warning(
        "%s: kept %d rows, dropped %d (%d missing question/answer, %d without '####', %d prompts over %s tokens)",
        source,
        stats.kept,
        stats.dropped,
        stats.missing_fields,
        stats.no_gold,
        stats.too_long,
        max_prompt_length,
    )


def load_prepared(
    dataset: str,
    split: str,
    system_prompt: str | None = SYSTEM_PROMPT,
    few_shot: int = 0,
    limit: int | None = None,
    tokenizer=None,
    max_prompt_length: int | None = None,
    seed: int = 0,
    sample: bool = False,
) -> Dataset:
    """Load, prepare and optionally cut one split to `limit` rows: its first usable rows, or with `sample` (held-out
    evaluation) `limit` usable rows drawn with `seed` from the whole split, kept in their order. Few-shot examples
    always come from 'train'."""
    rows = load_rows(dataset, split, n=None if sample else limit, seed=seed)
    pool = None
    if few_shot and split != "train":
        pool = load_rows(dataset, "train", n=max(64, few_shot * 8), seed=seed)
    prepared, _ = prepare(
        rows, system_prompt, few_shot, pool, tokenizer, max_prompt_length, seed, source=f"{dataset} [{split}]"
    )
    if limit is not None and limit < len(prepared):
        if sample:
            prepared = prepared.select(sorted(random.Random(seed).sample(range(len(prepared)), limit)))
        else:
            prepared = prepared.select(range(limit))
    return prepared
