"""Freed host memory handed back to the operating system, so that a process's resident set follows what it holds.

glibc keeps the blocks a process frees (any below its mmap threshold, which rises to 32 MB once a large block has
been freed) for later allocations instead of returning them. A GRPO step on a CPU frees a great deal before its
backward: the decoding loop's caches and temporaries, then the loss forward's. Kept, they took `r1lite train` on
the CPU demo's settings to 3.76-4.04 GB resident over 11 steps. Handed back before each backward: 3.56 GB over 11
steps, but 4.01 GB over the demo's 40; before each backward and after each optimizer step: 3.74 GB over 40. Every
page handed back is faulted in again when the heap grows, which costs system time (0.5-0.8 s per step here), so
the CPU trainer does it only there, and SFT on a CPU after each optimizer step (docs/speed.md, "Memory: freed
blocks back to the system").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library is another (macOS, musl, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the C heap's free pages to the operating system; whether anything was returned (False without glibc)."""
    trim = _malloc_trim()
    return bool(trim and trim(0))
