"""`r1lite eval`: metrics on hand-written replies, batched generation, the command's files and errors."""

from __future__ import annotations

import json
from itertools import combinations
from types import SimpleNamespace

import pytest
import torch

from r1lite.attention import GROUPED_ATTENTION
from r1lite.callbacks import PeriodicEval
from r1lite.cli import main
from r1lite.config import ModelArgs
from r1lite.engine import _encode, decode, generate_replies
from r1lite.errors import EvalError
from r1lite.eval_metrics import (
    majority_vote,
    metrics_table,
    pass_at_k,
    pass_ks,
    score_question,
    summarise,
    vote_key,
)
from r1lite.evaluate import evaluate_model, run_name
from r1lite.models import load_for_generation
from r1lite.prompts import SYSTEM_PROMPT

GOOD = "<reasoning>\nJanet sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = 18.\n</reasoning>\n<answer>\n18\n</answer>\n"
UNTAGGED = "She makes $18 every day."
INLINE = "<reasoning>She earns $1,000.</reasoning> <answer>$1,000</answer>"
WRONG_TAG = "<answer>\n7\n</answer> because 18 is too many"


# ----------------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [(5, 2, 2, 0.7), (4, 0, 2, 0.0), (4, 4, 1, 1.0), (4, 1, 1, 0.25), (3, 1, 3, 1.0), (10, 3, 1, 0.3)],
)
def test_pass_at_k_known_cases(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


@pytest.mark.parametrize(("n", "c"), [(n, c) for n in range(1, 7) for c in range(n + 1)])
def test_pass_at_k_equals_the_share_of_k_subsets_with_a_correct_reply(n, c):
    replies = [True] * c + [False] * (n - c)
    for k in range(1, n + 1):
        subsets = list(combinations(replies, k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


@pytest.mark.parametrize(("n", "ks"), [(1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]), (8, [1, 2, 4, 8])])
def test_pass_ks(n, ks):
    assert pass_ks(n) == ks


@pytest.mark.parametrize(
    ("answers", "winner"),
    [
        (["5", "6", "5"], "5"),
        (["5", "6"], "5"),  # a tie goes to the answer seen first
        (["6", "5", "5", "6"], "6"),
        ([None, None, "7"], "7"),  # a reply without an answer abstains
        ([None, "", "  "], None),
        (["$1,000", "1000.0", "999"], "$1,000"),  # same value, one vote each
        (["Yes", " yes ", "no"], "Yes"),
        ([], None),
    ],
)
def test_majority_vote(answers, winner):
    assert majority_vote(answers) == winner


def test_vote_key_normalises_numbers_and_text():
    assert vote_key("$1,000") == vote_key("1000") == vote_key("1000.00")
    assert vote_key(" Two  Apples ") == vote_key("two apples")
    assert vote_key(None) is None and vote_key(" ") is None


def _record(gold: str, replies: list[str], tokens: int = 10) -> dict:
    return score_question("q", gold, replies, [tokens] * len(replies), [False] * len(replies))


def test_score_question_reads_each_reply_both_ways():
    record = score_question("q", "18", [GOOD, UNTAGGED, WRONG_TAG], [30, 8, 12], [False, False, True])
    assert record["tagged"] == ["18", None, "7"]
    assert record["last_number"] == ["18", "18", "18"]
    assert record["strict"] == [True, False, False]
    assert record["lenient"] == [True, True, True]
    assert record["format_strict"] == [True, False, False]
    assert record["format_soft"] == [True, False, False]
    assert record["vote_strict"] == "18" and record["vote_strict_correct"]  # '18' and '7' tie; '18' came first


def test_summarise_one_reply_per_question():
    records = [
        _record("18", [GOOD], 30),
        _record("18", [UNTAGGED], 8),
        _record("1000", [INLINE], 20),
        _record("18", [WRONG_TAG], 10),
    ]
    assert summarise(records) == {
        "n": 4,
        "num_samples": 1,
        "accuracy_strict": 0.5,  # GOOD, and INLINE: '$1,000' equals '1000'
        "accuracy_lenient": 1.0,  # WRONG_TAG's last number is the 18 outside its tag
        "format_strict": 0.25,
        "format_soft": 0.5,  # INLINE is tagged but not one tag per line
        "mean_completion_tokens": 17.0,
        "clipped_ratio": 0.0,
    }


def test_summarise_several_samples_adds_pass_at_k_and_majority():
    records = [
        _record("18", [GOOD, UNTAGGED, "<answer>3</answer>", "<answer>18</answer>"]),  # strict 2 of 4
        _record("5", ["<answer>4</answer>", "<answer>4</answer>", "<answer>5</answer>", "no idea"]),  # 1 of 4
    ]
    metrics = summarise(records)
    assert metrics["num_samples"] == 4
    assert metrics["accuracy_strict"] == pytest.approx(3 / 8)
    assert metrics["pass@1_strict"] == pytest.approx(3 / 8)
    assert metrics["pass@2_strict"] == pytest.approx((pass_at_k(4, 2, 2) + pass_at_k(4, 1, 2)) / 2)
    assert metrics["pass@4_strict"] == 1.0
    assert metrics["maj@4_strict"] == 0.5  # '18' wins the first vote, '4' the second
    assert set(metrics) >= {"pass@4_lenient", "maj@4_lenient"}


def test_summarise_rejects_uneven_or_missing_records():
    with pytest.raises(ValueError):
        summarise([])
    with pytest.raises(ValueError):
        summarise([_record("1", ["1"]), _record("1", ["1", "2"])])


def test_metrics_table_shows_the_difference():
    base = {"n": 4, "accuracy_strict": 0.25, "mean_completion_tokens": 100.0}
    adapter = {"n": 4, "accuracy_strict": 0.5, "mean_completion_tokens": 80.0}
    table = metrics_table({"base": base, "adapter": adapter})
    assert table.splitlines()[0] == "| metric | base | adapter | difference |"
    assert "| accuracy_strict | 25.0% | 50.0% | +25.0 pp |" in table
    assert "| mean_completion_tokens | 100.0 | 80.0 | -20.0 |" in table


def test_run_name(tmp_path):
    assert run_name("embedded:smollm2-135m-instruct", None) == "smollm2-135m-instruct"
    assert run_name("Qwen/Qwen2.5-3B-Instruct", None) == "Qwen2.5-3B-Instruct"
    assert run_name("x", str(tmp_path / "demo" / "adapter")) == "demo-adapter"


# ----------------------------------------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model, tokenizer = load_for_generation(ModelArgs(model=str(tiny_model_dir), precision="fp32"))
    assert model.config._attn_implementation == GROUPED_ATTENTION
    # Random weights this small give every prompt the same reply; larger ones make replies prompt-dependent.
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(30)
    return model, tokenizer


@pytest.fixture(scope="module")
def questions(gsm8k_dir):
    from r1lite.data import load_prepared

    return load_prepared(str(gsm8k_dir), "test", limit=5)


def _hf_generate(model, tokenizer, prompt, max_new_tokens, eos):
    """Reference: transformers' own greedy generate, one prompt at a time, SDPA attention."""
    inputs = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
        )
    tokens = output[0, inputs["input_ids"].shape[1] :].tolist()
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def test_batched_generation_equals_one_at_a_time(tiny, questions):
    model, tokenizer = tiny
    prompts = questions["prompt"]
    batched = generate_replies(model, tokenizer, prompts, max_completion_length=10, batch_size=5, progress=False)
    single = generate_replies(model, tokenizer, prompts, max_completion_length=10, batch_size=1, progress=False)
    assert batched == single  # left padding, masks and the grouped attention change nothing in fp32
    assert len({group[0].text for group in batched}) > 1


def _encoded(tokenizer, prompts) -> list[list[int]]:
    return [_encode(tokenizer, p) for p in prompts]


def test_decode_refills_slots_and_matches_generate(tiny, questions):
    model, tokenizer = tiny
    prompts = questions["prompt"]
    done = []

    def run(eos: int, slots: int) -> list[list[int]]:
        with torch.inference_mode():
            return decode(
                model,
                _encoded(tokenizer, prompts),
                num_generations=1,
                temperature=0.0,
                top_p=1.0,
                max_completion_length=12,
                eos=[eos],
                slots=slots,
                on_prompt_done=done.append,
            )

    # Declare a token the first reply writes early to be end-of-sequence: that reply leaves mid-way and, with
    # fewer slots than prompts, the next prompt takes its slot while the others go on decoding.
    eos = run(eos=len(tokenizer) + 1, slots=5)[0][3]
    done.clear()
    ours = run(eos, slots=2)
    assert sorted(done) == list(range(5))
    assert ours == run(eos, slots=5)
    model.set_attn_implementation("sdpa")
    try:
        reference = [_hf_generate(model, tokenizer, prompt, 12, eos) for prompt in prompts]
        with_sdpa = run(eos, slots=2)  # the slot cache's masks in SDPA's hands
    finally:
        model.set_attn_implementation(GROUPED_ATTENTION)
    assert ours == reference == with_sdpa
    assert min(map(len, ours)) < 12 == max(map(len, ours))


def test_slot_cache_writes_where_aimed():
    from r1lite.engine import SlotCache

    cache = SlotCache(slots=3, capacity=6, device=torch.device("cpu"), dtype=torch.float32)
    kv_heads, dim = 2, 4
    # A prefill of two rows into slots 2 and 0, columns 1..3: attention gets a copy of just those slots.
    new = torch.arange(2 * kv_heads * 3 * dim, dtype=torch.float32).view(2, kv_heads, 3, dim)
    cache.aim(torch.tensor([[1, 2, 3], [1, 2, 3]]), slots=torch.tensor([2, 0]))
    keys, values = cache.update(new, -new, 0)
    assert keys.shape == (2, kv_heads, 4, dim) and torch.equal(keys[:, :, 1:], new)
    assert torch.equal(cache.keys[0][2, :, 1:4], new[0]) and torch.equal(cache.values[0][0, :, 1:4], -new[1])
    assert not cache.keys[0][1].any() and not cache.keys[0][:, :, 4:].any()
    # A decoding step: one column per slot, each its own; attention reads the cache itself.
    step = torch.ones(3, kv_heads, 1, dim)
    cache.aim(torch.tensor([[4], [0], [5]]))
    keys, _ = cache.update(step, step, 0)
    assert keys is cache.keys[0]
    assert keys[0, :, 4].eq(1).all() and keys[1, :, 0].eq(1).all() and keys[2, :, 5].eq(1).all()
    assert torch.equal(keys[2, :, 1:4], new[0])  # the rest of the slot untouched
    # Copies between slots, shrinking, and the additive mask.
    cache.valid[2, 1:4] = True
    cache.copy(2, torch.tensor([1]), 1, 4)
    assert torch.equal(cache.keys[0][1, :, 1:4], new[0]) and cache.valid[1].tolist() == [0, 1, 1, 1, 0, 0]
    kept = cache.keys[0][2].clone()
    cache.keep(torch.tensor([2, 1]))
    assert cache.slots == 2 and torch.equal(cache.keys[0][0], kept) and cache.valid.shape == (2, 6)
    mask = cache.mask(torch.tensor([True, False]))
    assert mask[0] == 0 and mask[1] == torch.finfo(torch.float32).min


def test_slot_cache_width_follows_the_longest_live_sequence():
    from r1lite.engine import SlotCache

    cache = SlotCache(slots=2, capacity=200, device=torch.device("cpu"), dtype=torch.float32)
    step = SlotCache.WIDTH_STEP
    cache.aim(torch.tensor([[3], [150]]))
    cache.update(torch.ones(2, 1, 1, 4), torch.ones(2, 1, 1, 4), 0)
    assert cache.width == 3 * step and cache.keys[0].shape == (2, 1, 3 * step, 4)
    cache.trim(step + 1)  # two steps free: room for one step beyond what is live
    assert cache.width == 3 * step
    cache.trim(10)
    assert cache.width == 2 * step and cache.keys[0][0, 0, 3].eq(1).all() and cache.keys[0].is_contiguous()
    cache.reserve(200)
    assert cache.width == 200 and not cache.keys[0][:, :, 2 * step :].any()  # grown columns start empty
    with pytest.raises(RuntimeError, match="201 columns asked of a cache of 200"):
        cache.reserve(201)


def test_slot_cache_resizes_one_tensor_at_a_time(monkeypatch):
    """Growing a cache of many layers, or keeping some of its slots, drops each old tensor as its copy is made: the
    whole old cache held beside the new one raised `r1lite eval`'s peak memory by the cache's size."""
    import weakref

    import r1lite.engine as engine
    from r1lite.engine import SlotCache

    layers = 6
    cache = SlotCache(slots=4, capacity=300, device=torch.device("cpu"), dtype=torch.float32)
    cache.aim(torch.tensor([[3]] * 4))
    for layer in range(layers):
        cache.update(torch.ones(4, 2, 1, 8), torch.ones(4, 2, 1, 8), layer)
    alive_at_each_copy = []

    def watch(make):
        def made(*args, **kwargs):
            alive_at_each_copy.append(sum(ref() is not None for ref in old))
            return make(*args, **kwargs)

        return made

    for change in (lambda: cache.reserve(200), lambda: cache.keep(torch.tensor([3, 1]))):
        old = [weakref.ref(t) for t in (*cache.keys, *cache.values)]
        alive_at_each_copy.clear()
        with monkeypatch.context() as patched:
            patched.setattr(engine.torch, "cat", watch(torch.cat))  # growing: a copy per tensor
            patched.setattr(torch.Tensor, "__getitem__", watch(torch.Tensor.__getitem__))  # keeping: an indexed copy
            change()
        # The k-th copy is made once the k tensors before it have been dropped (keys first, then values).
        assert alive_at_each_copy[: 2 * layers] == [2 * layers - k for k in range(2 * layers)]
        assert all(ref() is None for ref in old)
    assert cache.slots == 2 and cache.width == 4 * SlotCache.WIDTH_STEP and cache.keys[0][:, :, 3].eq(1).all()


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(tiny, questions):
    model, tokenizer = tiny
    state = torch.random.get_rng_state()
    # A high temperature: the scaled-up weights make replies near-certain at 1.0.
    settings = dict(num_generations=3, temperature=100.0, max_completion_length=6, batch_size=6, progress=False)
    prompts = questions["prompt"][:2]
    first = generate_replies(model, tokenizer, prompts, seed=1, **settings)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert first == generate_replies(model, tokenizer, prompts, seed=1, **settings)
    assert first != generate_replies(model, tokenizer, prompts, seed=2, **settings)
    assert all(len(group) == 3 for group in first) and first[0][0] != first[0][1]


def test_evaluate_model_restores_training_mode(tiny, questions):
    model, tokenizer = tiny
    model.train()
    result = evaluate_model(model, tokenizer, questions, max_completion_length=4, progress=False)
    assert model.training
    assert result.metrics["n"] == 5 and [r["index"] for r in result.records] == list(range(5))
    assert result.records[0]["gold"] == questions[0]["answer"]
    model.eval()


def test_generation_settings_are_checked(tiny, questions):
    model, tokenizer = tiny
    with pytest.raises(EvalError, match="temperature"):
        evaluate_model(model, tokenizer, questions, num_generations=2, temperature=0.0)
    with pytest.raises(EvalError, match="no questions"):
        evaluate_model(model, tokenizer, [])


def test_periodic_eval_logs_eval_metrics_and_keeps_training_mode(tiny_model_dir, questions):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerControl, TrainerState

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"),
    )
    model.train()
    logged = []
    trainer = SimpleNamespace(callback_handler=SimpleNamespace(on_log=lambda a, s, c, logs: logged.append(logs)))
    callback = PeriodicEval(
        questions,
        AutoTokenizer.from_pretrained(tiny_model_dir),
        every=2,
        trainer=trainer,
        max_completion_length=4,
        batch_size=8,
    )
    state, control = TrainerState(), TrainerControl()
    for step in (1, 2, 3):
        state.global_step = step
        callback.on_step_end(None, state, control, model=model)
    callback.on_train_end(None, state, control, model=model)  # step 3 was not evaluated yet
    callback.on_train_end(None, state, control, model=model)  # ... and now it was
    assert [h["step"] for h in callback.history] == [2, 3]
    assert len(logged) == 2 and logged[0]["eval/n"] == 5 and "eval/accuracy_strict" in logged[0]
    assert [h["step"] for h in state.log_history] == [2, 3]
    assert model.training


# ----------------------------------------------------------------------------------------------- command line


def _eval(capsys, *args) -> tuple[int, str, str]:
    code = main(["eval", "--quiet", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_writes_summary_and_per_question_files(tiny_model_dir, gsm8k_dir, tmp_path, capsys):
    output = tmp_path / "out" / "tiny.json"
    code, out, _ = _eval(
        capsys,
        "--model",
        tiny_model_dir,
        "--dataset",
        gsm8k_dir,
        "--max_eval_samples",
        4,
        "--max_completion_length",
        8,
        "--output",
        output,
    )
    assert code == 0 and "accuracy_strict" in out
    summary = json.loads(output.read_text())
    assert set(summary) == {"settings", "backend", "metrics", "intervals", "seconds", "records"}
    assert summary["backend"] == "hf"
    for metric, (low, high) in summary["intervals"].items():  # 95% intervals around every rate
        assert 0 <= low <= summary["metrics"][metric] <= high <= 1 and high - low > 0.1  # n = 4: wide
    assert summary["settings"]["temperature"] == 0.0 and summary["settings"]["dataset_test_split"] == "test"
    assert set(summary["metrics"]) == {
        "n",
        "num_samples",
        "accuracy_strict",
        "accuracy_lenient",
        "format_strict",
        "format_soft",
        "mean_completion_tokens",
        "clipped_ratio",
    }
    assert summary["metrics"]["n"] == 4 and 0 < summary["metrics"]["mean_completion_tokens"] <= 8
    records = [json.loads(line) for line in (tmp_path / "out" / "tiny.jsonl").read_text().splitlines()]
    assert len(records) == 4
    assert {"question", "gold", "replies", "tagged", "last_number", "strict", "lenient"} <= set(records[0])
    # the 4 questions are drawn with the seed from the whole split, not its first 4, each with its own gold
    rows = [json.loads(line) for line in (gsm8k_dir / "test.jsonl").read_text().splitlines()]
    golds = {row["question"]: row["answer"].rsplit("####", 1)[1].strip() for row in rows}
    assert all(record["gold"] == golds[record["question"]] for record in records)
    assert [r["question"] for r in records] != [row["question"] for row in rows[:4]]


def test_eval_with_samples_reports_pass_at_k(tiny_model_dir, gsm8k_dir, tmp_path, capsys):
    output = tmp_path / "sampled.json"
    code, out, _ = _eval(
        capsys,
        "--model",
        tiny_model_dir,
        "--dataset",
        gsm8k_dir,
        "--max_eval_samples",
        2,
        "--max_completion_length",
        4,
        "--num_generations",
        2,
        "--output",
        output,
    )
    assert code == 0
    summary = json.loads(output.read_text())
    assert summary["settings"]["temperature"] == 0.8
    assert {"pass@1_strict", "pass@2_strict", "maj@2_strict", "pass@2_lenient"} <= set(summary["metrics"])


@pytest.mark.parametrize(
    ("prompt_args", "system_prompt"),
    [([], SYSTEM_PROMPT), (["--no_system_prompt"], None), (["--system_prompt", "Be brief."], "Be brief.")],
)
def test_eval_prompting_options(tiny_model_dir, gsm8k_dir, tmp_path, capsys, prompt_args, system_prompt):
    output = tmp_path / "prompted.json"
    code, _, _ = _eval(
        capsys,
        "--model",
        tiny_model_dir,
        "--dataset",
        gsm8k_dir,
        "--max_eval_samples",
        1,
        "--max_completion_length",
        2,
        "--few_shot",
        1,
        "--output",
        output,
        *prompt_args,
    )
    assert code == 0
    settings = json.loads(output.read_text())["settings"]
    assert settings["system_prompt"] == system_prompt and settings["few_shot"] == 1


def _save_adapter(model_dir, target, hidden_size=None):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    if hidden_size is None:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    else:  # a model of another shape: its adapter cannot fit the tiny model
        config = AutoConfig.from_pretrained(model_dir)
        config.hidden_size, config.intermediate_size = hidden_size, 2 * hidden_size
        model = AutoModelForCausalLM.from_config(config)
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(target)
    return target


def test_eval_baseline_writes_a_side_by_side_table(tiny_model_dir, gsm8k_dir, tmp_path, capsys):
    adapter = _save_adapter(tiny_model_dir, tmp_path / "run" / "adapter")
    output = tmp_path / "cmp.json"
    code, out, _ = _eval(
        capsys,
        "--model",
        tiny_model_dir,
        "--adapter",
        adapter,
        "--baseline",
        "--dataset",
        gsm8k_dir,
        "--max_eval_samples",
        3,
        "--max_completion_length",
        6,
        "--output",
        output,
    )
    assert code == 0
    assert "| metric | base | adapter | difference |" in out
    summary = json.loads(output.read_text())
    assert set(summary) == {"settings", "backend", "base", "adapter", "difference", "paired", "table"}
    base_records = [json.loads(line) for line in (tmp_path / "cmp.base.jsonl").open()]
    adapter_records = [json.loads(line) for line in (tmp_path / "cmp.jsonl").open()]
    for metric, key in (("accuracy_strict", "strict"), ("format_strict", "format_strict")):
        pairs = [(b[key][0], a[key][0]) for b, a in zip(base_records, adapter_records, strict=True)]
        counts = summary["paired"][metric]
        assert counts["better"] == sum(a > b for b, a in pairs) and counts["worse"] == sum(a < b for b, a in pairs)
    assert "Question by question:" in (tmp_path / "cmp.md").read_text()
    assert summary["difference"]["accuracy_strict"] == pytest.approx(
        summary["adapter"]["metrics"]["accuracy_strict"] - summary["base"]["metrics"]["accuracy_strict"]
    )
    assert (tmp_path / "cmp.md").read_text().count("|") > 10
    base_replies = [json.loads(line)["replies"] for line in (tmp_path / "cmp.base.jsonl").open()]
    adapter_replies = [json.loads(line)["replies"] for line in (tmp_path / "cmp.jsonl").open()]
    assert len(base_replies) == len(adapter_replies) == 3
    assert base_replies != adapter_replies  # the adapter's random weights change the replies


def test_eval_default_output_is_named_after_the_adapter(tiny_model_dir, gsm8k_dir, tmp_path, capsys, monkeypatch):
    adapter = _save_adapter(tiny_model_dir, tmp_path / "demo" / "adapter")
    monkeypatch.chdir(tmp_path)
    code, _, _ = _eval(
        capsys,
        "--model",
        tiny_model_dir,
        "--adapter",
        adapter,
        "--dataset",
        gsm8k_dir,
        "--max_eval_samples",
        1,
        "--max_completion_length",
        2,
    )
    assert code == 0
    assert (tmp_path / "eval" / "demo-adapter.json").is_file() and (tmp_path / "eval" / "demo-adapter.jsonl").is_file()


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda tmp, model, data: ["--dataset", data, "--max_eval_samples", 0], "max_eval_samples must be positive"),
        (lambda tmp, model, data: ["--dataset", data, "--baseline"], "pass --adapter"),
        (lambda tmp, model, data: ["--dataset", data, "--num_generations", 2, "--temperature", 0], "temperature"),
        (lambda tmp, model, data: ["--dataset", _jsonl(tmp / "empty.jsonl", [])], "empty.jsonl"),
        (
            lambda tmp, model, data: ["--dataset", _jsonl(tmp / "nogold.jsonl", [{"question": "1+1?", "answer": "2"}])],
            "####",
        ),
        (
            lambda tmp, model, data: ["--dataset", data, "--adapter", _save_adapter(model, tmp / "other", 48)],
            "expects in_features 48, this model",
        ),
        (lambda tmp, model, data: ["--dataset", data, "--adapter", tmp], "not a LoRA adapter"),
    ],
    ids=[
        "max-eval-samples-0",
        "baseline-without-adapter",
        "greedy-samples",
        "empty-file",
        "no-gold",
        "mismatched-adapter",
        "not-an-adapter",
    ],
)
def test_eval_errors_exit_2_with_a_message(tiny_model_dir, gsm8k_dir, tmp_path, capsys, make_args, message):
    args = make_args(tmp_path, tiny_model_dir, gsm8k_dir)
    code, _, err = _eval(
        capsys,
        "--model",
        tiny_model_dir,
        "--max_completion_length",
        2,
        "--max_eval_samples",
        1,
        "--output",
        tmp_path / "e.json",
        *args,
    )
    assert code == 2
    assert "r1lite eval: error:" in err and message in err


# ----------------------------------------------------------------------------------------------- devices


class _ExplicitDevices(torch.overrides.TorchFunctionMode):
    """Fails any tensor that r1lite.engine creates without naming its device: on a GPU such a tensor lands on the
    CPU, and indexing GPU tensors with it (or it with them) raises. A CPU-only run cannot see that otherwise."""

    FACTORIES = {torch.arange, torch.tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.randint}

    def __init__(self):
        super().__init__()
        self.checked = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        import sys

        kwargs = kwargs or {}
        if func in self.FACTORIES and sys._getframe(1).f_code.co_filename.endswith("r1lite/engine.py"):
            self.checked += 1
            assert kwargs.get("device") is not None, f"engine.py calls {func.__name__} without a device"
        return func(*args, **kwargs)


def test_decode_makes_every_tensor_on_the_models_device(tiny, questions):
    model, tokenizer = tiny
    prompts = _encoded(tokenizer, questions["prompt"])
    settings = dict(top_p=1.0, max_completion_length=12, slots=4)
    with torch.inference_mode():
        first = decode(model, prompts, num_generations=1, temperature=0.0, eos=[len(tokenizer) + 1], **settings)
    eos = first[0][3]  # a token one reply writes early: that reply ends mid-way
    mode = _ExplicitDevices()
    with torch.inference_mode(), mode:
        out = decode(model, prompts, num_generations=2, temperature=1.0, eos=[eos], **settings)
    # Rows ended early, slots were refilled and the cache shrank, so the index paths ran.
    assert mode.checked >= 2 and min(map(len, out)) < 12 and len(out) == 10


def test_mixed_devices_are_named_before_indexing():
    from r1lite.engine import _same_device

    _same_device(torch.device("cpu"), rows=torch.arange(3), keep=torch.arange(2))
    with pytest.raises(RuntimeError, match=r"'rows': 'meta'.*model's device cpu"):
        _same_device(torch.device("cpu"), rows=torch.arange(3, device="meta"), keep=torch.arange(2))


def test_vllm_backend_hands_the_whole_job_to_vllm(monkeypatch, tiny_model_dir):
    """The vLLM path, with vLLM replaced by a recorder: one engine, the adapter as a LoRA request, the same
    sampling settings, and vLLM's outputs turned into the replies the scorer reads."""
    import sys
    from types import ModuleType

    from transformers import AutoTokenizer

    import r1lite.engine as engine

    made = {}

    class FakeLLM:
        def __init__(self, **kwargs):
            made["llm"] = kwargs

        def generate(self, prompts, params, lora_request=None):
            made["prompts"], made["params"], made["lora"] = prompts, params, lora_request
            done = SimpleNamespace(text="<answer>\n4\n</answer>", token_ids=[1, 2, 3], finish_reason="stop")
            cut = SimpleNamespace(text="4 4 4", token_ids=[1] * 8, finish_reason="length")
            return [SimpleNamespace(outputs=[done, cut]) for _ in prompts]

    from importlib.machinery import ModuleSpec

    vllm = ModuleType("vllm")
    vllm.__spec__ = ModuleSpec("vllm", None)  # what importlib.util.find_spec reads for an imported module
    vllm.LLM, vllm.SamplingParams = FakeLLM, lambda **kwargs: kwargs
    lora = ModuleType("vllm.lora.request")
    lora.LoRARequest = lambda name, idx, path: (name, idx, path)
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", lora)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [[{"role": "user", "content": "2 + 2?"}], [{"role": "user", "content": "3 + 1?"}]]
    replies = engine.vllm_generate_replies(
        str(tiny_model_dir),
        "runs/x/adapter",
        tokenizer,
        prompts,
        num_generations=2,
        temperature=0.8,
        top_p=0.95,
        max_completion_length=8,
        seed=3,
        lora_rank=16,
    )
    assert made["llm"]["enable_lora"] and made["llm"]["max_lora_rank"] == 16 and made["llm"]["seed"] == 3
    assert made["params"] == {"n": 2, "temperature": 0.8, "top_p": 0.95, "max_tokens": 8, "seed": 3}
    assert made["lora"] == ("adapter", 1, "runs/x/adapter")
    assert (
        made["prompts"][0]["prompt_token_ids"]
        == tokenizer.apply_chat_template(prompts[0], add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
    )
    assert replies[0] == [engine.Reply("<answer>\n4\n</answer>", 3, False), engine.Reply("4 4 4", 8, True)]
    # auto picks vLLM only where it can run: a GPU and the package.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert engine.pick_backend("auto") == "hf"
    with pytest.raises(EvalError, match="backend vllm needs a CUDA GPU and vLLM"):
        engine.pick_backend("vllm")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert engine.pick_backend("auto") == "vllm"


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_packed_linears_compute_what_the_layers_compute_and_leave_no_trace(tiny_model_dir, precision):
    from r1lite.decoder import can_pack
    from r1lite.engine import packed_linears

    model, _ = load_for_generation(ModelArgs(model=str(tiny_model_dir), precision=precision))
    dtype = model.dtype
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    # oneDNN lays bf16 weights out only on CPUs with AVX-512 (or AVX-NE-CONVERT); elsewhere they stay as they are.
    expected_packed = len(linears) if can_pack(dtype) else 0
    ids = torch.randint(0, 1000, (3, 9))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        with packed_linears(model, 3) as packed, torch.profiler.profile() as prof:
            got = model(input_ids=ids).logits
    assert len(linears) > 0 and packed == expected_packed
    assert sum(event.name == "mkldnn::_linear_pointwise" for event in prof.events()) == expected_packed
    tolerance = 1e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)
    assert not any("forward" in vars(m) for m in linears)  # the layers' own forward again
    with packed_linears(model, 3):  # a call that needs a gradient takes the plain, differentiable path
        x = torch.randn(2, model.config.hidden_size, dtype=dtype, requires_grad=True)
        assert linears[0](x).grad_fn is not None
