"""Does GRPO move held-out accuracy, and by how much, over several seeds? Trains a recipe once per seed, evaluates
the starting point (its init_adapter, or the untouched model for a pure-RL recipe) and every seed's checkpoints
on the same held-out questions, and prints the curve with 95% intervals, the training minutes each checkpoint
took, and each seed's question-by-question sign test against the start.

    python benchmarks/learning_curve.py --config recipes/cpu-arith.yaml --seeds 1 2 3
    python benchmarks/learning_curve.py --config recipes/cpu-arith.yaml --seeds 1 --set max_steps=20 learning_rate=5e-5
    python benchmarks/learning_curve.py --config recipes/cpu-zero.yaml --seeds 3407 --eval_n 100 --metric format_strict

Each command is run as its own process (`r1lite train`, `r1lite eval`), as a user would run it, into --out
(default runs/learning-curve/<recipe>). Held-out questions: --eval_n drawn with seed 0 from the whole test split
of the recipe's dataset, greedy, the same for every point. The interval over seeds is Student's t at 95%; each
seed's own accuracy interval is Wilson's.
"""

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from r1lite.eval_metrics import paired_comparison, sign_test, wilson_interval

R1LITE = [sys.executable, "-m", "r1lite.cli"]
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def run(argv: list[str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(argv)}\nsee {log}")
    return time.perf_counter() - start


def evaluate(adapter: str | None, out: Path, recipe: dict, args) -> dict:
    """The summary of `r1lite eval` on the held-out questions (prompted as in training), run once per adapter
    (kept in `out`); `adapter=None` evaluates the model alone."""
    if not out.is_file():
        argv = R1LITE + ["eval", "--dataset", recipe["dataset"], "--output", str(out)]
        argv += ["--adapter", adapter] if adapter else []
        argv += ["--few_shot", str(recipe.get("few_shot") or 0)]
        argv += ["--max_eval_samples", str(args.eval_n), "--max_completion_length", str(args.eval_tokens)]
        argv += ["--model", recipe.get("model", "embedded:smollm2-135m-instruct"), "--quiet", "true"]
        run(argv, out.with_suffix(".log"))
    summary = json.loads(out.read_text())
    summary["_records"] = [json.loads(line) for line in Path(summary["records"]).read_text().splitlines()]
    return summary


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean of shares over seeds, with Student's t interval at 95%, clipped to 0-100%."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan"), float("nan")
    half = T95.get(n - 1, 1.96) * statistics.stdev(values) / math.sqrt(n)
    return mean, max(mean - half, 0.0), min(mean + half, 1.0)  # a share: the interval stays within 0-100%


def training_minutes(run_dir: Path) -> dict[int, float]:
    """Minutes of training up to each logged step, from the run's own step times."""
    minutes, total = {}, 0.0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "time/step" in record:
            total += record["time/step"] / 60
            minutes[record["step"]] = total
    return minutes


def pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a train recipe (its init_adapter is the starting point)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides")
    parser.add_argument("--eval_n", type=int, default=200)
    parser.add_argument("--eval_tokens", type=int, default=256)
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--metric", default="accuracy_strict", help="the curve's metric: accuracy_strict, format_strict"
    )
    args = parser.parse_args()

    recipe = yaml.safe_load(Path(args.config).read_text())
    overrides = dict(item.split("=", 1) for item in args.set)
    recipe.update({k: yaml.safe_load(v) for k, v in overrides.items()})
    out = Path(args.out or f"runs/learning-curve/{Path(args.config).stem}")
    out.mkdir(parents=True, exist_ok=True)
    start = evaluate(recipe.get("init_adapter"), out / "start.json", recipe, args)
    curves: dict[int, dict[int, dict]] = {}
    minutes: dict[int, dict[int, float]] = {}
    train_seconds: dict[int, float] = {}
    for seed in args.seeds:
        run_dir = out / f"seed-{seed}"
        if not (run_dir / "adapter" / "adapter_config.json").is_file():
            flags = [t for k, v in overrides.items() for t in (f"--{k}", v)]
            argv = R1LITE + ["train", "--config", args.config, "--seed", str(seed), "--output_dir", str(run_dir)]
            train_seconds[seed] = run(argv + ["--overwrite", "true", *flags], out / f"seed-{seed}.train.log")
        points = sorted(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*") if p.name[11:].isdigit())
        curves[seed] = {0: start}
        minutes[seed] = {0: 0.0, **training_minutes(run_dir)}
        for step in points:
            curves[seed][step] = evaluate(
                str(run_dir / f"checkpoint-{step}"), out / f"seed-{seed}-{step}.json", recipe, args
            )

    n = len(start["_records"])
    print(f"recipe {args.config} {overrides or ''}  held-out: {n} questions of {recipe['dataset']} (seed 0), greedy")
    if train_seconds:
        print("training time: " + ", ".join(f"seed {s} {t / 60:.1f} min" for s, t in train_seconds.items()))
    steps = sorted({step for curve in curves.values() for step in curve})
    print(f"\n{args.metric}, [95% interval] (minutes of training)")
    print(f"{'step':>5} " + " ".join(f"{'seed ' + str(s):>31}" for s in args.seeds) + f" {'mean [95% t]':>26}")
    for step in steps:
        cells, values = [], []
        for seed in args.seeds:
            point = curves[seed].get(step)
            if point is None:
                cells.append(f"{'':>31}")
                continue
            acc = point["metrics"][args.metric]
            low, high = wilson_interval(acc * n, n)
            values.append(acc)
            took = minutes[seed].get(step, float("nan"))
            cells.append(f"{pct(acc):>7} [{pct(low)}–{pct(high)}] ({took:.1f})".rjust(31))
        mean, low, high = mean_interval(values)
        print(f"{step:>5} " + " ".join(cells) + f" {pct(mean):>8} [{pct(low)}, {pct(high)}]".rjust(27))

    print("\nlast checkpoint vs start, question by question (accuracy_strict, format_strict):")
    total_better = total_worse = 0
    for seed in args.seeds:
        last = curves[seed][max(curves[seed])]
        paired = paired_comparison(start["_records"], last["_records"])
        acc, fmt = paired["accuracy_strict"], paired["format_strict"]
        total_better, total_worse = total_better + acc["better"], total_worse + acc["worse"]
        ratio = last["metrics"]["accuracy_strict"] / max(start["metrics"]["accuracy_strict"], 1e-9)
        print(
            f"seed {seed}: accuracy {pct(start['metrics']['accuracy_strict'])} -> "
            f"{pct(last['metrics']['accuracy_strict'])} ({ratio:.2f}x), better on {acc['better']}, worse on "
            f"{acc['worse']}, sign test p = {acc['p_sign_test']:.2g}; strict format "
            f"{pct(start['metrics']['format_strict'])} -> {pct(last['metrics']['format_strict'])} "
            f"(p = {fmt['p_sign_test']:.2g})"
        )
    print(
        f"all seeds pooled: better {total_better}, worse {total_worse}, p = {sign_test(total_better, total_worse):.2g}"
    )


if __name__ == "__main__":
    main()
