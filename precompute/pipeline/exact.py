"""Exact, order-independent sums of float tensors, so that a pass split into shards (or stopped
and resumed) adds up to the very same bits as one uninterrupted pass.

Floating-point addition is not associative: summing the same per-batch values in another order
changes the last bits. ``ExactSum`` keeps a fixed-point integer per element instead, split into
``limbs`` chunks of ``CHUNK`` bits (the lowest worth ``2**low``): each added value is cut into its
chunks exactly (multiplying by powers of two and truncating lose nothing), and integers add
exactly in any order. Bits below ``2**low`` are dropped from every value added (the same bits
whatever the order); values must stay below ``2**(low + CHUNK * limbs)`` (every float32 does with
the defaults). ``value()`` reads the sum back as float64 from the carried (canonical) limbs, so
the same exact sum always gives the same float.

Cutting a value into limbs costs ~10 times a float64 addition, so values are first added in
float64 (``add``, the order within a block of batches is the same in every split of a run) and
only each block's total is added exactly (``flush``: at every block's end, ``precompute.pipeline.shard``).
"""

from __future__ import annotations

import torch
from torch import Tensor

CHUNK = 48  # bits per limb: 2**15 additions fit in an int64 before carries must be propagated
_CARRY_EVERY = 1 << 14


class ExactSum:
    """A running exact sum of tensors of one ``shape`` (``add``, ``merge``, ``value``).

    >>> s = ExactSum((2,)); s.add(torch.tensor([1e-3, 2.0])); s.flush(); s.add(torch.tensor([1.0, -2.0]))
    >>> s.value().tolist()  # doctest: +SKIP
    [1.001, 0.0]
    """

    def __init__(
        self, shape: tuple[int, ...], device: str | torch.device = "cpu", low: int = -112, limbs: int = 5
    ):
        self.low = low
        self.limbs = torch.zeros((limbs, *shape), dtype=torch.int64, device=device)
        self.block = torch.zeros(shape, dtype=torch.float64, device=device)  # this block's float64 sum
        self._dirty = False
        self._pending = 0  # additions since the carries were last propagated

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.limbs.shape[1:])

    def add(self, x: Tensor) -> None:
        """Add to the current block's float64 sum."""
        self.block += x.to(self.block.device, torch.float64)
        self._dirty = True

    def block_to_add(self) -> Tensor:
        """The current block's float64 sum, for a kernel to add to in place (like ``add``)."""
        self._dirty = True
        return self.block

    @torch.inference_mode()
    def flush(self) -> None:
        """Add the block's sum exactly to the total, and start a new block."""
        if not self._dirty:  # adding zero changes nothing
            return
        rest = self.block.clone()
        self.block.zero_()
        self._dirty = False
        for j in reversed(range(self.limbs.shape[0])):
            exponent = self.low + CHUNK * j
            chunk = torch.mul(rest, 2.0**-exponent).trunc_()  # exact: a power of two, then truncation
            self.limbs[j] += chunk.long()
            rest.sub_(chunk.mul_(2.0**exponent))  # exact: what is left below this limb
        self._pending += 1
        if self._pending >= _CARRY_EVERY:
            self.carry()

    def carry(self) -> None:
        """Propagate carries: every limb but the top one into [0, 2**CHUNK) (the value is unchanged)."""
        self.limbs = canonical(self.limbs)
        self._pending = 0

    def merge(self, other: ExactSum) -> None:
        """Add another sum of the same shape and scale (exact, so in any order)."""
        if other.low != self.low or other.limbs.shape != self.limbs.shape:
            raise ValueError("exact sums of different shapes or scales")
        self.flush()
        self.carry()
        self.limbs += canonical(other.state().to(self.limbs.device))
        self.carry()

    def value(self) -> Tensor:
        """The sum as float64 (the current block flushed first): the same exact sum always reads
        back as the same float."""
        self.flush()
        limbs = canonical(self.limbs)
        total = torch.zeros(self.shape, dtype=torch.float64, device=limbs.device)
        for j in reversed(range(limbs.shape[0])):
            total = total + limbs[j].double() * 2.0 ** (self.low + CHUNK * j)
        return total

    def state(self) -> Tensor:
        """The carried limbs (``[limbs, *shape]``, int64; the block flushed): what ``load`` takes back."""
        self.flush()
        self.carry()
        return self.limbs

    def load(self, limbs: Tensor) -> None:
        if limbs.shape != self.limbs.shape or limbs.dtype != torch.int64:
            raise ValueError(
                f"exact-sum limbs of shape {tuple(limbs.shape)}, expected {tuple(self.limbs.shape)}"
            )
        self.limbs = canonical(limbs.to(self.limbs.device))
        self.block.zero_()
        self._pending = 0


def canonical(limbs: Tensor) -> Tensor:
    """The same integer with limbs 0..n-2 in [0, 2**CHUNK) and the sign in the top limb."""
    limbs = limbs.clone()
    for j in range(limbs.shape[0] - 1):
        carry = limbs[j] >> CHUNK  # floor division: negative limbs borrow from the next
        limbs[j] -= carry << CHUNK
        limbs[j + 1] += carry
    return limbs
