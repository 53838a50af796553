"""Streaming per-unit state: top/bottom examples, a uniform quantile sample, moments, histogram.

One ``UnitAccumulator`` per source. ``update`` takes one batch of activations and keeps only
bounded state on the device, so memory does not grow with the corpus:

- top-k / bottom-k examples: the sequences with the highest (lowest) max (min) activation, one
  example per sequence, each with the activation window around its extreme token;
- a uniform sample of firing tokens (priority sampling on a hash of (token, unit)), sorted at the
  end into quantile groups: the sample's quantiles estimate the true quantiles of the firing
  distribution, and the whole selection is deterministic, so brute force can reproduce it;
- count, sums of powers (mean, std, skew, kurtosis), min, max, density;
- a histogram with per-unit power-of-two bin width that doubles (merging bin pairs exactly) when
  a larger value arrives, so it equals a histogram over the final edges of every activation.

Every piece merges exactly (``merge``, ``state``/``load_state``): examples are ranked by a total
order (top and bottom by value, then the earlier sequence; the sample by key, then the earlier
token), sums are ``ExactSum``, the histogram rebins to the wider width. So a pass split into shards
and merged, or stopped and resumed, keeps the same state as one uninterrupted pass.

``result()`` hands the state over as an ``AccumulatorResult``: numpy arrays, per unit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from neurodash.config import AccumulatorConfig
from neurodash.errors import NeurodashError
from precompute.pipeline.exact import ExactSum

if TYPE_CHECKING:
    from precompute.pipeline.fused import Kernels

try:  # the CPU's one-pass update (numba); without it, torch's operations do the same
    from precompute.pipeline import fused as fused_kernels
except ImportError:  # pragma: no cover - numba is a dependency of the pipeline
    fused_kernels = None

_MASK32 = 0xFFFFFFFF
NO_KEY = 1 << 30  # larger than any 30-bit key: an empty sample slot


class NotFinite(NeurodashError):
    """A unit's activations hold NaN or inf (a model that overflows in a low precision, or broken weights)."""


@dataclass(frozen=True)
class Examples:
    """``k`` example slots per unit: ``[units, k]`` arrays (``win``: ``[units, k, window]``).

    ``val`` is the activation that ranked the example (its extreme, or the sampled token's value);
    ``pos`` its token, ``start`` the window's first token in sequence ``seq`` (-1: an empty slot).
    ``tok`` and ``rep`` (the token id and projected representation at ``pos``) are copied only when
    the pass keeps context for scores, and only once an example entered (else None); ``attn`` (an
    attention head's row at ``pos``: ``[units, k, ctx]``) likewise, for heads.
    """

    val: np.ndarray
    seq: np.ndarray
    pos: np.ndarray
    start: np.ndarray
    win: np.ndarray
    tok: np.ndarray | None = None
    rep: np.ndarray | None = None
    attn: np.ndarray | None = None

    @classmethod
    def from_slots(cls, slots: dict[str, np.ndarray]) -> Examples:
        return cls(**{name: slots[name] for name in _EXAMPLE_FIELDS if name in slots})

    def context(self, dims: int) -> tuple[np.ndarray, np.ndarray]:
        """``(tok, rep)``, zero-filled where no example ever entered (nothing was copied)."""
        shape = self.val.shape
        tok = self.tok if self.tok is not None else np.zeros(shape, dtype=np.int32)
        rep = self.rep if self.rep is not None else np.zeros((*shape, dims), dtype=np.float16)
        return tok, rep


_EXAMPLE_FIELDS = ("val", "seq", "pos", "start", "win", "tok", "rep", "attn")


@dataclass(frozen=True)
class Moments:
    """Over the ``count`` tokens read (BOS left out): each unit's mean, std, skew and kurtosis."""

    count: int
    mean: np.ndarray
    std: np.ndarray
    skew: np.ndarray
    kurtosis: np.ndarray


@dataclass(frozen=True)
class Histogram:
    """``counts[u]``: unit u's tokens in the ``2 * n_bins`` right-closed bins of width ``bin_width[u]``
    (``hist_edges``); bins ``n_bins`` and up count the firing tokens."""

    bin_width: np.ndarray  # [units], 0 where the unit was 0 everywhere
    counts: np.ndarray  # [units, 2 * n_bins]
    n_bins: int

    def fraction_above(self, threshold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per unit, the fraction of its tokens above ``threshold[u]`` (> 0), and the bound on its error.

        Bins wholly above the threshold count exactly; the one bin it falls in counts the part of its
        width above it (linear interpolation), so the error is at most that bin's share of the tokens.
        """
        n_units, n_cols = self.counts.shape
        total = np.maximum(self.counts.sum(1), 1)
        width = np.where(self.bin_width > 0, self.bin_width, 1.0)
        edge = np.clip(np.ceil(threshold / width), 1, self.n_bins)  # the bin (edge - w, edge] holds it
        at = (edge - 1 + self.n_bins).astype(np.int64)  # its column
        cols = np.arange(n_cols)[None, :]
        above = np.where(cols > at[:, None], self.counts, 0).sum(1)
        in_bin = self.counts[np.arange(n_units), np.minimum(at, n_cols - 1)]
        part = np.clip(edge - threshold / width, 0.0, 1.0)
        live = (self.bin_width > 0) & (threshold > 0)
        return np.where(live, (above + part * in_bin) / total, 0.0), np.where(live, in_bin / total, 0.0)


@dataclass(frozen=True)
class AccumulatorResult:
    """All a source's units kept over the pass, as numpy arrays (``[units]`` unless said)."""

    max: np.ndarray
    min: np.ndarray
    density: np.ndarray  # the fraction of tokens where the unit fires (> 0)
    moments: Moments
    hist: Histogram
    top: Examples  # the sequences with the highest max, strongest first
    bottom: Examples  # with the lowest min (``val`` is minus the min), most negative first
    sample: Examples  # the quantile sample of firing tokens, by rising key
    sample_keys: np.ndarray  # [units, r]: ``NO_KEY`` marks an empty slot

    @property
    def n_units(self) -> int:
        return len(self.max)


def token_hash(global_pos: Int[Tensor, "..."], seed: int = 0) -> Int[Tensor, "..."]:
    """A 30-bit integer hash (lowbias32, top bits dropped) of int64 positions.

    Products may wrap in int64; the low 32 bits they are masked to stay exact.
    """
    x = (global_pos * 0x9E3779B1 + seed * 0x85EBCA77) & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return (x ^ (x >> 16)) >> 2


_last_batch_keys: tuple[Tensor, int, int, int, Tensor] | None = None


def _batch_keys(seq_ids: Tensor, ctx: int, t: int, seed: int) -> Tensor:
    """``token_hash`` of a batch's tokens ([b, t] int32), computed once for all the sources that
    read the batch: the last batch's keys are kept (sources updated from several threads may each
    compute them; they are the same)."""
    global _last_batch_keys
    last = _last_batch_keys
    if last is not None and last[1:4] == (ctx, t, seed) and last[0].device == seq_ids.device:
        if torch.equal(last[0], seq_ids):
            return last[4]
    keys = token_hash(seq_ids[:, None] * ctx + torch.arange(t, device=seq_ids.device), seed).int()
    _last_batch_keys = (seq_ids.clone(), ctx, t, seed, keys)
    return keys


def unit_salts(n_units: int, seed: int = 0) -> Int[Tensor, "units"]:
    """Per-unit 30-bit salts: a unit's key for a token is hash(token) XOR salt(unit)."""
    return token_hash(torch.arange(n_units, dtype=torch.long) + (1 << 33), seed + 1)


_BUFFERS: dict[tuple, Tensor] = {}


def _scratch(name: str, like: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """A buffer reused across batches and accumulators (they run one after another).

    Fresh multi-MB tensors per batch cost more in page faults than the arithmetic on them.
    """
    key = (name, like.device, dtype)
    buf = _BUFFERS.get(key)
    if buf is None or buf.shape != like.shape:
        buf = _BUFFERS[key] = torch.empty(like.shape, dtype=dtype, device=like.device)
    return buf


def _fill(slots: dict[str, Tensor], at: tuple[Tensor, ...], incoming: dict[str, Tensor]) -> None:
    """Write entrants into the slots ``at`` (units, slots), in place, one entry of ``incoming`` each.

    A slot array first met here (a value copied at the example's token) is created, zero-filled.
    """
    for name, value in incoming.items():
        _slot_array(slots, name, value.shape[1:], value)[at] = value


def _slot_array(slots: dict[str, Tensor], name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """``slots[name]`` ([u, k, *shape]), created zero-filled (as ``like``'s dtype) when first met."""
    if name not in slots:
        slots[name] = torch.zeros((*slots["seq"].shape, *shape), dtype=like.dtype, device=like.device)
    return slots[name]


def _copy_at(
    slots: dict[str, Tensor],
    occ_b: Tensor,
    occ_t: Tensor,
    per_token: dict[str, Tensor],
    per_unit: dict[str, Tensor],
) -> None:
    """``_fill`` through ``fused.take``: each entrant's slot (``occ_b`` >= 0: its batch row, ``occ_t``
    its position) gets ``per_token``'s values at its token ([b, t, ...]) and ``per_unit``'s for its
    own unit ([b, t, u, ...])."""
    assert fused_kernels is not None

    b, t = occ_b.numpy(), occ_t.numpy()
    for own, values in ((False, per_token), (True, per_unit)):
        for name, v in values.items():
            lead = 3 if own else 2  # [b, t, u] or [b, t]
            dst = _slot_array(slots, name, v.shape[lead:], v)
            if dst.dtype != v.dtype or dst.shape[2:] != v.shape[lead:]:  # the kernel copies bits unchecked
                raise ValueError(
                    f"{name}: {v.dtype} {tuple(v.shape[lead:])} into {dst.dtype} {tuple(dst.shape[2:])}"
                )
            if dst.numel() and v.numel():  # (no slots, no units: nothing to copy)
                src = v.reshape(*v.shape[:lead], *([] if own else [1]), -1)  # [b, t, u or 1, d]
                fused_kernels.take(b, t, _bits(src), own, _bits(dst.view(*dst.shape[:2], -1)))


def _bits(t: Tensor) -> np.ndarray:
    """``t``'s memory for numba, which copies 2-byte floats as int16 (the same bits)."""
    a = t.numpy()
    return a.view(np.int16) if a.dtype == np.float16 else a


class _Extremes:
    """The k sequences with the largest score per unit, with the window around the extreme token.

    Slots are unordered while streaming (only entrants are written); ``sorted()`` ranks them.
    """

    def __init__(self, n_units: int, k: int, window: int, device: torch.device, kernels: Kernels | None):
        self.k, self.kernels = k, kernels  # None: torch's operations
        self.slots = {
            "val": torch.full((n_units, k), -torch.inf, device=device),
            "seq": torch.full((n_units, k), -1, dtype=torch.long, device=device),
            "pos": torch.zeros((n_units, k), dtype=torch.long, device=device),
            "start": torch.zeros((n_units, k), dtype=torch.long, device=device),
            "win": torch.zeros((n_units, k, window), device=device),
        }

    def update(self, score: Float[Tensor, "b u"], locate, seq_ids, windows_at, at_token=None) -> None:
        """Merge a batch's per-sequence scores; ``locate(b, u)`` gives the extreme token's position;
        ``at_token(b, u, pos)`` (optional) the values to copy from the entrants' tokens."""
        k, vals = self.k, self.slots["val"]
        held = rank_key(vals, self.slots["seq"])
        candidates = rank_key(score.T, seq_ids.to(vals.device)[None, :].expand(vals.shape[0], -1))
        # Only a batch holding a candidate above some unit's k-th example needs the merge.
        if k == 0 or not bool((candidates.max(1).values > held.min(1).values).any()):
            return
        idx = torch.cat([held, candidates], 1).topk(k, dim=1).indices
        chosen = torch.zeros((vals.shape[0], k + score.shape[0]), dtype=torch.bool, device=vals.device)
        chosen.scatter_(1, idx, True)
        fu, fb = chosen[:, k:].nonzero(as_tuple=True)  # entrants, grouped by unit
        at = (~chosen[:, :k]).nonzero(as_tuple=True)  # the slots they take, in the same order
        pos = locate(fb, fu)
        start, windows = windows_at(fb, fu, pos)
        incoming = {"val": score[fb, fu], "seq": seq_ids[fb], "pos": pos, "start": start, "win": windows}
        if at_token is not None:
            incoming |= at_token(fb, fu, pos)
        _fill(self.slots, at, incoming)

    def update_fused(
        self,
        score: Tensor,
        positions: Tensor,
        acts: Tensor,
        sign: float,
        seq_ids: Tensor,
        before: int,
        per_token: dict[str, Tensor] | None = None,
        per_unit: dict[str, Tensor] | None = None,
    ) -> None:
        """``update`` through the CPU kernels: ``score`` [b, u] is ``sign`` times ``acts`` at
        ``positions`` (``fused.scan``'s extremes); ``enter`` picks the entrants, ``place`` writes them,
        ``_copy_at`` what they copy at their tokens."""
        assert self.kernels is not None
        occupant, occ_t = torch.empty_like(self.slots["seq"]), torch.empty_like(self.slots["seq"])
        self.kernels.enter(
            self.slots["val"].numpy().view(np.int32),
            self.slots["seq"].numpy(),
            score.contiguous().numpy().view(np.int32),
            positions.numpy(),
            seq_ids.numpy(),
            occupant.numpy(),
            occ_t.numpy(),
        )
        slots = [self.slots[name].numpy() for name in ("val", "seq", "pos", "start", "win")]
        self.kernels.place(
            occupant.numpy(), occ_t.numpy(), acts.numpy(), sign, seq_ids.numpy(), before, *slots
        )
        _copy_at(self.slots, occupant, occ_t, per_token or {}, per_unit or {})

    def sorted(self) -> Examples:
        order = rank_key(self.slots["val"], self.slots["seq"]).argsort(dim=1, descending=True, stable=True)
        return Examples.from_slots({name: _take(v, order).cpu().numpy() for name, v in self.slots.items()})

    def merge(self, other: dict[str, Tensor]) -> None:
        """Keep the k best of both (``rank_key``'s order) of this state's and ``other``'s slots."""
        both = _concat_slots(self.slots, other)
        keep = rank_key(both["val"], both["seq"]).topk(self.k, dim=1).indices
        self.slots = {name: _take(v, keep) for name, v in both.items()}


def rank_key(val: Tensor, seq: Tensor) -> Tensor:
    """One int64 per example whose order is (value, then the earlier sequence): a total order, so the
    k kept never depend on arrival. The float's bits are mapped to an order-preserving int32 (-0 < +0)."""
    bits = val.float().contiguous().view(torch.int32)
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).long()
    return (ordered << 32) + (0xFFFFFFFE - seq)  # seq in [-1, 2**32 - 2]: the earlier ranks higher


def _concat_slots(mine: dict[str, Tensor], other: dict[str, Tensor]) -> dict[str, Tensor]:
    """Two states' slots side by side ([u, k1 + k2, ...]); a slot array one side never created
    (a value copied at an example's token, created when the first example entered) is zero there."""
    out = {}
    for name in dict.fromkeys([*mine, *other]):
        a, b = mine.get(name), other.get(name)
        if a is None and b is not None:
            a = torch.zeros((*mine["val"].shape, *b.shape[2:]), dtype=b.dtype, device=b.device)
        if b is None and a is not None:
            b = torch.zeros((*other["val"].shape, *a.shape[2:]), dtype=a.dtype, device=a.device)
        assert a is not None and b is not None
        out[name] = torch.cat([a, b.to(a.device)], 1)
    return out


def _lex_order(first: Tensor, then: Tensor) -> Tensor:
    """Per row, the order sorting by ``first``, ties by ``then`` (two stable sorts)."""
    by_then = then.argsort(dim=1, stable=True)
    return by_then.gather(1, first.gather(1, by_then).argsort(dim=1, stable=True))


def _take(value: Tensor, order: Tensor) -> Tensor:
    idx = order.view(*order.shape, *([1] * (value.dim() - 2))).expand(*order.shape, *value.shape[2:])
    return value.gather(1, idx)


def state_bytes(n_units: int, ctx: int, cfg: AccumulatorConfig, context_dims: int | None = None) -> int:
    """About the most memory ``n_units`` units' state takes (``UnitAccumulator``, on its device).

    Each example slot holds ``val`` (float32), ``seq``, ``pos``, ``start`` (int64) and its window
    (float32 x ``window``); a quantile-sample slot also a ``key`` (int32); top and sample slots also
    the token (int32) and projected representation (float16 x ``context_dims``) when the pass keeps
    context for scores. ``result()`` copies the slots out once more; the statistics are per unit.
    """
    window = min(cfg.window, ctx)
    slot = 4 + 3 * 8 + 4 * window
    context = 0 if context_dims is None else 4 + 2 * context_dims
    slots = cfg.top_k * (slot + context) + cfg.bottom_k * slot + cfg.sample_size * (slot + 4 + context)
    statistics = 4 * 8 + 2 * 4 + 8 + 2 * cfg.hist_bins * 8 + 2 * 4  # moments, max/min, bins, hist, salts
    return n_units * (2 * slots + statistics)


class UnitAccumulator:
    """All streaming state of one source's units. See the module docstring."""

    def __init__(
        self,
        n_units: int,
        ctx: int,
        cfg: AccumulatorConfig,
        device: str | torch.device = "cpu",
        fused: bool | None = None,
        name: str = "units",
    ):
        """``fused``: read each batch once with the CPU kernels of ``precompute.pipeline.fused``
        (default: on the CPU, where numba is installed); off, torch's operations give the same state.
        ``name``: the source's, for errors."""
        self.cfg, self.n_units, self.device, self.name = cfg, n_units, torch.device(device), name
        if fused is None:
            fused = self.device.type == "cpu" and fused_kernels is not None
        self.fused = fused
        kernels = None
        if fused:  # few units: one block, read in the caller's thread (several sources may share the CPU)
            assert fused_kernels is not None
            kernels = fused_kernels.SERIAL if n_units <= fused_kernels.BLOCK else fused_kernels.PARALLEL
        self.kernels = kernels
        self.window = min(cfg.window, ctx)
        dev, u, r = self.device, n_units, cfg.sample_size
        self.top = _Extremes(u, cfg.top_k, self.window, dev, kernels)
        self.bottom = _Extremes(u, cfg.bottom_k, self.window, dev, kernels)
        self.sample = {  # a uniform sample of firing tokens: the r smallest keys per unit
            "key": torch.full((u, r), NO_KEY, dtype=torch.int32, device=dev),
            "val": torch.zeros((u, r), device=dev),
            "seq": torch.full((u, r), -1, dtype=torch.long, device=dev),
            "pos": torch.zeros((u, r), dtype=torch.long, device=dev),
            "start": torch.zeros((u, r), dtype=torch.long, device=dev),
            "win": torch.zeros((u, r, self.window), device=dev),
        }
        self.salts = unit_salts(u, cfg.seed).to(dev, torch.int32)
        self.ctx = ctx
        self.count = 0
        self.moments = ExactSum((4, u), dev)
        self.max = torch.full((u,), -torch.inf, device=dev)
        self.min = torch.full((u,), torch.inf, device=dev)
        self.bin_width = torch.zeros(u, dtype=torch.float64, device=dev)  # 0: not set yet
        self.hist = torch.zeros((2 * cfg.hist_bins, u), dtype=torch.long, device=dev)
        self._ones = torch.ones((1, 1), dtype=torch.long, device=dev)

    @torch.inference_mode()
    def update(
        self,
        acts: Float[Tensor, "batch pos units"],
        seq_ids: Int[Tensor, "batch"],
        first: int = 0,
        ctx: int | None = None,
        at_token: dict[str, Tensor] | None = None,
        at_unit: dict[str, Tensor] | None = None,
    ) -> None:
        """Add one batch. Positions before ``first`` (the BOS) are left out of everything.

        ``at_token`` maps names to per-token values ``[batch, pos, ...]`` (the token id, a projected
        representation) that a top or quantile-sample example copies from its token when it enters;
        ``result()`` returns them beside the example's other slots. ``at_unit`` likewise maps names to
        per-token, per-unit values ``[batch, pos, units, ...]`` (a head's attention row), copied for
        the example's own unit.
        """
        acts = acts.to(self.device, torch.float32).contiguous()
        seq_ids = seq_ids.to(self.device)
        ctx = ctx or acts.shape[1]
        per_token, per_unit = at_token or {}, at_unit or {}

        def copied(b: Tensor, u: Tensor, pos: Tensor) -> dict[str, Tensor]:
            return {name: v[b, pos] for name, v in per_token.items()} | {
                name: v[b, pos, u] for name, v in per_unit.items()
            }

        if self.fused:
            self._update_fused(acts, seq_ids, first, ctx, per_token, per_unit)
        else:
            self._update_torch(acts, seq_ids, first, ctx, copied if per_token or per_unit else None)

    def _update_fused(
        self,
        acts: Tensor,
        seq_ids: Tensor,
        first: int,
        ctx: int,
        per_token: dict[str, Tensor],
        per_unit: dict[str, Tensor],
    ) -> None:
        """The CPU's way: one pass over the batch (``fused.scan``), then the entrants placed."""
        before = self.cfg.window_before
        smax, smin, pmax, pmin, occ_b, occ_t = self._scan(acts, seq_ids, first, ctx)
        self.top.update_fused(smax, pmax, acts, 1.0, seq_ids, before, per_token, per_unit)
        self.bottom.update_fused(-smin, pmin, acts, -1.0, seq_ids, before)
        assert self.kernels is not None
        slots = [self.sample[name].numpy() for name in ("val", "seq", "pos", "start", "win")]
        self.kernels.place(occ_b.numpy(), occ_t.numpy(), acts.numpy(), 1.0, seq_ids.numpy(), before, *slots)
        _copy_at(self.sample, occ_b, occ_t, per_token, per_unit)

    def _update_torch(self, acts: Tensor, seq_ids: Tensor, first: int, ctx: int, copy) -> None:
        """torch's way (any device): reductions over the batch, then gathers for the entrants."""
        t, w, before = acts.shape[1], self.window, self.cfg.window_before

        def rows(b: Tensor, u: Tensor, positions: Tensor) -> Tensor:
            """acts[b[i], positions[i, j], u[i]] through one flat gather (fast for few rows)."""
            return acts.view(-1)[(b[:, None] * t + positions) * self.n_units + u[:, None]]

        def windows_at(b: Tensor, u: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
            start = (pos - before).clamp(0, t - w)
            return start, rows(b, u, start[:, None] + torch.arange(w, device=self.device))

        smax, smin, candidates = self._reduce(acts, seq_ids, first, ctx)
        body = torch.arange(first, t, device=self.device)[None, :]
        if candidates is not None:
            self._merge_sample(*candidates, acts, seq_ids, windows_at, copy)
        self.top.update(smax, lambda b, u: rows(b, u, body).argmax(1) + first, seq_ids, windows_at, copy)
        self.bottom.update(-smin, lambda b, u: rows(b, u, body).argmin(1) + first, seq_ids, windows_at)

    def _reduce(self, acts: Tensor, seq_ids: Tensor, first: int, ctx: int):
        """torch's reading of the batch: statistics and histogram updated; returns each sequence's max
        and min and the sample's candidates. ``acts`` is changed in place and restored before returning:
        the reductions run on the whole contiguous tensor, ~10x faster than on a slice."""
        saved = acts[:, :first].clone()
        acts[:, :first] = -torch.inf
        smax = acts.amax(1)
        acts[:, :first] = torch.inf
        smin = acts.amin(1)
        acts[:, :first] = 0.0  # adds nothing to the sums; taken out of the histogram's zero bin
        self.max = torch.maximum(self.max, smax.amax(0))
        self.min = torch.minimum(self.min, smin.amin(0))
        self._update_moments(acts, first)
        self._update_hist(acts, first)
        candidates = self._sample_candidates(acts, seq_ids, first, ctx)
        acts[:, :first] = saved
        return smax, smin, candidates

    def _scan(self, acts: Tensor, seq_ids: Tensor, first: int, ctx: int):
        """The CPU's one pass over the batch (``fused.scan``): updates the statistics, the histogram
        and the sample's keys; returns each sequence's max and min, locators of their tokens, and
        the batch row (-1: kept) and position of the token each sample slot took."""
        assert self.kernels is not None
        b, t, u = acts.shape
        token_keys = _batch_keys(seq_ids, ctx, t, self.cfg.seed)
        smax, smin = torch.empty((b, u)), torch.empty((b, u))
        pmax, pmin = torch.empty((b, u), dtype=torch.long), torch.empty((b, u), dtype=torch.long)
        sums = torch.empty((4, u), dtype=torch.float64)
        occ_b, occ_t = torch.empty_like(self.sample["seq"]), torch.empty_like(self.sample["seq"])
        self.kernels.scan(
            acts.numpy(), first, token_keys.numpy(), self.salts.numpy(), seq_ids.numpy(), ctx,
            self.bin_width.numpy(), self.hist.numpy(),
            self.sample["key"].numpy(), self.sample["seq"].numpy(), self.sample["pos"].numpy(),
            smax.numpy(), pmax.numpy(), smin.numpy(), pmin.numpy(), sums.numpy(), occ_b.numpy(), occ_t.numpy(),
        )  # fmt: skip
        if not bool(torch.isfinite(sums).all()):
            raise self._not_finite()
        self.max = torch.maximum(self.max, smax.amax(0))
        self.min = torch.minimum(self.min, smin.amin(0))
        self.moments.add(sums)
        self.count += b * (t - first)
        return smax, smin, pmax, pmin, occ_b, occ_t

    def _update_moments(self, a: Tensor, first: int) -> None:
        a2 = torch.mul(a, a, out=_scratch("a2", a))
        a3 = torch.mul(a2, a, out=_scratch("a3", a))
        sums = [a.sum((0, 1)), a2.sum((0, 1)), a3.sum((0, 1)), torch.mul(a2, a2, out=a3).sum((0, 1))]
        self.moments.add(torch.stack(sums))
        self.count += a.shape[0] * (a.shape[1] - first)

    def _update_hist(self, a: Tensor, first: int) -> None:
        """Bins are right-closed, (k w, (k + 1) w], so bins k >= 0 count exactly the firing tokens.

        ``hist`` is [2 * bins, units]: scatter-adding along dim 0 is faster than a flat bincount.
        """
        h = self.cfg.hist_bins
        extent = torch.maximum(self.max.abs(), self.min.abs()).double()  # already includes this batch
        if not bool(torch.isfinite(extent).all()):  # max and min hold any NaN or inf
            raise self._not_finite()
        needed = torch.where(extent > 0, torch.exp2(torch.floor(torch.log2(extent / h)) + 1), 0.0)
        grow = needed > self.bin_width
        if bool(grow.any()):
            self._rebin(torch.where(grow, needed, self.bin_width))
        inv_width = torch.where(self.bin_width > 0, 1 / self.bin_width, 1.0)
        if bool((inv_width < 2.0**127).all()):  # float32 holds every inverse
            scaled = torch.mul(a, inv_width.float(), out=_scratch("scaled", a))  # exact: powers of two
        else:  # bins narrower than 2**-127 (a unit of float32 subnormals): in float64
            scaled = a.double() * inv_width
        scaled.ceil_().add_(h - 1)  # in [0, 2h - 1]: |a| <= extent < h * width
        idx = _scratch("idx", a, torch.long).copy_(scaled).view(a.shape[0] * a.shape[1], self.n_units)
        self.hist.scatter_add_(0, idx, self._ones.expand_as(idx))
        self.hist[h - 1] -= a.shape[0] * first  # the masked (zeroed) first positions

    def _rebin(self, new_width: Tensor) -> None:
        self.hist = rebinned(self.hist, self.bin_width, new_width)
        self.bin_width = new_width

    def _sample_candidates(self, a: Tensor, seq_ids: Tensor, first: int, ctx: int):
        """Firing tokens whose key is at most their unit's current r-th key (few, after warm-up)."""
        if self.sample["key"].shape[1] == 0:
            return None
        b, t, u = a.shape
        token_keys = _batch_keys(seq_ids, ctx, t, self.cfg.seed)[..., None]
        keys = torch.bitwise_xor(token_keys, self.salts, out=_scratch("keys", a, torch.int32))
        bound = self.sample["key"].max(1).values  # the r-th smallest key; a tie: the merge ranks by token
        open_ = torch.le(keys, bound, out=_scratch("open", a, torch.bool))
        open_ &= torch.gt(a, 0, out=_scratch("firing", a, torch.bool))  # masked positions are 0
        bi, ti, ui = open_.nonzero(as_tuple=True)
        if len(ui) == 0:
            return None
        return bi, ti, ui, keys[bi, ti, ui]

    def _merge_sample(
        self, bi, ti, ui, cand_keys, acts: Tensor, seq_ids: Tensor, windows_at, copy=None
    ) -> None:
        """Priority sampling: keep per unit the r firing tokens with the smallest keys.

        One sort of (state + candidates) by (unit, key); entrants take the slots they evict.
        """
        state, (u, r) = self.sample, self.sample["key"].shape
        all_units = torch.cat([torch.arange(u, device=self.device).repeat_interleave(r), ui])
        all_keys = torch.cat([state["key"].view(-1), cand_keys]).long()
        token = torch.cat([_global_pos(state, self.ctx).view(-1), seq_ids[bi] * self.ctx + ti])
        by_token = torch.argsort(token, stable=True)  # ties of key: the earlier token first
        order = by_token[torch.argsort((all_units * (NO_KEY + 1) + all_keys)[by_token], stable=True)]
        counts = torch.bincount(all_units, minlength=u)
        rank = torch.arange(len(order), device=self.device) - (counts.cumsum(0) - counts)[all_units[order]]
        chosen = torch.zeros(len(order), dtype=torch.bool, device=self.device)
        chosen[order[rank < r]] = True  # exactly r per unit
        c = chosen[u * r :].nonzero(as_tuple=True)[0]
        c = c[torch.argsort(ui[c], stable=True)]  # entrants, grouped by unit like the slots they take
        start, windows = windows_at(bi[c], ui[c], ti[c])
        incoming = {
            "key": cand_keys[c],
            "val": acts[bi[c], ti[c], ui[c]],
            "seq": seq_ids[bi[c]],
            "pos": ti[c],
            "start": start,
            "win": windows,
        }
        if copy is not None:
            incoming |= copy(bi[c], ui[c], ti[c])
        _fill(state, (~chosen[: u * r].view(u, r)).nonzero(as_tuple=True), incoming)

    def flush(self) -> None:
        """End a block of batches: its float64 sums join the exact totals (``ExactSum``)."""
        self.moments.flush()

    def state(self) -> dict[str, Tensor]:
        """Everything kept so far, by name (what ``load_state`` and ``merge`` take)."""
        slots = {
            f"{part}.{name}": v
            for part, held in (
                ("top", self.top.slots),
                ("bottom", self.bottom.slots),
                ("sample", self.sample),
            )
            for name, v in held.items()
        }
        return slots | {
            "moments": self.moments.state(),
            "count": torch.tensor(self.count, dtype=torch.int64),
            "max": self.max,
            "min": self.min,
            "bin_width": self.bin_width,
            "hist": self.hist,
        }

    def load_state(self, state: dict[str, Tensor]) -> None:
        """Continue from a ``state()`` of an accumulator with the same settings (a resumed run)."""
        dev = self.device
        self.top.slots, self.bottom.slots, self.sample = (
            _part(state, p, dev) for p in ("top", "bottom", "sample")
        )
        self.moments.load(state["moments"])
        self.count = int(state["count"])
        self.max, self.min = state["max"].to(dev), state["min"].to(dev)
        self.bin_width, self.hist = state["bin_width"].to(dev), state["hist"].to(dev)

    def merge(self, other: dict[str, Tensor]) -> None:
        """Add another shard's ``state()`` (other windows of the same run): exact, in any order."""
        dev = self.device
        self.top.merge(_part(other, "top", dev))
        self.bottom.merge(_part(other, "bottom", dev))
        both = _concat_slots(self.sample, _part(other, "sample", dev))
        order = _lex_order(both["key"], _global_pos(both, self.ctx))[:, : self.sample["key"].shape[1]]
        self.sample = {name: _take(v, order) for name, v in both.items()}
        merged_sum = ExactSum(self.moments.shape, dev)
        merged_sum.load(other["moments"])
        self.moments.merge(merged_sum)
        self.count += int(other["count"])
        self.max = torch.maximum(self.max, other["max"].to(dev))
        self.min = torch.minimum(self.min, other["min"].to(dev))
        width = torch.maximum(self.bin_width, other["bin_width"].to(dev))
        theirs = rebinned(other["hist"].to(dev), other["bin_width"].to(dev), width)
        self.hist = rebinned(self.hist, self.bin_width, width) + theirs
        self.bin_width = width

    def _not_finite(self) -> NotFinite:
        return NotFinite(
            f"{self.name}: activations that are not finite (NaN or inf), so the run stops; a model that "
            "overflows in bfloat16 or float16 runs in --dtype float32"
        )

    def result(self) -> AccumulatorResult:
        """Final statistics and examples as numpy arrays."""
        n = max(self.count, 1)
        m1, m2, m3, m4 = (self.moments.value() / n).cpu().numpy()
        var = np.maximum(m2 - m1**2, 0.0)
        std = np.sqrt(var)
        with np.errstate(divide="ignore", invalid="ignore"):
            skew = np.where(var > 0, (m3 - 3 * m1 * m2 + 2 * m1**3) / std**3, 0.0)
            kurt = np.where(var > 0, (m4 - 4 * m1 * m3 + 6 * m1**2 * m2 - 3 * m1**4) / var**2, 0.0)
        hist = self.hist.T.cpu().numpy()
        by_key = _lex_order(self.sample["key"], _global_pos(self.sample, self.ctx))
        sample = {k: _take(v, by_key).cpu().numpy() for k, v in self.sample.items()}
        return AccumulatorResult(
            max=self.max.cpu().numpy(),
            min=self.min.cpu().numpy(),
            density=hist[:, self.cfg.hist_bins :].sum(1) / n,
            moments=Moments(self.count, m1, std, skew, kurt),
            hist=Histogram(self.bin_width.cpu().numpy(), hist, self.cfg.hist_bins),
            top=self.top.sorted(),
            bottom=self.bottom.sorted(),
            sample=Examples.from_slots(sample),
            sample_keys=sample["key"],
        )


def rebinned(hist: Tensor, width: Tensor, new_width: Tensor) -> Tensor:
    """``hist`` ([2 * bins, units]) in bins widened to ``new_width`` (a power-of-two multiple of
    ``width``, or any width where ``width`` is 0): bin k moves to floor(k / ratio), exactly."""
    h = hist.shape[0] // 2
    ratio = torch.where(width > 0, new_width / width.clamp(min=1e-300), 1.0)
    k = torch.arange(-h, h, device=hist.device, dtype=torch.float64)
    target = (torch.floor(k[:, None] / ratio[None, :]).long() + h).clamp(0, 2 * h - 1)
    return torch.zeros_like(hist).scatter_add_(0, target, hist)


def _part(state: dict[str, Tensor], part: str, device: torch.device) -> dict[str, Tensor]:
    prefix = part + "."
    return {name[len(prefix) :]: v.to(device) for name, v in state.items() if name.startswith(prefix)}


def _global_pos(slots: dict[str, Tensor], ctx: int) -> Tensor:
    """Each slot's token in the whole pass (-ctx and below: an empty slot)."""
    return slots["seq"] * ctx + slots["pos"]


def hist_edges(bin_width: float, n_bins: int) -> np.ndarray:
    """Edges of the 2 * n_bins right-closed bins: [k * w for k in -n_bins .. n_bins]."""
    return np.arange(-n_bins, n_bins + 1, dtype=np.float64) * bin_width
