"""A state file's int64 tensors are packed without their all-zero bytes (``state.pack``): lossless
for every int64, including negatives, the extremes and exact sums' limbs, and smaller where the
bytes in use are few."""

from __future__ import annotations

import torch

from precompute.pipeline import state
from precompute.pipeline.exact import ExactSum


def round_trip(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    back = state.unpack(state.pack(tensors))
    assert back.keys() == tensors.keys()
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape, name
        assert torch.equal(back[name], t), name
    return back


def packed_bytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() * v.element_size() for v in state.pack(tensors).values())


def test_every_int64_comes_back():
    g = torch.Generator().manual_seed(0)
    extremes = torch.tensor([0, 1, -1, 2**63 - 1, -(2**63) + 1, 255, -256, 2**48, -(2**47)] * 10)
    round_trip(
        {
            "extremes": extremes,
            "with-int64-min": torch.tensor([-(2**63), 5] * 40),  # no magnitude: kept as it is
            "random": torch.randint(-(2**62), 2**62, (3, 50, 7), generator=g),
            "zeros": torch.zeros((4, 100), dtype=torch.int64),
            "empty": torch.zeros((0, 128), dtype=torch.int64),
            "scalar": torch.tensor(7, dtype=torch.int64),
            "small-counts": torch.randint(0, 300, (128, 9), generator=g),
            "floats": torch.randn(10, 20, generator=g),
            "halves": torch.randn(10, 20, generator=g).half(),
            "int32": torch.randint(-5, 5, (100,), dtype=torch.int32, generator=g),
        }
    )


def test_exact_sum_limbs_pack_small_and_read_back_the_same_value():
    g = torch.Generator().manual_seed(1)
    s = ExactSum((64, 48), low=-64, limbs=4)  # as the SAE bridge keeps its sums
    for _ in range(5):
        s.add(torch.randn(64, 48, generator=g).abs() * 3)
        s.flush()
    s.add(-torch.rand(64, 48, generator=g))  # some sums below zero: a negative top limb
    limbs = s.state().clone()
    back = round_trip({"limbs": limbs})["limbs"]
    again = ExactSum((64, 48), low=-64, limbs=4)
    again.load(back)
    assert torch.equal(again.value(), s.value())
    assert packed_bytes({"limbs": limbs}) < 0.5 * limbs.numel() * 8


def test_a_file_of_version_1_unpacked_reads_as_it_is():
    plain = {"a": torch.arange(100), "b": torch.ones(3)}
    assert state.unpack(plain).keys() == plain.keys()
