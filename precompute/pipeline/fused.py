"""One pass over a batch's activations on the CPU (numba): what ``UnitAccumulator.update`` otherwise
reads a dozen times with separate torch operations.

``scan`` gives, per unit, each sequence's max and min with their first positions, the batch's sums
of the first four powers (float64, added in token order: deterministic), and updates the histogram
(widening a unit's bins exactly, as ``rebinned``, when a value falls outside them) and the quantile
sample (a firing token whose key ranks before the unit's worst kept one takes its slot). ``enter``
picks the top/bottom entrants per unit from precomputed rank keys. Both record which slots changed
hands so that the caller copies the entrants' windows with a few gathers.

Units are split in blocks across threads; every unit is read and written by one thread, in token
order, so the results do not depend on the number of threads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numba import njit, prange

BLOCK = 64  # units per parallel task: wide enough to vectorise the inner loop over units


@njit(cache=True, nogil=True)
def _rebin(hist, u, h, ratio):
    """Unit ``u``'s bins widened by ``ratio`` (a power of two): bin k moves to floor(k / ratio)."""
    moved = np.zeros(2 * h, dtype=hist.dtype)
    for c in range(2 * h):
        j = int(math.floor((c - h) / ratio)) + h
        moved[min(max(j, 0), 2 * h - 1)] += hist[c, u]
    for c in range(2 * h):
        hist[c, u] = moved[c]


@njit(cache=True, nogil=True)
def _needed_width(extent, h):
    """The smallest power of two ``w`` with ``extent < h * w`` (``UnitAccumulator._update_hist``)."""
    return 2.0 ** (math.floor(math.log2(extent / h)) + 1.0)


@njit(cache=True, nogil=True)
def _worst(keys, gpos, u):
    """Unit ``u``'s sample slot ranked last by (key, token)."""
    j = 0
    for i in range(1, keys.shape[1]):
        if keys[u, i] > keys[u, j] or (keys[u, i] == keys[u, j] and gpos[u, i] > gpos[u, j]):
            j = i
    return j


@njit(parallel=True, cache=True, nogil=True)
def scan(
    acts, first, token_keys, salts, seq_ids, ctx,  # in
    width, hist, skeys, sgpos,  # updated in place
    smax, pmax, smin, pmin, sums, soccupant,  # out
):  # fmt: skip
    """``acts`` [b, t, u] float32; ``token_keys`` [b, t] int32; ``salts`` [u] int32; ``seq_ids`` [b].
    ``width`` [u] float64 and ``hist`` [2h, u] int64: the histogram; ``skeys`` [u, r] int32 and
    ``sgpos`` [u, r] int64: the sample's keys and tokens. Out: ``smax``/``smin`` [b, u] float32 and
    their positions ``pmax``/``pmin`` [b, u] int64, ``sums`` [4, u] float64, ``soccupant`` [u, r]
    int64: the token (b * t + pos) now in a sample slot, -1 where it kept its occupant.

    Blocks of ``BLOCK`` units go to the threads (``scan_serial``: one after another, for sources too
    small to share, read from threads of the caller's own)."""
    for blk in prange((acts.shape[2] + BLOCK - 1) // BLOCK):
        _scan_block(
            blk, acts, first, token_keys, salts, seq_ids, ctx, width, hist, skeys, sgpos,
            smax, pmax, smin, pmin, sums, soccupant,
        )  # fmt: skip


@njit(cache=True, nogil=True)
def scan_serial(
    acts, first, token_keys, salts, seq_ids, ctx, width, hist, skeys, sgpos,
    smax, pmax, smin, pmin, sums, soccupant,
):  # fmt: skip
    """``scan`` in the calling thread."""
    for blk in range((acts.shape[2] + BLOCK - 1) // BLOCK):
        _scan_block(
            blk, acts, first, token_keys, salts, seq_ids, ctx, width, hist, skeys, sgpos,
            smax, pmax, smin, pmin, sums, soccupant,
        )  # fmt: skip


@njit(cache=True, nogil=True)
def _scan_block(
    blk, acts, first, token_keys, salts, seq_ids, ctx, width, hist, skeys, sgpos,
    smax, pmax, smin, pmin, sums, soccupant,
):  # fmt: skip
    """``scan`` of units ``blk * BLOCK`` on. Each row of the batch goes through loops the compiler
    vectorises (extremes, sums, bins) into block-local arrays; the rare events (a unit's bins widen,
    a token enters the sample) are flagged there and handled one unit at a time."""
    n_b, n_t, n_u = acts.shape
    h = hist.shape[0] // 2
    u0, u1 = blk * BLOCK, min(n_u, (blk + 1) * BLOCK)
    n = u1 - u0
    s0, s1, s2, s3 = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    counts = np.zeros((n, 2 * h), dtype=np.int32)
    cols = np.empty(n, dtype=np.int32)
    inv, limit = np.empty(n, dtype=np.float32), np.empty(n, dtype=np.float32)
    salt, bound = salts[u0:u1].copy(), np.empty(n, dtype=np.int32)
    for i in range(n):
        u = u0 + i
        inv[i], limit[i] = _scale(width[u], h)
        bound[i] = skeys[u, _worst(skeys, sgpos, u)]
        soccupant[u, :] = -1
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
            wide, enters = 0, 0
            for i in range(n):
                a = row[i]
                wide |= abs(a) >= limit[i]
                enters |= (a > 0) & ((key ^ salt[i]) < bound[i])
                cols[i] = np.int32(np.ceil(a * inv[i])) + (h - 1)
            if wide:  # widen the bins of the units that need it, exactly (``rebinned``)
                for i in range(n):
                    if abs(row[i]) >= limit[i]:
                        _widen(hist, counts, width, u0, i, _needed_width(abs(np.float64(row[i])), h))
                        inv[i], limit[i] = _scale(width[u0 + i], h)
                        cols[i] = np.int32(np.ceil(row[i] * inv[i])) + (h - 1)
            for i in range(n):
                counts[i, cols[i]] += 1
            if enters:  # the token takes the sample slot of the unit's worst-ranked one
                g = seq_ids[b] * ctx + t
                for i in range(n):
                    u = u0 + i
                    if row[i] > 0 and (key ^ salt[i]) < bound[i]:
                        j = _worst(skeys, sgpos, u)
                        k = key ^ salt[i]
                        if k < skeys[u, j] or (k == skeys[u, j] and g < sgpos[u, j]):
                            skeys[u, j], sgpos[u, j], soccupant[u, j] = k, g, b * n_t + t
                            bound[i] = skeys[u, _worst(skeys, sgpos, u)]
        smax[b, u0:u1], pmax[b, u0:u1], smin[b, u0:u1], pmin[b, u0:u1] = mx, px, mn, pn
    sums[0, u0:u1], sums[1, u0:u1], sums[2, u0:u1], sums[3, u0:u1] = s0, s1, s2, s3
    for i in range(n):
        hist[:, u0 + i] += counts[i]


@njit(cache=True, nogil=True)
def _scale(width, h):
    """A unit's ``1 / width`` (1 while unset), and the smallest |a| that widens its bins: ``h * width``,
    or the smallest float32 above 0 while unset (every non-zero value sets the width)."""
    if width == 0:
        return np.float32(1.0), np.float32(1e-45)
    return np.float32(1.0 / width), np.float32(h * width)  # a power of two: exact (inf past float32)


@njit(cache=True, nogil=True)
def _widen(hist, counts, width, u0, i, new):
    """Unit ``u0 + i``'s bins widened to ``new``: its block-local ``counts`` join ``hist`` first."""
    u = u0 + i
    hist[:, u] += counts[i]
    counts[i, :] = 0
    if width[u] > 0:
        _rebin(hist, u, hist.shape[0] // 2, new / width[u])
    width[u] = new


@njit(parallel=True, cache=True, nogil=True)
def enter(held, candidates, occupant):
    """Per unit, the k best of ``held`` [u, k] and ``candidates`` [u, b] (int64 rank keys, larger is
    better): an entering candidate takes the slot of the worst held one. ``held`` is updated;
    ``occupant`` [u, k] gets the candidate's index, -1 where the slot kept its example."""
    for u in prange(held.shape[0]):
        _enter_unit(u, held, candidates, occupant)


@njit(cache=True, nogil=True)
def enter_serial(held, candidates, occupant):
    """``enter`` in the calling thread."""
    for u in range(held.shape[0]):
        _enter_unit(u, held, candidates, occupant)


@njit(cache=True, nogil=True)
def _enter_unit(u, held, candidates, occupant):
    k = held.shape[1]
    occupant[u, :] = -1
    if k == 0:
        return
    worst = 0
    for i in range(1, k):
        if held[u, i] < held[u, worst]:
            worst = i
    for c in range(candidates.shape[1]):
        if candidates[u, c] > held[u, worst]:
            held[u, worst], occupant[u, worst] = candidates[u, c], c
            worst = 0
            for i in range(1, k):
                if held[u, i] < held[u, worst]:
                    worst = i


@njit(parallel=True, cache=True, nogil=True)
def place(occ_b, occ_t, acts, sign, seq_ids, before, val, seq, pos, start, win):
    """Write each entrant into its slot: slot (u, j) with ``occ_b[u, j] >= 0`` takes token
    ``occ_t[u, j]`` of sequence ``occ_b[u, j]``: its value (times ``sign``), sequence id, position,
    and the window of ``win.shape[2]`` values around it, starting ``before`` tokens earlier where the
    sequence allows (``start``). Slot arrays are ``[u, k]`` (``win``: ``[u, k, window]``)."""
    for u in prange(acts.shape[2]):
        _place_unit(u, occ_b, occ_t, acts, sign, seq_ids, before, val, seq, pos, start, win)


@njit(cache=True, nogil=True)
def place_serial(occ_b, occ_t, acts, sign, seq_ids, before, val, seq, pos, start, win):
    """``place`` in the calling thread."""
    for u in range(acts.shape[2]):
        _place_unit(u, occ_b, occ_t, acts, sign, seq_ids, before, val, seq, pos, start, win)


@njit(cache=True, nogil=True)
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


class Kernels(NamedTuple):
    """The kernels one source uses: ``PARALLEL`` (its units split across numba's threads) or
    ``SERIAL`` (in the caller's thread: small sources, updated side by side from threads of their own)."""

    scan: Callable
    enter: Callable
    place: Callable


PARALLEL = Kernels(scan, enter, place)
SERIAL = Kernels(scan_serial, enter_serial, place_serial)
