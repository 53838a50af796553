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

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from precompute.pipeline.exact import ExactSum

try:  # the CPU's one-pass statistics (numba); without it, torch's operations do the same
    from precompute.pipeline import fused as fused_kernels
except ImportError:  # pragma: no cover - numba is a dependency of the pipeline
    fused_kernels = None

ACTIVATION = "z_norm"  # sources.config["activation"]: what a head's scalar activation is
CORPUS_METRICS = ("attn_bos", "attn_previous", "attn_distance", "attn_same_token", "attn_entropy")


def pattern_hook(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def z_hook(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def z_norm(z: Float[Tensor, "batch pos head d_head"]) -> Float[Tensor, "batch pos head"]:
    """A head's activation: the norm of its output before W_O, per query position."""
    return torch.linalg.vector_norm(z.float(), dim=-1)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch's intra-op threads off for a head's update: its tensors are small (a layer's pattern is
    ~1M floats, its norms ~10k), so waking and joining the threads costs more than they save, and far
    more on a loaded machine, where each join waits for a thread the scheduler put aside."""
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class AttentionStats:
    """Running sums (exact, on the device) of each head's corpus attention statistics."""

    def __init__(self, n_heads: int, device: str | torch.device, fused: bool | None = None):
        """``fused``: read each batch's rows once with ``fused.attention_sums`` (default: on the CPU,
        where numba is installed); off, torch's products give the same sums (to float rounding)."""
        self.sums = ExactSum((len(CORPUS_METRICS), n_heads), device)
        if fused is None:
            fused = torch.device(device).type == "cpu" and fused_kernels is not None
        self.fused = fused
        self.count = 0

    @torch.inference_mode()
    def update(
        self, pattern: Float[Tensor, "batch head q k"], tokens: Int[Tensor, "batch pos"], first: int
    ) -> None:
        """Add the query rows ``first`` and after of one batch, reading the pattern as hooked (nothing
        copied): a product with per-key weights gives each row's attention to BOS, its sum and its
        key-weighted sum (the distance is ``q * sum - sum_k k p``: rows are causal); one with the
        batch's same-token weights (built once, shared by its layers) the attention to the same token;
        the previous token is the first subdiagonal. Rows are added up in float64 (``ExactSum``: exactly
        across blocks of batches). ``fused``: ``fused.attention_sums`` reads each row once instead."""
        p = pattern.float()
        b, h, n_q, n_k = p.shape
        if self.fused:  # one pass over the rows, in numba
            assert fused_kernels is not None
            p = p.contiguous()
            sums = torch.zeros((len(CORPUS_METRICS), h), dtype=torch.float64)
            t = tokens.to(torch.int32).numpy()
            fused_kernels.attention_sums(p.numpy(), p.view(torch.int32).numpy(), t, first, sums.numpy())
            self.sums.add(sums)
            self.count += b * (n_q - first)
            return
        rows = (p.reshape(-1, n_k) @ _key_weights(n_k, p.device)).view(b, h, n_q, 3)[:, :, first:].double()
        q = torch.arange(first, n_q, device=p.device, dtype=torch.float64)
        distance = q * rows[..., 1] - rows[..., 2]
        previous = p.diagonal(-1, 2, 3)[:, :, max(first, 1) - 1 :]  # (q, q - 1) for q >= first, 1
        same = torch.bmm(p.reshape(b, h, n_q * n_k), _same_token_weights(tokens, first, n_k, p.device))
        entropy = _causal_entropy(p[:, :, first:], first)
        per_head = [rows[..., 0].sum((0, 2)), previous.double().sum((0, 2)), distance.sum((0, 2))]
        self.sums.add(torch.stack([*per_head, same.double().sum((0, 2)), entropy.double()]))
        self.count += b * (n_q - first)

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


def _key_weights(n_k: int, device: torch.device) -> Float[Tensor, "k 3"]:
    """Per key k: ``k == 0``, 1, k."""
    k = torch.arange(n_k, device=device, dtype=torch.float32)
    return torch.stack([(k == 0).float(), torch.ones_like(k), k], 1)


# The last batch's same-token weights: (tokens, its version counter, first, n_k, weights).
_SAME: list[tuple[Tensor, int, int, int, Tensor]] = []


def _same_token_weights(
    tokens: Int[Tensor, "batch pos"], first: int, n_k: int, device: torch.device
) -> Float[Tensor, "batch qk 1"]:
    """``tokens[k] == tokens[q]`` for keys k < q, on the query rows from ``first`` (0 before).

    Built once per batch: the layers that follow reuse them (the same tokens object, unchanged since:
    its version counter says so)."""
    if _SAME:
        held, version, held_first, held_k, weights = _SAME[0]
        if held is tokens and held._version == version and (held_first, held_k) == (first, n_k):
            if weights.device == device:
                return weights
    t = tokens.to(device)
    n_q = t.shape[1]
    q = torch.arange(n_q, device=device)[:, None]
    k = torch.arange(n_k, device=device)[None, :]
    same = (t[:, :, None] == t[:, None, :n_k]) & (k < q) & (q >= first)  # [b, q, k]
    weights = same.float().view(t.shape[0], n_q * n_k, 1)
    _SAME[:] = [(tokens, tokens._version, first, n_k, weights)]
    return weights


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
