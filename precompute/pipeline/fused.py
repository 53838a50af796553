"""One pass over a batch's activations on the CPU (numba): what ``UnitAccumulator.update`` otherwise
reads a dozen times with separate torch operations.

``scan`` gives, per unit, each sequence's max and min with their first positions, the batch's sums
of the first four powers (float64, added in token order: deterministic), and updates the histogram
(widening a unit's bins exactly, as ``rebinned``, once a batch, to hold its largest value) and the
quantile sample (a firing token whose (key, token) ranks before the unit's worst kept one takes its
slot). ``enter`` picks the top/bottom entrants per unit by their rank keys, ``place`` writes them
with their windows, and ``take`` copies what entrants keep at their token.

Units are split in blocks across threads; every unit is read and written by one thread, in token
order, so the results do not depend on the number of threads.

Beside the pass: ``attention_sums`` (a layer's head statistics), ``bridge_sums`` (the SAE's
neuron-feature bridge over its active features), ``extremes`` (the top and bottom logit effects
of each unit, one read of each row) and ``screened_extremes`` (the same from a bfloat16 product,
with the few tokens that can matter computed exactly).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

# numba's thread pool follows OMP_NUM_THREADS as torch's does (torchrun sets it to 1 for each rank):
# a pool larger than a rank's share of the cores leaves OpenMP workers spinning on cores the other
# ranks need (two ranks on 2 cores ran 4-7x slower). Read when numba is imported: here, first.
_omp = os.environ.get("OMP_NUM_THREADS", "")
if _omp.isdigit() and int(_omp) > 0 and "numba" not in sys.modules:  # once numba runs, it is fixed
    os.environ.setdefault("NUMBA_NUM_THREADS", _omp)

from numba import config, get_num_threads, njit, prange, set_num_threads  # noqa: E402

BLOCK = 64  # the fewest units per parallel task: enough to vectorise the inner loop over units
MAX_BLOCK = 256  # the most: a thread's block-local state stays in its cache


def use_threads(n: int) -> None:
    """The parallel kernels called from this thread run on ``n`` threads (at most numba's pool): as
    many as torch's, which a torchrun rank gets from OMP_NUM_THREADS (1 by default). More would
    oversubscribe the cores, and numba's OpenMP threads spin while they wait."""
    set_num_threads(max(1, min(n, config.NUMBA_NUM_THREADS)))  # pyright: ignore[reportAttributeAccessIssue]


@njit(cache=True, nogil=True, error_model="numpy")
def _rebin(hist, u, h, ratio):
    """Unit ``u``'s bins widened by ``ratio`` (a power of two): bin k moves to floor(k / ratio)."""
    moved = np.zeros(2 * h, dtype=hist.dtype)
    for c in range(2 * h):
        j = int(math.floor((c - h) / ratio)) + h
        moved[min(max(j, 0), 2 * h - 1)] += hist[c, u]
    for c in range(2 * h):
        hist[c, u] = moved[c]


@njit(cache=True, nogil=True, error_model="numpy")
def _needed_width(extent, h):
    """The smallest power of two ``w`` with ``extent < h * w`` (``UnitAccumulator._update_hist``)."""
    return 2.0 ** (math.floor(math.log2(extent / h)) + 1.0)


@njit(cache=True, nogil=True, error_model="numpy")
def _worst(keys, seq, pos, ctx, u):
    """Unit ``u``'s sample slot ranked last by (key, token): a token is ``seq * ctx + pos`` in the
    whole pass (an empty slot's, -ctx, before all)."""
    j = 0
    for i in range(1, keys.shape[1]):
        if keys[u, i] > keys[u, j] or (
            keys[u, i] == keys[u, j] and seq[u, i] * ctx + pos[u, i] > seq[u, j] * ctx + pos[u, j]
        ):
            j = i
    return j


def block_size(n_units: int, threads: int) -> int:
    """Units per block of ``scan``: as many blocks per thread as keep a block within ``MAX_BLOCK``
    units (at least ``BLOCK``), a multiple of 16 (a vector of float32)."""
    per_thread = -(-n_units // threads)
    blocks = threads * max(1, -(-per_thread // MAX_BLOCK))
    return max(BLOCK, -(-n_units // (16 * blocks)) * 16)


def scan(*args) -> None:
    """``_scan_block``'s blocks of units (``block_size``), spread over numba's threads."""
    _scan_blocks(block_size(args[0].shape[2], get_num_threads()), *args)


def scan_serial(*args) -> None:
    """``scan`` in the calling thread: for sources too small to share, updated from threads of their own."""
    _scan_blocks_serial(block_size(args[0].shape[2], 1), *args)


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _scan_blocks(size, *args):
    n_u = args[0].shape[2]
    for blk in prange((n_u + size - 1) // size):
        _scan_block(blk * size, min(n_u, (blk + 1) * size), *args)


@njit(cache=True, nogil=True, error_model="numpy")
def _scan_blocks_serial(size, *args):
    n_u = args[0].shape[2]
    for blk in range((n_u + size - 1) // size):
        _scan_block(blk * size, min(n_u, (blk + 1) * size), *args)


@njit(cache=True, nogil=True, error_model="numpy")
def _scan_block(
    u0, u1, acts, first, token_keys, salts, seq_ids, ctx,  # in
    width, hist, skeys, sseq, spos,  # updated in place
    smax, pmax, smin, pmin, sums, occ_b, occ_t,  # out
):  # fmt: skip
    """One pass over a batch for units ``u0`` to ``u1``: ``acts`` [b, t, u] float32; ``token_keys``
    [b, t] int32; ``salts`` [u] int32; ``seq_ids`` [b]. ``width`` [u] float64 and ``hist`` [2h, u]
    int64: the histogram; ``skeys`` [u, r] int32, ``sseq`` and ``spos`` [u, r] int64: the sample's
    keys and tokens. Out: ``smax``/``smin`` [b, u] float32 and their positions ``pmax``/``pmin`` [b, u] int64,
    ``sums`` [4, u] float64, ``occ_b`` and ``occ_t`` [u, r] int64: the batch row and position of the
    token now in a sample slot (``occ_b`` -1 where the slot kept its occupant).

    A first read of the block finds each unit's largest |a|, so its bins widen at most once, before
    any is counted (for finite values the same bins as widening value by value: ``rebinned`` is
    exact; a batch with NaN or inf stops the run anyway). Then each row goes through loops the
    compiler vectorises (extremes, sums, bins) into block-local arrays; a token that enters the
    sample is flagged there and handled for its units alone."""
    n_b, n_t, n_u = acts.shape
    h = hist.shape[0] // 2
    n = u1 - u0
    s0, s1, s2, s3 = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    counts = np.zeros((2 * h, n), dtype=np.int32)  # bins by unit, as ``hist``: added to it row by row
    cols = np.empty(n, dtype=np.int32)
    inv = np.empty(n)
    salt, bound = salts[u0:u1].copy(), np.empty(n, dtype=np.int32)
    worst = np.zeros(n, dtype=np.int64)  # each unit's sample slot ranked last, and its key: ``bound``
    enter, lanes = np.empty(n, dtype=np.int32), np.empty(n, dtype=np.int32)
    for i in range(n):
        u = u0 + i
        worst[i] = _worst(skeys, sseq, spos, ctx, u) if skeys.shape[1] else 0
        bound[i] = skeys[u, worst[i]] if skeys.shape[1] else -1  # -1: no sample kept
        occ_b[u, :], occ_t[u, :] = -1, 0
    _widen_once(acts, first, u0, u1, width, hist)
    for i in range(n):
        inv[i] = _scale(width[u0 + i], h)[0]
    for b in range(n_b):
        mx, mn = np.full(n, -np.inf, dtype=np.float32), np.full(n, np.inf, dtype=np.float32)
        px, pn = np.full(n, first, dtype=np.int64), np.full(n, first, dtype=np.int64)
        for t in range(first, n_t):
            row = acts[b, t, u0:u1]
            key = token_keys[b, t]
            # Loops over few arrays each: the compiler vectorises them (its alias checks stay few).
            for i in range(n):
                up = row[i] > mx[i]
                mx[i] = row[i] if up else mx[i]
                px[i] = t if up else px[i]
            for i in range(n):
                down = row[i] < mn[i]
                mn[i] = row[i] if down else mn[i]
                pn[i] = t if down else pn[i]
            for i in range(n):
                x = np.float64(row[i])
                s0[i] += x
                s1[i] += x * x
            for i in range(n):
                x2 = np.float64(row[i]) * np.float64(row[i])
                s2[i] += x2 * np.float64(row[i])
                s3[i] += x2 * x2
            enters = 0
            for i in range(n):
                a = row[i]
                enters |= (a > 0) & ((key ^ salt[i]) <= bound[i])
                cols[i] = _column(a, inv[i], h)
            for i in range(n):
                counts[cols[i], i] += 1
            if enters:  # the token takes the sample slot of its units' worst-ranked one
                for i in range(n):
                    enter[i] = (row[i] > 0) & ((key ^ salt[i]) <= bound[i])
                m = 0
                for i in range(n):  # the entering units, without a branch per unit (early on, half enter)
                    lanes[m] = i
                    m += enter[i]
                g = seq_ids[b] * ctx + t
                for e in range(m):
                    i = lanes[e]
                    u, j, k = u0 + i, worst[i], key ^ salt[i]
                    if k < skeys[u, j] or (k == skeys[u, j] and g < sseq[u, j] * ctx + spos[u, j]):
                        skeys[u, j], sseq[u, j], spos[u, j] = k, seq_ids[b], t
                        occ_b[u, j], occ_t[u, j] = b, t
                        worst[i] = _worst(skeys, sseq, spos, ctx, u)
                        bound[i] = skeys[u, worst[i]]
        smax[b, u0:u1], pmax[b, u0:u1], smin[b, u0:u1], pmin[b, u0:u1] = mx, px, mn, pn
    sums[0, u0:u1], sums[1, u0:u1], sums[2, u0:u1], sums[3, u0:u1] = s0, s1, s2, s3
    for c in range(2 * h):
        for i in range(n):
            hist[c, u0 + i] += counts[c, i]


@njit(cache=True, nogil=True, error_model="numpy")
def _scale(width, h):
    """A unit's ``1 / width`` (1 while unset; float64: widths of tiny units pass float32's range), and
    the smallest |a| that widens its bins: ``h * width`` (at least 2**-149: the smallest float32 above
    0 is 2**-149, and its width 2**-155), or that float while unset (every non-zero value sets it)."""
    if width == 0:
        return 1.0, np.float32(1e-45)
    return 1.0 / width, np.float32(h * width)  # powers of two: exact (inf past float32)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _column(a, inv, h):
    """The histogram column of value ``a`` (exact: ``inv`` is a power of two), kept in the histogram
    even for a value that is not finite (the run then stops: its sums are not finite either)."""
    k = np.ceil(np.float64(a) * inv)  # the bin (k - 1, k] in widths: k in [1 - h, h] once widened
    k = k if k >= 1 - h else 1 - h  # (NaN fails both tests: bin 1 - h)
    k = k if k <= h else h
    return np.int32(k) + (h - 1)


@njit(cache=True, nogil=True, error_model="numpy")
def _widen_once(acts, first, u0, u1, width, hist):
    """The bins of units ``u0`` to ``u1`` widened, where the batch needs it, to hold its largest |a|
    (as ``UnitAccumulator._update_hist``). One vectorised read of the block, which also brings it
    into the cache for the pass that follows."""
    n_b, n_t, _ = acts.shape
    n, h = u1 - u0, hist.shape[0] // 2
    big = np.zeros(n, dtype=np.float32)
    for b in range(n_b):
        for t in range(first, n_t):
            row = acts[b, t, u0:u1]
            for i in range(n):
                x = abs(row[i])
                big[i] = x if x > big[i] else big[i]  # NaN widens nothing (the run then stops)
    for i in range(n):
        u = u0 + i
        if big[i] >= _scale(width[u], h)[1]:
            new = _needed_width(np.float64(big[i]), h)
            if width[u] > 0:
                _rebin(hist, u, h, new / width[u])
            width[u] = new


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def enter(val_bits, seq, score_bits, positions, seq_ids, occupant, occ_t):
    """Per unit, the k best by ``rank_key`` of its slots (``val_bits`` [u, k], float32 values seen as
    int32, and ``seq`` [u, k]) and a batch's candidates (``score_bits`` [b, u] likewise, found at
    ``positions`` [b, u] of sequences ``seq_ids`` [b]): an entering candidate takes the slot of the
    worst held one. ``occupant`` [u, k] gets its batch row, -1 where the slot kept its example, and
    ``occ_t`` [u, k] its position. The slots are not changed (``place`` writes the entrants)."""
    for u in prange(val_bits.shape[0]):
        _enter_unit(u, val_bits, seq, score_bits, positions, seq_ids, occupant, occ_t)


@njit(cache=True, nogil=True, error_model="numpy")
def enter_serial(val_bits, seq, score_bits, positions, seq_ids, occupant, occ_t):
    """``enter`` in the calling thread."""
    for u in range(val_bits.shape[0]):
        _enter_unit(u, val_bits, seq, score_bits, positions, seq_ids, occupant, occ_t)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _rank_key(bits, seq):
    """``accumulate.rank_key`` of one example: its value's bits, order-preserving, then the earlier sequence."""
    ordered = np.int64(bits if bits >= 0 else bits ^ 0x7FFFFFFF)
    return (ordered << 32) + (0xFFFFFFFE - seq)


@njit(cache=True, nogil=True, error_model="numpy")
def _enter_unit(u, val_bits, seq, score_bits, positions, seq_ids, occupant, occ_t):
    k = val_bits.shape[1]
    occupant[u, :] = -1
    occ_t[u, :] = 0
    if k == 0:
        return
    held = np.empty(k, dtype=np.int64)
    for i in range(k):
        held[i] = _rank_key(val_bits[u, i], seq[u, i])
    worst = 0
    for i in range(1, k):
        if held[i] < held[worst]:
            worst = i
    for c in range(score_bits.shape[0]):
        key = _rank_key(score_bits[c, u], seq_ids[c])
        if key > held[worst]:
            held[worst], occupant[u, worst], occ_t[u, worst] = key, c, positions[c, u]
            worst = 0
            for i in range(1, k):
                if held[i] < held[worst]:
                    worst = i


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def place(occ_b, occ_t, acts, sign, seq_ids, before, val, seq, pos, start, win):
    """Write each entrant into its slot: slot (u, j) with ``occ_b[u, j] >= 0`` takes token
    ``occ_t[u, j]`` of sequence ``occ_b[u, j]``: its value (times ``sign``), sequence id, position,
    and the window of ``win.shape[2]`` values around it, starting ``before`` tokens earlier where the
    sequence allows (``start``). Slot arrays are ``[u, k]`` (``win``: ``[u, k, window]``)."""
    for u in prange(acts.shape[2]):
        _place_unit(u, occ_b, occ_t, acts, sign, seq_ids, before, val, seq, pos, start, win)


@njit(cache=True, nogil=True, error_model="numpy")
def place_serial(occ_b, occ_t, acts, sign, seq_ids, before, val, seq, pos, start, win):
    """``place`` in the calling thread."""
    for u in range(acts.shape[2]):
        _place_unit(u, occ_b, occ_t, acts, sign, seq_ids, before, val, seq, pos, start, win)


@njit(cache=True, nogil=True, error_model="numpy")
def _place_unit(u, occ_b, occ_t, acts, sign, seq_ids, before, val, seq, pos, start, win):
    n_t, w = acts.shape[1], win.shape[2]
    for j in range(occ_b.shape[1]):
        b = occ_b[u, j]
        if b < 0:
            continue
        t = occ_t[u, j]
        s = min(max(t - before, 0), n_t - w)
        val[u, j] = sign * acts[b, t, u]
        seq[u, j], pos[u, j], start[u, j] = seq_ids[b], t, s
        for i in range(w):
            win[u, j, i] = acts[b, s + i, u]


@njit(cache=True, nogil=True, error_model="numpy")
def take(occ_b, occ_t, src, own_unit, dst):
    """What entrants copy at their tokens: slot (u, j) with ``occ_b[u, j] >= 0`` gets
    ``src[occ_b[u, j], occ_t[u, j], u if own_unit else 0]`` (``src`` [b, t, u or 1, d] in any
    strides, ``dst`` [u, k, d]), values copied as they are. In the calling thread: entrants are few."""
    for u in range(dst.shape[0]):
        for j in range(dst.shape[1]):
            b, t = occ_b[u, j], occ_t[u, j]
            if b >= 0:
                for c in range(dst.shape[2]):  # element by element: no array views made per entrant
                    dst[u, j, c] = src[b, t, u if own_unit else 0, c]


# Sums along a row may be added in vector lanes (reassociated): the same order on every run of one
# machine, so a run's statistics do not change between runs, shards or resumes.
_REASSOC = {"reassoc", "nsz", "contract"}
_LN2 = math.log(2.0)
_SQRT2 = math.sqrt(2.0)


@njit(cache=True, nogil=True, inline="always", fastmath=_REASSOC, error_model="numpy")
def _log_of_bits(bits):
    """log(x) of a positive normal float32 given its bits (``view(np.int32)``), in float64 to ~1e-11:
    x = m 2^e with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172,
    by its series. Plain arithmetic, so the compiler vectorises it (a call to log it would not)."""
    e = np.float64(((bits >> 23) & 0xFF) - 127)
    m = 1.0 + np.float64(bits & 0x7FFFFF) * 2.0**-23
    big = m > _SQRT2
    m = m * 0.5 if big else m
    e = e + 1.0 if big else e
    s = (m - 1.0) / (m + 1.0)
    s2 = s * s
    series = 1.0 + s2 * (1 / 3 + s2 * (1 / 5 + s2 * (1 / 7 + s2 * (1 / 9 + s2 * (1 / 11 + s2 / 13)))))
    return e * _LN2 + 2.0 * s * series


@njit(cache=True, nogil=True, fastmath=_REASSOC, error_model="numpy")
def attention_sums(pattern, bits, tokens, first, out):
    """A batch's head statistics added to ``out`` [5, heads] (float64, in row order): per query row
    q >= ``first`` of ``pattern`` [b, head, q, k] (float32; ``bits``: the same memory as int32), its
    attention to key 0, to key q - 1, the mean distance sum_k (q - k) p, to earlier keys holding the
    token at q (``tokens`` [b, q]), and the entropy -sum p log p. Rows are causal: only keys k <= q
    are read (the later ones hold exact zeros, which would add nothing)."""
    n_b, n_h, n_q, n_k = pattern.shape
    for b in range(n_b):
        for h in range(n_h):
            for q in range(first, n_q):
                row, row_bits, tq = pattern[b, h, q], bits[b, h, q], tokens[b, q]
                total, weighted, same, entropy = 0.0, 0.0, 0.0, 0.0
                for k in range(min(q + 1, n_k)):  # causal rows: the later keys hold exact zeros
                    x = np.float64(row[k])
                    total += x
                    weighted += k * x
                    same += x if (k < q) & (tokens[b, k] == tq) else 0.0
                for k in range(min(q + 1, n_k)):  # below the smallest normal float, p log p is ~0
                    entropy -= np.float64(row[k]) * _log_of_bits(max(row_bits[k], 0x800000))
                out[0, h] += row[0]
                out[1, h] += row[q - 1] if q >= 1 else 0.0
                out[2, h] += q * total - weighted
                out[3, h] += same
                out[4, h] += entropy


class Kernels(NamedTuple):
    """The kernels one source uses: ``PARALLEL`` (its units split across numba's threads) or
    ``SERIAL`` (in the caller's thread: small sources, updated side by side from threads of their own)."""

    scan: Callable
    enter: Callable
    place: Callable


PARALLEL = Kernels(scan, enter, place)
SERIAL = Kernels(scan_serial, enter_serial, place_serial)


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def bridge_sums(neurons, by_token, token_features, token_values, by_feature, feature_tokens, feature_values, up, plain, strong):  # fmt: skip
    """``polysemanticity.attribution_sums`` (plain and strong) of one batch, added to ``plain`` and
    ``strong`` [n_features, n_neurons] (float64), reading only the active features, given both ways:
    token t's are ``token_features[by_token[t]:by_token[t + 1]]`` (activations ``token_values``),
    feature f's tokens ``feature_tokens[by_feature[f]:by_feature[f + 1]]`` (``feature_values``).
    ``neurons`` [t, n_neurons] float32, ``up`` [n_features, n_neurons] the decoder's positive part.
    First each token's ratio (its activation over what its features write), then each feature's sums,
    in token order whatever the threads."""
    n_t, n_n = neurons.shape
    ratio = np.empty((n_t, n_n), dtype=np.float32)
    for t in prange(n_t):
        written = np.zeros(n_n, dtype=np.float32)
        for p in range(by_token[t], by_token[t + 1]):
            f, a = token_features[p], token_values[p]
            for i in range(n_n):
                written[i] += a * up[f, i]
        for i in range(n_n):
            x = max(neurons[t, i], np.float32(0.0))
            ratio[t, i] = x / max(written[i], np.float32(1e-30)) if written[i] > 0 else np.float32(0.0)
    for f in prange(plain.shape[0]):
        for p in range(by_feature[f], by_feature[f + 1]):
            t, a = feature_tokens[p], np.float64(feature_values[p])
            for i in range(n_n):
                share = a * ratio[t, i]
                plain[f, i] += share
                strong[f, i] += share * max(neurons[t, i], np.float32(0.0))


_CHUNK = 64  # values of a row that ``extremes`` tests at once


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def extremes(rows, k):
    """Each row's ``k`` largest and ``k`` smallest values of ``rows`` [n, m] with their columns, in one
    read of the row (``torch.topk`` twice reads it twice, and sorts): ``(up_vals, up_ids, down_vals,
    down_ids)``, [n, k] each, strongest first, ties to the lower column (a stable sort's order), and
    ``nan`` [n]: the rows that hold a NaN (whose lists mean nothing). 1 <= k <= m."""
    n, m = rows.shape
    if k < 1 or k > m:
        raise ValueError("extremes: k must be in 1..m")
    up_vals, down_vals = np.empty((n, k), dtype=rows.dtype), np.empty((n, k), dtype=rows.dtype)
    up_ids, down_ids = np.empty((n, k), dtype=np.int64), np.empty((n, k), dtype=np.int64)
    nan = np.zeros(n, dtype=np.bool_)
    for r in prange(n):
        row, uv, ui, dv, di = rows[r], up_vals[r], up_ids[r], down_vals[r], down_ids[r]
        for j in range(k):
            nan[r] |= row[j] != row[j]
            _insert(uv, ui, j, row[j], j, 1.0)
            _insert(dv, di, j, row[j], j, -1.0)
        for start in range(k, m, _CHUNK):  # most chunks hold no entrant: one vectorised test each
            stop, top, bottom, outside = min(start + _CHUNK, m), uv[k - 1], dv[k - 1], False
            for j in range(start, stop):
                outside |= not (bottom <= row[j] <= top)  # NaN too
            if not outside:
                continue
            for j in range(start, stop):
                x = row[j]
                nan[r] |= x != x
                if x > uv[k - 1]:
                    _insert(uv, ui, k - 1, x, j, 1.0)
                if x < dv[k - 1]:
                    _insert(dv, di, k - 1, x, j, -1.0)
    return up_vals, up_ids, down_vals, down_ids, nan


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _insert(vals, ids, last, x, j, sign):
    """Put ``x`` (column ``j``) into ``vals[:last + 1]``, kept sorted by ``sign * value`` descending,
    after its equals; the entry at ``last`` falls out."""
    i = last
    while i > 0 and sign * x > sign * vals[i - 1]:
        vals[i], ids[i] = vals[i - 1], ids[i - 1]
        i -= 1
    vals[i], ids[i] = x, j


SCREEN_REL = np.float32(2.0**-8 / (1 - 2.0**-8) * (1 + 2.0**-12))  # of |approx|: a bfloat16 result's
# rounding, at most (widened by 2**-12 of itself: more than float32's rounding of the bounds here)
_SCREEN_CHUNK = 16  # columns of a row that ``screened_extremes`` tests at once
_SCREEN_ROWS = 16  # rows per parallel task of ``screened_extremes`` (its scratch is per task)
_TIE = np.float32(2.0**-20)  # thresholds widened by this much of themselves: float32 rounding of the
# exact values cannot tie across them


@njit(parallel=True, cache=True, nogil=True, fastmath=_REASSOC, error_model="numpy")
def screened_extremes(approx, norms, margin, floor, w, ut, k):
    """``extremes`` of the products ``w @ ut.T`` ([n, d] by [m, d], float32), read from ``approx``
    [n, m] (bfloat16, as its uint16 bits): products known to within ``margin[r] * norms[j] + floor +
    SCREEN_REL * |approx[r, j]|`` (float32). One read of each row finds the columns whose bounds reach
    its top or bottom ``k``; of those, the most promising are computed exactly (float64 dot products,
    rounded to float32) until no other can enter. The lists equal what ``extremes`` gives on the exact
    products (ties to the lower column): ``(up_vals, up_ids, down_vals, down_ids)``, [n, k] each."""
    n, m = approx.shape
    if k < 1 or k > m or w.shape[1] != ut.shape[1] or ut.shape[0] != m or norms.shape[0] != m:
        raise ValueError("screened_extremes: k must be in 1..m, and the shapes must match")
    up_vals, down_vals = np.empty((n, k), dtype=np.float32), np.empty((n, k), dtype=np.float32)
    up_ids, down_ids = np.empty((n, k), dtype=np.int64), np.empty((n, k), dtype=np.int64)
    for task in prange((n + _SCREEN_ROWS - 1) // _SCREEN_ROWS):
        bits = np.empty(_SCREEN_CHUNK, dtype=np.uint32)  # a chunk of the row as float32, through its bits
        vals = bits.view(np.float32)
        up_j, up_hi = np.empty(m, dtype=np.int64), np.empty(m, dtype=np.float32)
        down_j, down_lo = np.empty(m, dtype=np.int64), np.empty(m, dtype=np.float32)
        lows, highs = np.empty(k, dtype=np.float32), np.empty(k, dtype=np.float32)
        unused = np.empty(k, dtype=np.int64)  # ``_insert``'s columns, not needed for the bounds
        for r in range(task * _SCREEN_ROWS, min(n, (task + 1) * _SCREEN_ROWS)):
            row, mr = approx[r], margin[r]
            if mr == 0:  # a zero direction: every product is exactly 0, the lowest columns win
                up_vals[r], down_vals[r] = 0.0, 0.0
                up_ids[r], down_ids[r] = np.arange(k), np.arange(k)
                continue
            lows[:], highs[:] = -np.inf, np.inf  # the k largest lower bounds, the k smallest upper ones
            n_up = n_down = 0
            for start in range(0, m, _SCREEN_CHUNK):  # most chunks hold no candidate: one test each
                stop, hit = min(start + _SCREEN_CHUNK, m), False
                for j in range(start, stop):
                    bits[j - start] = np.uint32(row[j]) << 16
                top, bottom = _widened(lows[k - 1], -1.0), _widened(highs[k - 1], 1.0)
                for j in range(start, stop):
                    v = vals[j - start]
                    e = _slack(v, norms[j], mr, floor)
                    hit |= (v + e >= top) | (v - e <= bottom)
                if not hit:
                    continue
                for j in range(start, stop):
                    v = vals[j - start]
                    e = _slack(v, norms[j], mr, floor)
                    if v - e > lows[k - 1]:
                        _insert(lows, unused, k - 1, v - e, 0, 1.0)
                    if v + e < highs[k - 1]:
                        _insert(highs, unused, k - 1, v + e, 0, -1.0)
                    if v + e >= _widened(lows[k - 1], -1.0):
                        up_j[n_up], up_hi[n_up] = j, v + e
                        n_up += 1
                    if v - e <= _widened(highs[k - 1], 1.0):
                        down_j[n_down], down_lo[n_down] = j, -(v - e)
                        n_down += 1
            top, bottom = _widened(lows[k - 1], -1.0), _widened(highs[k - 1], 1.0)
            _exact_best(w[r], ut, up_j[:n_up], up_hi[:n_up], top, 1.0, up_vals[r], up_ids[r])
            _exact_best(w[r], ut, down_j[:n_down], down_lo[:n_down], -bottom, -1.0, down_vals[r], down_ids[r])
    return up_vals, up_ids, down_vals, down_ids


@njit(cache=True, nogil=True, inline="always", fastmath=_REASSOC, error_model="numpy")
def _slack(v, norm, mr, floor):
    """How far the exact product may be from its bfloat16 approximation ``v`` (``screened_extremes``)."""
    return mr * norm + floor + SCREEN_REL * abs(v)


@njit(cache=True, nogil=True, fastmath=_REASSOC, error_model="numpy")
def _exact_best(w, ut, cols, bound, floor, sign, out_vals, out_ids):
    """The k best of ``cols`` by ``sign`` times their exact product ``w . ut[j]`` (float32, ties to
    the lower column) into ``out_vals``/``out_ids``: columns whose ``bound`` (on sign times the
    product) reaches ``floor`` are computed, best bound first, until the next bound is below the k-th
    (by more than float32 can tie)."""
    k = out_vals.shape[0]
    out_vals[:], out_ids[:] = -sign * np.inf, ut.shape[0]
    done = 0
    for c in np.argsort(-bound):
        if bound[c] < floor or (done >= k and _widened(bound[c], 1.0) < sign * out_vals[k - 1]):
            break
        x, j = np.float32(_dot(w, ut[cols[c]])), cols[c]
        done += 1
        i = k - 1  # out_vals[i] falls out; x moves up past the entries it ranks before
        if not (sign * x > sign * out_vals[i] or (x == out_vals[i] and j < out_ids[i])):
            continue
        while i > 0 and (sign * x > sign * out_vals[i - 1] or (x == out_vals[i - 1] and j < out_ids[i - 1])):
            out_vals[i], out_ids[i] = out_vals[i - 1], out_ids[i - 1]
            i -= 1
        out_vals[i], out_ids[i] = x, j


@njit(cache=True, nogil=True, inline="always", fastmath=_REASSOC, error_model="numpy")
def _widened(x, direction):
    """``x`` moved by ``_TIE`` of itself (and 1e-30) up (``direction`` 1) or down (-1): past float32's ties."""
    step = abs(x) * _TIE + np.float32(1e-30)
    return x + step if direction > 0 else x - step


@njit(cache=True, nogil=True, fastmath=_REASSOC, error_model="numpy")
def _dot(a, b):
    """sum(a * b) of two float32 vectors in float64 (each product exact)."""
    total = 0.0
    for i in range(a.shape[0]):
        total += np.float64(a[i]) * np.float64(b[i])
    return total
