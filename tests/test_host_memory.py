"""Freed heap memory goes back to the system (r1lite.host_memory), where the C library is glibc."""

import os

import pytest

from r1lite import host_memory


def resident_bytes() -> int | None:
    """This process's resident set size now, in bytes (Linux); None where /proc is not there."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


needs_glibc = pytest.mark.skipif(host_memory._malloc_trim() is None, reason="glibc's malloc_trim is not available")


@needs_glibc
def test_release_returns_freed_heap_blocks_to_the_system():
    # 64 KiB blocks sit below glibc's mmap threshold, so they come from the heap; the last one allocated pins the
    # heap's top, so freeing the others leaves 192 MiB of free blocks the heap keeps (and the resident set counts).
    blocks = [bytearray(64 * 1024) for _ in range(3072)]
    pin = bytearray(64 * 1024)
    del blocks
    held = resident_bytes()
    assert host_memory.release_free_memory()
    released = held - resident_bytes()
    assert released > 100 * 2**20, f"only {released / 2**20:.0f} MiB went back"
    del pin


def test_release_is_harmless_without_glibc(monkeypatch):
    monkeypatch.setattr(host_memory, "_malloc_trim", lambda: None)
    assert host_memory.release_free_memory() is False


def test_resident_bytes_is_this_processes_resident_set():
    resident = resident_bytes()
    if resident is None:
        pytest.skip("no /proc here")
    grown = bytearray(64 * 2**20)
    grown[::4096] = b"x" * len(range(0, len(grown), 4096))  # touch every page
    assert resident_bytes() - resident > 32 * 2**20
