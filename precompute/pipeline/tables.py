"""From what the pass kept to the store's tables: one dict of columns per table, ready for
``StoreWriter.append``. Pure functions of an ``AccumulatorResult`` (and of the units' directions).

- ``units_table``: statistics and the histogram, trimmed to its non-empty bins;
- ``examples_table``: top, bottom and quantile-group examples;
- ``polysemanticity_tables``: the scores (long format) and each kept example's context cluster;
- ``logits_table``, ``neighbor_arrays``: the output directions through W_U, and nearest units;
- ``links_table``, ``unit_scores_table``: the bridge between a layer's neurons and an SAE's features.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from neurodash.config import AccumulatorConfig
from precompute.device import cpu_computes_bf16
from precompute.pipeline import fused
from precompute.pipeline.accumulate import NO_KEY, AccumulatorResult, Examples, NotFinite, hist_edges
from precompute.pipeline.polysemanticity import bimodality, combined, example_scores, kept_examples

Columns = dict[str, Sequence | np.ndarray]  # what StoreWriter.append takes
DIVERSITY_METRICS = (
    "context_diversity",
    "token_diversity",
    "context_diversity_weighted",
    "token_diversity_weighted",
)


def units_table(sid: str, res: AccumulatorResult, n_bins: int) -> Columns:
    """Each unit's statistics, and its histogram trimmed to the bins from its first non-empty one to
    its last (a unit that never fired: the bin below zero)."""
    n, m, h = res.n_units, res.moments, res.hist
    filled = h.counts > 0  # [units, 2 * n_bins]
    fired = filled.any(1)
    lo = np.where(fired, filled.argmax(1), n_bins - 1)
    hi = np.where(fired, 2 * n_bins - filled[:, ::-1].argmax(1), n_bins)
    width = np.where(h.bin_width > 0, h.bin_width, 1.0)
    every_edge = (hist_edges(1.0, n_bins)[None, :] * width[:, None]).astype(np.float32)  # hist_edges(w)
    j = np.arange(2 * n_bins + 1)[None, :]
    edges = _rows(every_edge[(j >= lo[:, None]) & (j <= hi[:, None])], hi - lo + 1)
    bins = j[:, :-1]
    counts = _rows(h.counts[(bins >= lo[:, None]) & (bins < hi[:, None])], hi - lo)
    return {
        "source_id": [sid] * n,
        "unit": np.arange(n, dtype=np.int32),
        "max_act": res.max,
        "min_act": res.min,
        "mean_act": m.mean.astype(np.float32),
        "std_act": m.std.astype(np.float32),
        "skew": m.skew.astype(np.float32),
        "kurtosis": m.kurtosis.astype(np.float32),
        "density": res.density.astype(np.float32),
        "n_tokens": np.full(n, m.count, dtype=np.int64),
        "hist_edges": edges,
        "hist_counts": counts,
    }


def _rows(flat: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """``flat`` cut into consecutive rows of ``lengths``."""
    return np.split(flat, np.cumsum(lengths)[:-1])[: len(lengths)]


RELATIVE_FREQUENCIES = {"freq_10": 0.1, "freq_50": 0.5}  # metric: the fraction of its own max


def frequency_scores(sid: str, res: AccumulatorResult) -> Columns:
    """Sparsity on each unit's own scale: the fraction of tokens above 10% and 50% of its max (long
    format). From the histogram: exact but for the one bin each threshold falls in, interpolated
    (``Histogram.fraction_above``); 0 for a unit that never fires."""
    n = res.n_units
    parts = []
    for metric, fraction in RELATIVE_FREQUENCIES.items():
        value, _ = res.hist.fraction_above(fraction * np.maximum(res.max, 0.0))
        parts.append((metric, value))
    return {
        "source_id": [sid] * (n * len(parts)),
        "unit": np.tile(np.arange(n, dtype=np.int32), len(parts)),
        "metric": np.repeat(np.array([m for m, _ in parts], dtype=object), n),
        "value": np.concatenate([v for _, v in parts]).astype(np.float64),
    }


def examples_table(sid: str, res: AccumulatorResult, cfg: AccumulatorConfig) -> Columns:
    """Top and bottom examples where the unit fires (> 0) or goes negative, and quantile groups."""
    cols = _example_columns(res, cfg)
    return {
        "source_id": [sid] * len(cols["unit"]),
        "unit": cols["unit"].astype(np.int32),
        "bucket": cols["bucket"],
        "rank": cols["rank"].astype(np.int32),
        "seq_id": cols["seq"],
        "pos": cols["pos"].astype(np.int32),
        "start": cols["start"].astype(np.int32),
        "acts": cols["win"],
    }


def attention_table(sid: str, res: AccumulatorResult, cfg: AccumulatorConfig) -> Columns:
    """Each head example's query row over its window (``pattern[i]``: attention from ``pos`` to
    ``start + i``), and ``before``: the attention that falls on keys before the window. Keyed like
    ``examples_table``'s rows, in the same order."""
    cols = _example_columns(res, cfg)
    rows, starts, width = cols.get("attn"), cols["start"], cols["win"].shape[-1]
    if rows is None:
        rows = np.zeros((len(starts), width), dtype=np.float32)
    keys = np.arange(rows.shape[-1])[None, :]
    in_window = (keys >= starts[:, None]) & (keys < starts[:, None] + width)
    return {
        "source_id": [sid] * len(starts),
        "unit": cols["unit"].astype(np.int32),
        "bucket": cols["bucket"],
        "rank": cols["rank"].astype(np.int32),
        "pattern": rows[in_window].reshape(len(starts), width).astype(np.float32),
        "before": np.where(keys < starts[:, None], rows, 0.0).sum(1).astype(np.float32),
    }


def _example_columns(res: AccumulatorResult, cfg: AccumulatorConfig) -> dict[str, np.ndarray]:
    """Every kept example's slots (and attention rows, for heads), ordered by unit, bucket, rank."""
    top, bottom = res.top, res.bottom
    groups = [f"q{g / cfg.quantile_groups:.2f}" for g in range(cfg.quantile_groups)]
    names = np.array(sorted({"top", "bottom", *groups}), dtype=object)  # codes sort as their names
    code = {name: i for i, name in enumerate(names)}
    parts = [
        _bucket_rows(top, top.val > 0, np.full(top.val.shape, code["top"])),
        _bucket_rows(bottom, bottom.val > 0, np.full(bottom.val.shape, code["bottom"])),
        _quantile_rows(res.sample, res.sample_keys < NO_KEY, np.array([code[g] for g in groups])),
    ]
    widths = {p["attn"].shape[-1] for p in parts if "attn" in p}
    for p in parts:  # a bucket that copied no row (heads' bottom: norms are never negative) gets zeros
        if widths and "attn" not in p:
            p["attn"] = np.zeros((len(p["unit"]), max(widths)), dtype=np.float32)
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.lexsort((cols["rank"], cols["bucket"], cols["unit"]))
    cols = {k: v[order] for k, v in cols.items()}
    cols["bucket"] = names[cols["bucket"]]
    return cols


def _bucket_rows(
    e: Examples,
    keep: np.ndarray,
    bucket: np.ndarray,
    rank: np.ndarray | None = None,
    slot: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The slots where ``keep``, with their ``bucket`` and ``rank`` (default: the slot); ``slot``
    (default: itself) names the slot of ``e`` each one reads."""
    units, slots = np.nonzero(keep)
    at = slots if slot is None else slot[units, slots]
    rows = {
        "unit": units,
        "bucket": bucket[units, slots],
        "rank": (slots if rank is None else rank[units, slots]),
        "seq": e.seq[units, at],
        "pos": e.pos[units, at],
        "start": e.start[units, at],
        "win": e.win[units, at],
    }
    if e.attn is not None:
        rows["attn"] = e.attn[units, at]
    return rows


def _quantile_rows(sample: Examples, valid: np.ndarray, codes: np.ndarray) -> dict[str, np.ndarray]:
    """Sort each unit's sample by value; the i-th of n goes to group floor(i * G / n) of the G
    groups, whose bucket ``codes`` are given.

    Group j holds the sample's quantiles [j / G, (j + 1) / G) and is named by its lower bound
    (``q0.00``, ``q0.20``, ...); rank 0 is the group's strongest example.
    """
    n_groups = len(codes)
    by_value = np.argsort(np.where(valid, sample.val, np.inf), axis=1, kind="stable")
    n = valid.sum(1, keepdims=True)
    i = np.arange(valid.shape[1])[None, :]
    group = (i * n_groups) // np.maximum(n, 1)
    keep = i < n
    in_group_from_top = np.zeros_like(group)
    for g in range(n_groups):  # rank within a group counts down from its strongest member
        members = (group == g) & keep
        in_group_from_top = np.where(members, np.cumsum(members[:, ::-1], 1)[:, ::-1] - 1, in_group_from_top)
    return _bucket_rows(sample, keep, codes[np.minimum(group, n_groups - 1)], in_group_from_top, by_value)


def polysemanticity_tables(
    sid: str, res: AccumulatorResult, rep_mean: np.ndarray, dims: int
) -> tuple[Columns, Columns]:
    """The scores (long format, NaN left out) and each kept example's context cluster."""
    kept = kept_examples(res.top, res.sample, dims)
    ex = example_scores(kept, rep_mean)
    metrics = {name: ex[name] for name in DIVERSITY_METRICS}
    metrics["bimodality"] = bimodality(res.moments.skew, res.moments.kurtosis)
    metrics["polysemanticity"] = combined(metrics["context_diversity"], metrics["token_diversity"])
    metrics["polysemanticity_weighted"] = combined(
        metrics["context_diversity_weighted"], metrics["token_diversity_weighted"]
    )
    units, names, values = [], [], []
    for name, v in metrics.items():
        ok = np.flatnonzero(np.isfinite(v))
        units.append(ok)
        names.append(np.full(len(ok), name, dtype=object))
        values.append(v[ok])
    units_np = np.concatenate(units)
    scores = {
        "source_id": [sid] * len(units_np),
        "unit": units_np.astype(np.int32),
        "metric": np.concatenate(names),
        "value": np.concatenate(values).astype(np.float64),
    }
    u, j = np.nonzero(kept["valid"])
    clusters = {
        "source_id": [sid] * len(u),
        "unit": u.astype(np.int32),
        "seq_id": kept["seq"][u, j].astype(np.int64),
        "pos": kept["pos"][u, j].astype(np.int32),
        "cluster": ex["cluster"][u, j].astype(np.int32),
    }
    return scores, clusters


LOGIT_BLOCK_BYTES = 1 << 28  # the [units, vocab] float32 effects of one block of units: 256 MiB


def logit_block(n_vocab: int, budget: int = LOGIT_BLOCK_BYTES) -> int:
    """Units per block whose ``[block, n_vocab]`` float32 logit effects fit in ``budget`` bytes."""
    return max(1, budget // (4 * n_vocab))


def logits_table(sid: str, directions: Tensor, unembed: Tensor, k: int, block: int | None = None) -> Columns:
    """Top ``k`` boosted and suppressed tokens of each unit's output direction through W_U.

    On the device of ``unembed``, in blocks of units (``logit_block``): one ``[block, vocab]`` product
    at a time, of which only its top ``k`` of each sign leave the device."""
    return effects_columns(sid, logit_arrays(directions, unembed, k, block))


def top_effects(chunks: Iterable[Tensor], k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per unit, the ``k`` largest and the ``k`` smallest of its logit effects, given in chunks of
    units (``[chunk, d_vocab]`` each): values and token ids, ``[n_units, k]`` each, strongest first,
    on the chunks' device (nothing is copied to the host)."""
    parts = [_extremes(effects, k) for effects in chunks]
    return tuple(torch.cat(column) for column in zip(*parts, strict=True))  # type: ignore[return-value]


def _extremes(effects: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``top_effects`` of one chunk: on the CPU one read of each row (``fused.extremes``), elsewhere
    ``topk`` of each sign. Effects that are NaN (weights that hold NaN) stop the run: ``NotFinite``."""
    if k > effects.shape[1]:
        raise ValueError(f"top {k} of {effects.shape[1]} tokens")
    if k > 0 and effects.device.type == "cpu" and effects.dtype in (torch.float32, torch.float64):
        *found, nan = fused.extremes(effects.detach().numpy(), k)
        nan = bool(nan.any())
        up_vals, up_ids, down_vals, down_ids = map(torch.from_numpy, found)
    else:
        up_vals, up_ids = effects.topk(k, dim=1)
        down_vals, down_ids = effects.topk(k, dim=1, largest=False)  # as (-effects).topk, without its copy
        nan = bool(up_vals.isnan().any())  # topk ranks NaN above everything
    if nan:
        raise NotFinite(
            "logit effects that are NaN: the unembedding or the units' output directions hold NaN"
        )
    return up_vals, up_ids, down_vals, down_ids


def logit_arrays(
    directions: Tensor, unembed: Tensor, k: int, block: int | None = None
) -> dict[str, np.ndarray]:
    """``logits_table``'s values and token ids, ``[units, sign, k]`` each (``effects_columns``)."""
    block = block or logit_block(unembed.shape[1])
    directions = directions.to(unembed.device, unembed.dtype)
    if (
        screens(unembed)
        and 0 < k <= unembed.shape[1]
        and directions.shape[0]
        and _in_range(directions, unembed)
    ):
        return screened_logit_arrays(directions, unembed, k, block)
    chunks = (directions[i : i + block] @ unembed for i in range(0, directions.shape[0], block))
    return effect_arrays(chunks, k)


# The screen's error bounds. bfloat16 inputs are each within u = 2**-8 of themselves (normal floats:
# ``_in_range``), so a product of bfloat16 vectors summed in float32 is within
# (2u + u**2 + gamma_d (1 + u)**2) |w| |u| of the exact one (Cauchy-Schwarz; gamma_d = d 2**-24 /
# (1 - d 2**-24) bounds float32's summing of d terms, in any order), give or take (d + 2) 2**-126
# where products, sums or the result fall below float32's normal range (oneDNN flushes them to 0);
# and rounding the sum to bfloat16 moves it by at most u / (1 - u) of the result (``fused.SCREEN_REL``).
_U = 2.0**-8
_TINY = 2.0**-126  # float32's smallest normal number


def screen_margin(d_model: int) -> float:
    """The bound's factor on |w| |u| for vectors of ``d_model`` (with the float64 dot's own error,
    gamma_d of float64), widened by 2**-12 of itself: more than float32's rounding of the bounds."""
    gamma = d_model * 2.0**-24 / (1 - d_model * 2.0**-24)
    gamma64 = d_model * 2.0**-53 / (1 - d_model * 2.0**-53)
    return (2 * _U + _U**2 + gamma * (1 + _U) ** 2 + gamma64) * (1 + 2.0**-12)


def screens(unembed: Tensor) -> bool:
    """Whether ``logit_arrays`` screens the products in bfloat16 (``screened_logit_arrays``): on a
    CPU that computes in it natively, for float32 weights, where the product sums in float32."""
    return (
        unembed.device.type == "cpu"
        and unembed.dtype == torch.float32
        and cpu_computes_bf16()
        and _sums_in_float32()
    )


@functools.cache
def _sums_in_float32() -> bool:
    """Whether a product of bfloat16 matrices sums in float32 and rounds its result to nearest, as
    the screen's bounds assume (oneDNN's does), at a shape that takes the kernels of the real ones:
    1024 terms of 1 + 2**-7 sum to 1032 exactly (in bfloat16, whose step there is 8, they would
    not), and 1 + 7 * 2**-9 rounds up to 1 + 2**-6 (truncating would give 1 + 2**-7)."""
    ones = torch.ones((128, 1024), dtype=torch.bfloat16)
    columns = torch.zeros((1024, 1024), dtype=torch.bfloat16)
    columns[:, 0] = 1 + 2**-7
    columns[0, 1], columns[1, 1] = 1.0, 7 * 2**-9
    sums = (ones @ columns).float()
    return bool((sums[:, 0] == 1032.0).all()) and bool((sums[:, 1] == 1 + 2**-6).all())


def _in_range(directions: Tensor, unembed: Tensor) -> bool:
    """Whether the screen's bounds hold for these weights: no float32 subnormals (bfloat16 rounds
    them coarsely, oneDNN reads them as 0), and products far from overflowing."""
    *_, norms, normal = _screen_weights(unembed)
    largest = float(directions.double().norm(dim=1).max()) * float(norms.max())
    return normal and not _has_subnormals(directions) and largest < 2.0**100


def _has_subnormals(x: Tensor) -> bool:
    magnitude = x.abs()
    return bool(((magnitude > 0) & (magnitude < _TINY)).any())


def screened_logit_arrays(directions: Tensor, unembed: Tensor, k: int, block: int) -> dict[str, np.ndarray]:
    """``logit_arrays`` from a bfloat16 product: per unit, the tokens whose error bounds let them
    reach its top or bottom ``k`` are computed again exactly (``fused.screened_extremes``): the same
    lists, values from float64 products. Weights that are not finite stop the run (``NotFinite``)."""
    if k > unembed.shape[1]:
        raise ValueError(f"top {k} of {unembed.shape[1]} tokens")
    low, rows, norms, _ = _screen_weights(unembed)
    if not (bool(torch.isfinite(directions).all()) and np.isfinite(norms).all()):
        raise NotFinite(
            "logit effects that are not finite: the unembedding or the units' output directions hold NaN or inf"
        )
    floor = np.float32((directions.shape[1] + 2) * _TINY * 2)
    parts = []
    for i in range(0, directions.shape[0], block):
        w = directions[i : i + block].contiguous()
        approx = (w.bfloat16() @ low).view(torch.uint16)
        margin = (screen_margin(w.shape[1]) * w.double().norm(dim=1)).float()
        parts.append(
            fused.screened_extremes(approx.numpy(), norms, margin.numpy(), floor, w.numpy(), rows, k)
        )
    up_vals, up_ids, down_vals, down_ids = (np.concatenate(column) for column in zip(*parts, strict=True))
    return {"value": np.stack([up_vals, down_vals], 1), "token_id": np.stack([up_ids, down_ids], 1)}


_SCREEN_WEIGHTS: dict[str, tuple[Tensor, np.ndarray, np.ndarray, bool]] = {}


def _screen_weights(unembed: Tensor) -> tuple[Tensor, np.ndarray, np.ndarray, bool]:
    """W_U in bfloat16, its columns as rows ([vocab, d], float32), their norms (float32, rounded up)
    and whether it holds no subnormals: made once for every source of a run, and forgotten with the
    unembedding (or when it changes)."""
    key = f"{id(unembed)}:{unembed._version}"
    if key not in _SCREEN_WEIGHTS:
        _SCREEN_WEIGHTS.clear()
        norms = (unembed.double().norm(dim=0) * (1 + 2.0**-12)).float()  # widened before rounding
        rows = unembed.T.contiguous().numpy()
        _SCREEN_WEIGHTS[key] = (unembed.bfloat16(), rows, norms.numpy(), not _has_subnormals(unembed))
        weakref.finalize(unembed, _SCREEN_WEIGHTS.pop, key, None)
    return _SCREEN_WEIGHTS[key]


def effect_arrays(chunks: Iterable[Tensor], k: int) -> dict[str, np.ndarray]:
    """Top ``k`` boosted and suppressed tokens per unit of logit effects given in chunks of units
    (``[chunk, d_vocab]`` each, on the device): only the top ``k`` leave it, in one copy at the end.
    ``value`` and ``token_id``, ``[units, sign, k]`` each (sign ``+`` first)."""
    up_vals, up_ids, down_vals, down_ids = top_effects(chunks, k)
    return {
        "value": torch.stack([up_vals, down_vals], 1).float().cpu().numpy(),
        "token_id": torch.stack([up_ids, down_ids], 1).cpu().numpy(),
    }


def effects_table(sid: str, chunks: Iterable[Tensor], k: int) -> Columns:
    """``effects_columns`` of ``effect_arrays``: rows ordered by unit, sign (``+`` first), rank."""
    return effects_columns(sid, effect_arrays(chunks, k))


def effects_columns(sid: str, arrays: dict[str, np.ndarray]) -> Columns:
    """The ``logits`` table's rows of ``effect_arrays``' ``value`` and ``token_id``."""
    vals, ids = arrays["value"], arrays["token_id"]
    n, k = vals.shape[0], vals.shape[2]
    return {
        "source_id": [sid] * vals.size,
        "unit": np.repeat(np.arange(n), 2 * k),
        "sign": np.tile(np.repeat(np.array(["+", "-"], dtype=object), k), n),
        "rank": np.tile(np.arange(k), 2 * n),
        "token_id": ids.reshape(-1),
        "value": vals.reshape(-1),
    }


def neighbor_arrays(directions: Tensor, k: int) -> dict[str, np.ndarray]:
    """Each unit's ``k`` nearest units of the same source by cosine similarity of ``directions``:
    ``neighbor`` (int32) and ``cosine`` (float32), ``[units, k]`` each, nearest first.

    Neurons: their output directions (rows of W_out); SAE features: their decoder rows.
    """
    unit_dirs = torch.nn.functional.normalize(directions.float(), dim=1)
    k = max(min(k, unit_dirs.shape[0] - 1), 0)
    neighbors, cosines = [np.zeros((0, k), np.int32)], [np.zeros((0, k), np.float32)]
    for chunk_start in range(0, unit_dirs.shape[0], 1024):
        sims = unit_dirs[chunk_start : chunk_start + 1024] @ unit_dirs.T
        rows = torch.arange(sims.shape[0], device=sims.device)
        sims[rows, rows + chunk_start] = -torch.inf  # not its own neighbor
        vals, ids = sims.topk(k, dim=1)
        neighbors.append(ids.cpu().numpy().astype(np.int32))
        cosines.append(vals.cpu().numpy().astype(np.float32))
    return {"neighbor": np.concatenate(neighbors), "cosine": np.concatenate(cosines)}


def neighbors_columns(sid: str, arrays: dict[str, np.ndarray]) -> Columns:
    """The ``neighbors`` table's rows of ``neighbor_arrays``: ordered by unit, then rank."""
    neighbor, cosine = arrays["neighbor"], arrays["cosine"]
    n, k = neighbor.shape
    return {
        "source_id": [sid] * neighbor.size,
        "unit": np.repeat(np.arange(n, dtype=np.int32), k),
        "rank": np.tile(np.arange(k, dtype=np.int32), n),
        "neighbor": neighbor.reshape(-1),
        "cosine": cosine.reshape(-1),
    }


def links_table(sid: str, target: str, share: np.ndarray, weight: np.ndarray, k: int) -> Columns:
    """Each row's ``k`` largest ``share`` entries with a share above zero, largest first."""
    k = min(k, share.shape[1])
    top = np.argpartition(-share, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(share, top, 1), axis=1, kind="stable"), 1)
    units, ranks = np.nonzero(np.take_along_axis(share, top, 1) > 0)
    cols = top[units, ranks]
    return {
        "source_id": [sid] * len(units),
        "unit": units.astype(np.int32),
        "rank": ranks.astype(np.int32),
        "target_source_id": [target] * len(units),
        "target_unit": cols.astype(np.int32),
        "weight": weight[units, cols].astype(np.float32),
        "share": share[units, cols].astype(np.float32),
    }


def unit_scores_table(sid: str, metric: str, values: np.ndarray) -> Columns:
    """One score per unit of ``sid`` (long format, as ``polysemanticity_tables`` writes them)."""
    return {
        "source_id": [sid] * len(values),
        "unit": np.arange(len(values), dtype=np.int32),
        "metric": [metric] * len(values),
        "value": values.astype(np.float64),
    }
