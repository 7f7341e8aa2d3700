"""r1lite's compiled kernels as `src/r1lite/kernels/decoding.cpp` stood at an earlier commit, for benchmarks that
compare it with this checkout's in one process (`git show`, so they need the repository's history)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build(commit: str, folder: Path):
    """The kernel module at `commit`, built into `folder` under a name of its own (beside this checkout's)."""
    from r1lite.kernels import compile_module

    source = subprocess.run(
        ["git", "show", f"{commit}:src/r1lite/kernels/decoding.cpp"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = folder / "decoding_before.cpp"
    path.write_text(source)
    return compile_module(path, "r1lite_decoding_before", folder)
