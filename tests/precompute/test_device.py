"""The process keeps the memory it frees, so a batch's activations do not come back as page faults."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from precompute.device import cpu_computes_bf16, emulated_bf16_note

ROOT = Path(__file__).resolve().parents[2]

# A batch's worth of activations: 30 tensors of 6 MiB, freed together, then allocated again.
BATCHES = """
import resource, sys, torch
from precompute.device import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def batch():
    return [torch.ones(3 << 19) for _ in range(30)]
acts = batch(); del acts
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    acts = batch(); del acts
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", BATCHES, mode], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def test_freed_activations_come_back_without_page_faults():
    """glibc's defaults return 180 MiB of freed tensors to the system, and take them back page by
    page (~46k faults a round); kept, the next batch's allocations fault almost nowhere (~500)."""
    assert platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"  # where the suite runs
    default, kept = page_faults("default"), page_faults("keep")
    assert default > 3 * 40_000  # 4 KiB pages of 180 MiB, three rounds
    assert kept * 50 < default


def cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        return next((set(line.split(":")[1].split()) for line in f if line.startswith("flags")), set())


@pytest.mark.skipif(
    platform.machine() != "x86_64" or platform.system() != "Linux",
    reason="reads the x86 flags in /proc/cpuinfo",
)
def test_bf16_kernels_follow_the_cpu_flags():
    """oneDNN's bfloat16 kernels need AVX-512 (or AMX): an AVX2 CPU emulates bf16, one with them does not."""
    flags = cpu_flags()
    if not any(f.startswith("avx512") for f in flags):
        assert not cpu_computes_bf16()
        assert emulated_bf16_note("cpu", "bfloat16") is not None
    if {"avx512_bf16", "amx_bf16"} & flags:
        assert cpu_computes_bf16()
        assert emulated_bf16_note("cpu", "bfloat16") is None
    assert emulated_bf16_note("cpu", "float32") is None
    assert emulated_bf16_note("cuda", "bfloat16") is None
