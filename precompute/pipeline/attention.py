"""Attention heads in the streaming pass: each head's activation, and its corpus attention statistics.

A head is a unit (``neurodash.units.HEAD``); its activation at a query position t is ``||z_h(t)||``,
the L2 norm of its output ``hook_z[t, h]`` before W_O (``z_norm``), which goes through the same
``UnitAccumulator`` as a neuron's. Its attention row at an example's query is copied when the
example enters (``UnitAccumulator.update``'s ``at_unit``), and ``AttentionStats`` keeps running
sums over every query position read (the BOS query left out, as elsewhere):

- ``attn_bos``: attention to position 0 (each window's BOS: the sink);
- ``attn_previous``: to position t - 1;
- ``attn_same_token``: to earlier positions k < t holding the same token id as t;
- ``attn_distance``: ``sum_k (t - k) p(t, k)``, the mean distance looked back;
- ``attn_entropy``: ``-sum_k p log p`` of the row, in nats.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from precompute.pipeline.exact import ExactSum

ACTIVATION = "z_norm"  # sources.config["activation"]: what a head's scalar activation is
CORPUS_METRICS = ("attn_bos", "attn_previous", "attn_distance", "attn_same_token", "attn_entropy")


def pattern_hook(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def z_hook(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def z_norm(z: Float[Tensor, "batch pos head d_head"]) -> Float[Tensor, "batch pos head"]:
    """A head's activation: the norm of its output before W_O, per query position."""
    return torch.linalg.vector_norm(z.float(), dim=-1)


class AttentionStats:
    """Running sums (exact, on the device) of each head's corpus attention statistics."""

    def __init__(self, n_heads: int, device: str | torch.device):
        self.sums = ExactSum((len(CORPUS_METRICS), n_heads), device)
        self.count = 0

    @torch.inference_mode()
    def update(
        self, pattern: Float[Tensor, "batch head q k"], tokens: Int[Tensor, "batch pos"], first: int
    ) -> None:
        """Add the query rows ``first`` and after of one batch."""
        p = pattern[:, :, first:].float()  # [b, h, q, k]
        b, _, n_q, n_k = p.shape
        q = torch.arange(first, first + n_q, device=p.device)
        k = torch.arange(n_k, device=p.device)
        tokens = tokens.to(p.device)
        same = (tokens[:, first:, None] == tokens[:, None, :]) & (k[None, None, :] < q[None, :, None])
        by_offset = torch.stack(  # weights on (q, k) shared by every row: BOS, previous, distance
            [
                (k[None, :] == 0).expand(n_q, n_k).float(),
                (k[None, :] == q[:, None] - 1).float(),
                (q[:, None] - k[None, :]).clamp(min=0).float(),
            ]
        )
        fixed = torch.einsum("bhqk,mqk->mh", p, by_offset)
        same_token = torch.einsum("bhqk,bqk->h", p, same.float())
        entropy = _causal_entropy(p, first)
        self.sums.add(torch.cat([fixed, same_token[None], entropy[None]]))
        self.count += b * n_q

    def flush(self) -> None:
        self.sums.flush()

    def state(self) -> dict[str, Tensor]:
        return {"sums": self.sums.state(), "count": torch.tensor(self.count, dtype=torch.int64)}

    def load_state(self, state: dict[str, Tensor]) -> None:
        self.sums.load(state["sums"])
        self.count = int(state["count"])

    def merge(self, other: dict[str, Tensor]) -> None:
        theirs = ExactSum(self.sums.shape, self.sums.limbs.device)
        theirs.load(other["sums"])
        self.sums.merge(theirs)
        self.count += int(other["count"])

    def result(self) -> dict[str, np.ndarray]:
        """metric -> ``[n_heads]`` means over the query rows read."""
        means = (self.sums.value() / max(self.count, 1)).cpu().numpy()
        return dict(zip(CORPUS_METRICS, means))


def _causal_entropy(
    p: Float[Tensor, "batch head q k"], first: int, blocks: int = 4
) -> Float[Tensor, " head"]:
    """``sum -p log p`` per head over the rows, taking the log only where keys can be attended
    (blocks of query rows, each up to its last key): the log is most of the statistics' cost."""
    n_q = p.shape[2]
    total = p.new_zeros(p.shape[1])
    for i in range(blocks):
        lo, hi = i * n_q // blocks, (i + 1) * n_q // blocks
        if hi > lo:  # rows lo..hi-1 are queries first+lo.., attending keys up to first + hi - 1
            total += torch.special.entr(p[:, :, lo:hi, : first + hi]).sum((0, 2, 3))
    return total
