"""What a benchmark ran on, and how fast this machine can stream memory.

    python benchmarks/machine.py        # CPU model, ISA flags, threads, measured bandwidth

Every figure a benchmark prints depends on the CPU: its vector units (AVX-512 BF16 on AMD EPYC, AMX on
Intel Xeon), the threads torch uses and the memory bandwidth. `describe()` gathers those, and
`decode_bound()` turns the bandwidth into the most tokens per second a decoder can produce: each decoding
step reads every weight once and the KV cache of every sequence, so it cannot take less than those bytes
divided by the bandwidth.
"""

from __future__ import annotations

import functools
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass

# The flags that decide which matrix kernels torch and oneDNN can use.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    present = set(_cpuinfo().get("flags", "").split())
    return [flag for flag in ISA_FLAGS if flag in present]


def memory_bandwidth_gbs(size_mb: int = 512, repeats: int = 7) -> float:
    """Best-of-`repeats` copy bandwidth in GB/s (bytes read + bytes written), with torch's threads.

    A tensor copy far larger than the caches is what a decoding step does with the weights: stream them
    from memory once. Best of several, as the machine's limit is the fastest copy, not an average of
    copies slowed by other work."""
    import torch

    src = torch.ones(size_mb * 2**20 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch every page first
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * 4 / min(times) / 1e9


@dataclass
class Machine:
    cpu: str
    isa: list[str]
    torch_cpu_capability: str
    threads: int
    cores: int
    torch: str
    bandwidth_gbs: float

    def line(self) -> str:
        line = (
            f"{self.cpu} | ISA {' '.join(self.isa) or '-'} (torch kernels: {self.torch_cpu_capability}) | "
            f"{self.threads} torch threads on {self.cores} cores | torch {self.torch}"
        )
        if self.bandwidth_gbs == self.bandwidth_gbs:  # not measured: NaN
            line += f" | memory bandwidth {self.bandwidth_gbs:.1f} GB/s (copy)"
        return line


def describe(bandwidth: bool = True) -> Machine:
    import torch

    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # older torch
        capability = "unknown"
    return Machine(
        cpu=cpu_model(),
        isa=cpu_flags(),
        torch_cpu_capability=capability,
        threads=torch.get_num_threads(),
        cores=os.cpu_count() or 1,
        torch=torch.__version__,
        bandwidth_gbs=memory_bandwidth_gbs() if bandwidth else float("nan"),
    )


@dataclass
class DecodeBound:
    weight_bytes: int  # read once per decoding step
    kv_bytes_per_token: int  # per sequence and token of context
    sequences: int
    mean_context: float  # prompt + half the completion: the average context over a reply
    bandwidth_gbs: float

    @property
    def bytes_per_step(self) -> float:
        return self.weight_bytes + self.sequences * self.mean_context * self.kv_bytes_per_token

    @property
    def tokens_per_s(self) -> float:
        return self.sequences * self.bandwidth_gbs * 1e9 / self.bytes_per_step


@functools.cache  # one load per model and precision, however many configurations share them
def model_bytes(model_name: str, precision: str) -> tuple[int, int]:
    """(weight bytes, KV-cache bytes per token) of a model as r1lite generates with it: merged, in `precision`."""
    import torch

    from r1lite.models import load_model

    model, _ = load_model(model_name, precision, device="cpu")
    unique = {p.data_ptr(): p for p in model.parameters()}  # tied embeddings count once
    weights = sum(p.numel() * p.element_size() for p in unique.values())
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    dtype_bytes = torch.finfo(model.dtype).bits // 8
    return weights, 2 * config.num_hidden_layers * kv_heads * head_dim * dtype_bytes


def decode_bound(
    model_name: str, precision: str, sequences: int, mean_context: float, bandwidth_gbs: float
) -> DecodeBound:
    weights, kv = model_bytes(model_name, precision)
    return DecodeBound(weights, kv, sequences, mean_context, bandwidth_gbs)


def main() -> None:
    machine = describe()
    print(machine.line())
    samples = [memory_bandwidth_gbs() for _ in range(3)]
    figures = ", ".join(f"{s:.1f}" for s in samples)
    print(f"bandwidth over 3 runs: {figures} GB/s (median {statistics.median(samples):.1f})")
    print(asdict(machine))


if __name__ == "__main__":
    main()
