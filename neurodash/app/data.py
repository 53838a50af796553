"""Pure data shaping for the pages: labels, neighbours in the unit order, table payloads, probe summaries."""

from __future__ import annotations

import base64
from typing import SupportsFloat

import numpy as np
import pandas as pd

from neurodash.app import routes
from neurodash.units import HEAD, HEAD_METRICS, NEURON, SAE_FEATURE, Source, UnitRef


def plural(n: int, word: str) -> str:
    """``plural(3, "example")`` -> ``3 examples``."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def label_prefixes(sources: list[Source]) -> dict[str, str | None]:
    """Per source, the prefix of its units' short names (``L12N``, ``L12F``), or None for long names.

    Short feature names (``L12F7``) go to each layer's first SAE, as ``parse_ref`` reads them.
    """
    prefixes: dict[str, str | None] = {}
    sae_layers: set[int] = set()
    for s in sources:
        if s.kind == NEURON:
            prefixes[s.source_id] = f"L{s.layer}N"
        elif s.kind == HEAD:
            prefixes[s.source_id] = f"L{s.layer}H"
        elif s.kind == SAE_FEATURE and s.layer not in sae_layers:
            prefixes[s.source_id] = f"L{s.layer}F"
            sae_layers.add(s.layer)
        else:
            prefixes[s.source_id] = None
    return prefixes


def unit_label(ref: UnitRef, prefixes: dict[str, str | None]) -> str:
    """``L12N345`` where the source has a short name, else ``L12.sae.x/7``."""
    prefix = prefixes.get(ref.source_id)
    return f"{prefix}{ref.unit}" if prefix else str(ref)


def adjacent_units(ref: UnitRef, sources: list[Source]) -> tuple[UnitRef | None, UnitRef | None]:
    """The units before and after ``ref``, running on across sources in the store's order (heads
    step among heads, other units among other units)."""
    is_head = {s.source_id: s.kind == HEAD for s in sources}
    order = [s for s in sources if s.n_units > 0 and is_head[s.source_id] == is_head[ref.source_id]]
    i = next(k for k, s in enumerate(order) if s.source_id == ref.source_id)
    if ref.unit > 0:
        prev = UnitRef(ref.source_id, ref.unit - 1)
    else:
        prev = UnitRef(order[i - 1].source_id, order[i - 1].n_units - 1) if i > 0 else None
    if ref.unit < order[i].n_units - 1:
        nxt = UnitRef(ref.source_id, ref.unit + 1)
    else:
        nxt = UnitRef(order[i + 1].source_id, 0) if i + 1 < len(order) else None
    return prev, nxt


def max_by_source(units: pd.DataFrame, sources: list[Source]) -> dict[str, np.ndarray]:
    """Per source, each unit's max activation over the corpus (0 where a unit has no row)."""
    out = {s.source_id: np.zeros(s.n_units, dtype=np.float32) for s in sources}
    for sid, group in units.groupby("source_id", sort=False):
        out[str(sid)][group["unit"].to_numpy()] = group["max_act"].to_numpy()
    return out


def box_stats(units: pd.DataFrame, column: str) -> dict[str, dict[str, list]]:
    """Per kind, per layer: quartiles and Tukey fences of ``column``, for precomputed box plots."""
    out: dict[str, dict[str, list]] = {}
    for kind, frame in units.dropna(subset=[column]).groupby("kind", sort=False):
        values: pd.Series = frame.set_index("layer")[column]
        grouped = values.groupby(level=0)
        q1, median, q3 = (_series(grouped.quantile(q)) for q in (0.25, 0.5, 0.75))
        iqr = q3 - q1
        low = _series(
            values[values >= (q1 - 1.5 * iqr).reindex(values.index).to_numpy()].groupby(level=0).min()
        )
        high = _series(
            values[values <= (q3 + 1.5 * iqr).reindex(values.index).to_numpy()].groupby(level=0).max()
        )
        out[str(kind)] = {
            "layer": q1.index.tolist(),
            "q1": _rounded(q1),
            "median": _rounded(median),
            "q3": _rounded(q3),
            "lowerfence": _rounded(low.reindex(q1.index)),
            "upperfence": _rounded(high.reindex(q1.index)),
            "max": _rounded(_series(grouped.max())),
        }
    return out


def _series(values: object) -> pd.Series:
    """A grouped Series' reduction, which pandas types loosely (a Series, a DataFrame or a scalar)."""
    if not isinstance(values, pd.Series):
        raise TypeError(f"expected a Series, got {type(values).__name__}")
    return values


def _rounded(series: pd.Series) -> list[float]:
    return [float(f"{v:.4g}") for v in series.to_numpy(dtype=np.float64)]


def units_payload(units: pd.DataFrame, sources: list[Source], metrics: list[str]) -> dict:
    """The units table, columnar and compact: numbers as base64 little-endian typed arrays.

    ``assets/neurodash.js`` (``unitRows``) turns it into the grid's rows. Sending columns of
    float32 keeps the overview fast at 100k+ units, where a list of JSON objects is not.
    """
    index = {s.source_id: i for i, s in enumerate(sources)}
    prefixes = label_prefixes(sources)
    return {
        "n": len(units),
        "sources": [
            {
                "id": s.source_id,
                "layer": s.layer,
                "kind": s.kind,
                "prefix": prefixes[s.source_id],
                "href": routes.unit_source_href(s.source_id),
            }
            for s in sources
        ],
        "source": _b64(units["source_id"].map(index).to_numpy(np.uint16)),
        "unit": _b64(units["unit"].to_numpy(np.int32)),
        "metrics": {m: _b64(_metric_values(units, m)) for m in metrics},
    }


def _metric_values(units: pd.DataFrame, metric: str) -> np.ndarray:
    """A column of the units table; a head's density left blank (its activation is a norm, > 0 at
    almost every token: its density says nothing about sparsity)."""
    values = units[metric].to_numpy(np.float32)
    if metric == "density":
        values = np.where(units["kind"].to_numpy() == HEAD, np.float32(np.nan), values)
    return values


def _b64(values: np.ndarray) -> str:
    return base64.b64encode(values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes()).decode(
        "ascii"
    )


PROBE_PER_TOKEN = 25  # units listed at a clicked token
PROBE_TOP = 20  # units listed over the whole text (and offered to colour it by)


def probe_scale(unit_max: np.ndarray) -> np.ndarray:
    """What a source's units' activations on a probed text are divided by: each unit's max over the
    corpus, floored at a tenth of the source's median max, so that units nearly dead on the corpus
    do not swamp the ranking."""
    return np.maximum(unit_max, 0.1 * max(float(np.median(unit_max)), 1e-6)) if len(unit_max) else unit_max


def summarise_probe(
    tokens: list[str],
    acts: dict[str, np.ndarray],
    unit_max: dict[str, np.ndarray],
    per_token: int = PROBE_PER_TOKEN,
    top: int = PROBE_TOP,
) -> dict:
    """Rank units on a probed text by activation as a fraction of their max over the corpus.

    ``acts`` maps a source id (neurons or SAE features) to its activations [pos, units]; the scale is
    ``probe_scale``. Returns JSON-ready lists: per token its top units (``[source, unit, act, fraction,
    the unit's max over the corpus]``), the strongest fraction at each token, the top units over the
    whole text (the same, and the position where each peaks), for each of those its activation at every
    token and its scale, and ``columns``: each source and its number of units, in order.
    """
    names = list(acts)
    raw = np.concatenate([acts[s] for s in names], axis=1)
    scale = np.concatenate([probe_scale(unit_max[s]) for s in names])
    corpus_max = np.concatenate([unit_max[s] for s in names])
    rel = raw / scale[None, :]
    owner = np.concatenate([np.full(acts[s].shape[1], i) for i, s in enumerate(names)])
    unit = np.concatenate([np.arange(acts[s].shape[1]) for s in names])

    def entry(column: int, pos: int) -> list:
        return [
            names[owner[column]],
            int(unit[column]),
            _round(raw[pos, column]),
            _round(rel[pos, column]),
            _round(corpus_max[column]),
        ]

    peak_pos = rel.argmax(0)
    top_columns = _top_columns(rel[peak_pos, np.arange(rel.shape[1])], top)
    return {
        "tokens": list(tokens),
        "strength": [_round(v) for v in rel.max(1)],
        "per_token": [[entry(c, p) for c in _top_columns(rel[p], per_token)] for p in range(len(tokens))],
        "top": [entry(c, int(peak_pos[c])) + [int(peak_pos[c])] for c in top_columns],
        "top_acts": [[_round(v) for v in raw[:, c]] for c in top_columns],
        "top_max": [_round(scale[c]) for c in top_columns],
        "columns": [[s, int(acts[s].shape[1])] for s in names],
    }


def _round(value: SupportsFloat) -> float:
    return round(float(value), 4)


def _top_columns(values: np.ndarray, k: int) -> np.ndarray:
    k = min(k, len(values))
    part = np.argpartition(-values, k - 1)[:k] if k else np.array([], dtype=int)
    return part[np.argsort(-values[part], kind="stable")]


def unit_magnitudes(units: pd.DataFrame, keys: pd.DataFrame) -> list[float]:
    """Per row of ``keys`` (``source_id``, ``unit_index``), its unit's largest activation magnitude
    (what its tokens are coloured relative to)."""
    mags = units[["source_id", "unit"]].assign(mag=np.maximum(units["max_act"], -units["min_act"]))
    merged = keys[["source_id", "unit_index"]].merge(
        mags, left_on=["source_id", "unit_index"], right_on=["source_id", "unit"], how="left"
    )
    return merged["mag"].fillna(0.0).clip(lower=1e-9).tolist()


# --- attention heads --------------------------------------------------------------------------


def head_frame(units: pd.DataFrame) -> pd.DataFrame:
    """The heads among ``units`` (``Store.units_frame()``), with their names (``L3H2``) in ``name``."""
    heads = units[units["kind"] == HEAD].reset_index(drop=True)
    return heads.assign(name=[f"L{layer}H{unit}" for layer, unit in zip(heads["layer"], heads["unit"])])


def head_metrics(heads: pd.DataFrame, score_metrics: list[str]) -> list[str]:
    """The score metrics that some head has, the known ones first."""
    have = [m for m in score_metrics if m in heads.columns and heads[m].notna().any()]
    return sorted(have, key=lambda m: (HEAD_METRICS.index(m) if m in HEAD_METRICS else len(HEAD_METRICS), m))


def head_grid(heads: pd.DataFrame, column: str) -> tuple[list[int], int, list[list[float | None]]]:
    """(layers, heads per layer, ``column`` as rows of layers x columns of heads; None where missing)."""
    layers = sorted({int(x) for x in heads["layer"]})
    width = int(heads["unit"].max()) + 1 if len(heads) else 0
    grid: list[list[float | None]] = [[None] * width for _ in layers]
    row = {layer: i for i, layer in enumerate(layers)}
    for layer, unit, value in zip(heads["layer"], heads["unit"], heads[column]):
        grid[row[int(layer)]][int(unit)] = None if pd.isna(value) else round(float(value), 4)
    return layers, width, grid


def standardised_scores(heads: pd.DataFrame, metrics: list[str]) -> np.ndarray:
    """[head, metric]: each metric standardised over all heads; missing values count as the mean."""
    values = heads[metrics].astype(float)
    return ((values - values.mean()) / values.std(ddof=0).replace(0, 1)).fillna(0.0).to_numpy()


def closest_heads(
    heads: pd.DataFrame, ref: UnitRef, metrics: list[str], k: int = 8, z: np.ndarray | None = None
) -> list[tuple[UnitRef, float]]:
    """The ``k`` heads whose metrics (each standardised over all heads) are nearest to ``ref``'s, with
    their Euclidean distance; missing values count as the mean. ``z``: ``standardised_scores(heads,
    metrics)`` where already computed."""
    if not metrics or len(heads) < 2:
        return []
    z = standardised_scores(heads, metrics) if z is None else z
    me = np.flatnonzero(
        (heads["source_id"] == ref.source_id).to_numpy() & (heads["unit"] == ref.unit).to_numpy()
    )
    if not len(me):
        return []
    distance = np.sqrt(((z - z[me[0]]) ** 2).sum(1))
    distance[me[0]] = np.inf
    order = np.argsort(distance, kind="stable")[: min(k, len(heads) - 1)]
    return [(UnitRef(str(heads["source_id"][i]), int(heads["unit"][i])), float(distance[i])) for i in order]
