"""The device a job runs on: whether it is there, and how much memory it has."""

from __future__ import annotations

import ctypes
import functools
import os
import platform

import torch

from neurodash.config import check_device_name
from neurodash.errors import NeurodashError


def check_device(device: str) -> None:
    """One line unless torch can run on ``device`` here (``cpu``, ``cuda``, ``cuda:N``, ``mps``)."""
    check_device_name(device)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise NeurodashError(f"--device {device}: no CUDA device is available here")
        index = int(device.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise NeurodashError(
                f"--device {device}: this machine has {count} CUDA device{'s' if count > 1 else ''} "
                f"(cuda:0 to cuda:{count - 1})"
            )
    elif device == "mps" and not torch.backends.mps.is_available():
        raise NeurodashError("--device mps: Apple's Metal (MPS) is not available here")


def cpu_computes_bf16() -> bool:
    """Whether this CPU has oneDNN's bfloat16 kernels (AVX-512 or AMX). Elsewhere torch emulates
    bfloat16 products, several times slower than float32 (the default model's forward 5.7x slower
    on a 2-core AVX2 machine)."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def emulated_bf16_note(device: str, dtype: str) -> str | None:
    """One line for a bfloat16 forward pass asked for where the CPU would emulate it; else None."""
    if dtype != "bfloat16" or device != "cpu" or cpu_computes_bf16():
        return None
    return (
        "note: this CPU has no bfloat16 kernels (they need AVX-512 or AMX): --dtype bfloat16 is "
        "emulated here, several times slower than float32 (5.7x for the default model on AVX2)"
    )


def memory_available(device: str) -> int | None:
    """Bytes a job may still allocate on ``device``: free GPU memory, or the machine's available
    memory for the CPU (and MPS, which shares it); None where that cannot be read."""
    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return free
    try:
        with open("/proc/meminfo") as f:  # Linux: MemAvailable counts reclaimable caches too
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    """``n`` bytes for a person: 512 bytes, 3.4 MB, 12.0 TB."""
    units, i = ("bytes", "KB", "MB", "GB", "TB", "PB"), 0
    while n >= 1000 and i < len(units) - 1:
        n, i = n / 1000, i + 1
    return f"{n:,.0f} bytes" if i == 0 else f"{n:,.1f} {units[i]}"


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc keep up to 512 MiB of the memory this process frees for its next allocations. A
    forward pass on the CPU allocates and frees ~200 MB of activations a batch; returned to the
    system each time, they came back as 50-70k page faults a batch: ~5% of the default model's
    forward (three alternating pairs of processes). Allocations up to 32 MiB now come from the heap,
    whose free top is trimmed past 512 MiB (peak memory +7% in a 16k-token precompute); larger ones
    are mapped and unmapped as before. Whether it was set (glibc only)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    heap = libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    return bool(heap and libc.mallopt(_M_TRIM_THRESHOLD, 512 << 20))
