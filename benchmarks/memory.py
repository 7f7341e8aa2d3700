"""Peak resident memory of every r1lite command on the CPU demo's settings, one process each, side by side.

    python benchmarks/memory.py --adapter runs/cpu-sft/adapter            # the demo's SFT adapter as the start
    python benchmarks/memory.py --adapter runs/cpu-sft/adapter --only eval train

Each command runs as its own process, as `scripts/demo.sh` runs it but shortened (a few steps, 64 questions);
the figure is that process's peak resident set size (its high-water mark, from wait4). Shortened where that
cannot lower the peak: SFT takes its steps from the longest worked solutions of the training split (the largest
batches a full run meets); GRPO runs 6 steps with a checkpoint saved, since its resident set grew over the first
few steps while the C heap kept freed blocks (r1lite.host_memory). The target is 4 GB or less for every command.
Also printed: the CPU, its flags and the thread count.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
REPO = Path(__file__).resolve().parents[1]
R1LITE = [sys.executable, "-m", "r1lite.cli"]
TARGET_GB = 4.0


def longest_rows(data: str, work: Path, rows: int = 64) -> str:
    """A copy of the GSM8K folder `data` whose training split is its `rows` longest question + solution pairs."""
    folder = work / "longest"
    folder.mkdir()
    lines = (Path(data) / "train.jsonl").read_text().splitlines()
    lines.sort(key=lambda line: sum(len(v) for v in json.loads(line).values() if isinstance(v, str)), reverse=True)
    (folder / "train.jsonl").write_text("\n".join(lines[:rows]) + "\n")
    (folder / "test.jsonl").symlink_to(Path(data, "test.jsonl").resolve())
    return str(folder)


def commands(adapter: str, data: str, work: Path) -> dict[str, list[str]]:
    demo = ["--dataset", data, "--overwrite", "true"]
    return {
        "sft": ["sft", "--config", str(REPO / "recipes/cpu-sft.yaml"), "--max_steps", "3", "--save_steps", "100",
                "--output_dir", str(work / "sft"), "--dataset", longest_rows(data, work), "--overwrite", "true"],
        "train": ["train", "--config", str(REPO / "recipes/cpu-demo.yaml"), "--init_adapter", adapter,
                  "--max_steps", "6", "--save_steps", "5", "--output_dir", str(work / "train"), *demo],
        "eval": ["eval", "--adapter", adapter, "--baseline", "--dataset", data, "--max_eval_samples", "64",
                 "--max_completion_length", "256", "--output", str(work / "eval.json"), "--quiet", "true"],
        "chat": ["chat", "--adapter", adapter, "--max_completion_length", "256", "--seed", "1",
                 "Natalia sold 48 clips in April and half as many in May. How many clips did she sell?"],
        "rewards check": ["rewards", "check", "--adapter", adapter, "--dataset", data],
        "export": ["export", str(Path(adapter)), "--merged", "--gguf", "--output", str(work / "export")],
    }  # fmt: skip


def peak_rss(argv: list[str], log: Path) -> tuple[float, float, int]:
    """(peak resident GB, seconds, exit code) of one process."""
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024**2, time.perf_counter() - start, proc.returncode  # ru_maxrss: KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", required=True, help="an adapter of the embedded model (the demo's SFT one)")
    parser.add_argument("--dataset", default=str(GSM8K))
    parser.add_argument("--only", nargs="*", default=None, help="command names to run (default: all)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="r1lite-memory-"))
    print(describe(bandwidth=False).line())
    print(f"{'command':<15} {'peak RSS':>10} {'seconds':>8}  {'<= 4 GB':<8}")
    for name, argv in commands(args.adapter, args.dataset, work).items():
        if args.only and name not in args.only:
            continue
        gb, seconds, code = peak_rss(R1LITE + argv, work / f"{name.replace(' ', '_')}.log")
        verdict = "yes" if gb <= TARGET_GB else "NO"
        failed = "" if code == 0 else f"  (exit {code}: see {work / name.replace(' ', '_')}.log)"
        print(f"{name:<15} {gb:>8.2f} GB {seconds:>8.1f}  {verdict:<8}{failed}", flush=True)


if __name__ == "__main__":
    main()
