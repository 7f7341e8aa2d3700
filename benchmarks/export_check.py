"""What `r1lite export` writes for a run, and whether each export still answers like the trained adapter.

    python benchmarks/export_check.py runs/cpu-demo                 # 20 held-out questions, 128 tokens each
    python benchmarks/export_check.py runs/cpu-demo --n 50 --tokens 256

Exports the run's adapter merged (bf16 and fp32 safetensors) and as GGUF files (f16 and q8_0, llama.cpp's
converter), prints file sizes and export times, then generates greedy replies to the same held-out GSM8K questions from
  - the base model with the adapter unmerged, in fp32 (the reference: what training produced),
  - each merged folder, loaded by plain transformers (fp32 shows the merge itself; bf16 adds 16-bit rounding),
  - each GGUF file, read back by transformers' GGUF loader (de-quantised to fp32),
and prints, side by side, how many replies are identical to the reference and how long the shared prefix is.
Questions are drawn with a fixed seed from the whole test split.
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from r1lite.config import ExportConfig, ModelArgs, parse_config
from r1lite.data import load_prepared
from r1lite.engine import generate_replies
from r1lite.export import export, find_source, size_bytes
from r1lite.models import load_for_generation

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"


def size_mb(path: Path) -> float:
    return size_bytes(path) / 1e6


def replies(model, tokenizer, prompts, tokens: int) -> list[str]:
    out = generate_replies(model, tokenizer, prompts, max_completion_length=tokens, progress=False)
    return [r[0].text for r in out]


def shared_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--dataset", default=str(GSM8K))
    parser.add_argument("--n", type=int, default=20, help="held-out questions")
    parser.add_argument("--tokens", type=int, default=128, help="greedy tokens per reply")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    source = find_source(args.run_dir, None, None)
    work = Path(tempfile.mkdtemp(prefix="r1lite-export-check-"))
    timings: dict[str, float] = {}
    paths: dict[str, Path] = {}
    # (label, flags, output folder): merged bf16 + GGUF f16 in one export, GGUF q8_0 beside it, merged fp32 apart
    runs = [
        ("merged bf16 + gguf f16", ["--merged", "--gguf"], work),
        ("gguf q8_0", ["--gguf", "--gguf_type", "q8_0"], work),
        ("merged fp32", ["--merged", "--dtype", "fp32"], work / "fp32"),
    ]
    for label, flags, out in runs:
        start = time.perf_counter()
        written = export(parse_config(ExportConfig, [args.run_dir, *flags, "--output", str(out)]))
        timings[label] = time.perf_counter() - start
        for kind, path in written.items():
            if kind == "merged":
                paths["merged " + ("fp32" if "fp32" in label else "bf16")] = path
            elif kind == "gguf":
                paths["gguf " + path.stem.rsplit("-", 1)[-1]] = path

    print(f"run: {args.run_dir}  base: {source.base_model}  exports in {work}")
    print(f"{'output':<12} {'MB':>8}")
    for name, path in paths.items():
        print(f"{name:<12} {size_mb(path):>8.1f}   {path.name}")
    print(f"adapter      {size_mb(source.adapter):>8.1f}   (for comparison)")
    print("export time (each merges the adapter first): " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    print()

    rows = load_prepared(args.dataset, "test", source.system_prompt, limit=args.n, seed=args.seed, sample=True)
    prompts = [row["prompt"] for row in rows]

    reference_model, tokenizer = load_for_generation(
        ModelArgs(model=source.base_model, precision="fp32"), adapter=str(source.adapter), merge=False
    )
    reference = replies(reference_model, tokenizer, prompts, args.tokens)
    del reference_model
    candidates = {}
    for name, path in paths.items():
        if name.startswith("merged"):
            candidates[name] = lambda p=path: AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32)
        else:
            candidates[name] = lambda p=path: AutoModelForCausalLM.from_pretrained(
                p.parent, gguf_file=p.name, dtype=torch.float32
            )
    merged_tokenizer = AutoTokenizer.from_pretrained(paths["merged bf16"])
    print(f"greedy replies to {len(prompts)} held-out questions ({args.tokens} tokens), vs base + adapter unmerged:")
    print(f"{'model':<14} {'identical':>10} {'mean shared prefix':>20}")
    for name, load in candidates.items():
        got = replies(load().eval(), merged_tokenizer, prompts, args.tokens)
        same = sum(a == b for a, b in zip(got, reference, strict=True))
        prefix = sum(shared_prefix(a, b) / max(1, len(b)) for a, b in zip(got, reference, strict=True)) / len(got)
        print(f"{name:<14} {same:>5}/{len(got):<4} {prefix:>19.0%}")


if __name__ == "__main__":
    main()
