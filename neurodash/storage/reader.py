"""``Store``: a finished store, opened read-only, and the queries that read it."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from neurodash.errors import NeurodashError
from neurodash.storage.connect import first_line, is_damage, open_checked, sql_string
from neurodash.storage.schema import EXAMPLE_KEYS, STAT_COLUMNS, STORE, UNIT_FRAME_COLUMNS
from neurodash.units import (
    HEAD,
    AttentionRow,
    Example,
    Link,
    LogitEffect,
    Source,
    TokenPeaks,
    UnitRef,
    UnitStats,
)

# An example's window, with the token ids it covers sliced from its sequence: the columns of
# ``Store._example``, then the FROM clause (tables ``e`` and ``s``) for a WHERE to follow.
_EXAMPLE_WINDOW = (
    "e.seq_id, e.pos, e.start, e.acts, list_slice(s.token_ids, e.start + 1, e.start + len(e.acts)) "
    "FROM examples e JOIN sequences s USING (seq_id)"
)


@dataclass(frozen=True)
class PeakIndex:
    """Per top example: its unit (``source index << 32 | unit``, the index in ``Store.sources()``), the
    token it peaks on and its value there; ``units`` (sorted) and ``n_top``, each unit's count of them."""

    unit_key: np.ndarray
    token_id: np.ndarray
    value: np.ndarray
    units: np.ndarray
    n_top: np.ndarray


# ``UNIT_FRAME_COLUMNS`` from ``units u`` joined to ``sources s``.
_UNIT_FRAME_SELECT = ", ".join(f"{'s' if c in ('layer', 'kind') else 'u'}.{c}" for c in UNIT_FRAME_COLUMNS)


class Store:
    """A finished store, opened read-only. Safe to share between threads."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise NeurodashError(f"no store at {self.path}: build one with {STORE.made_by}")
        if self.path.is_dir():
            raise NeurodashError(f"no store at {self.path}: it is a directory, not a store file")
        try:
            self._con, self._tables = open_checked(self.path, STORE, read_only=True)
        except duckdb.Error as e:  # a lock: another process writes the file
            raise NeurodashError(f"cannot open store {self.path} ({first_line(e)})") from None
        self._local = threading.local()
        self._peak_lock = threading.Lock()

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sql(self, query: str, params: Sequence = ()) -> duckdb.DuckDBPyConnection:
        """Run a query on this thread's cursor (DuckDB connections are not shared between threads)."""
        with self._reading():
            return self._cursor().execute(query, list(params))

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """A block of the file that cannot be read (cut short, corrupt) as one line, not a traceback;
        Ctrl-C that lands while DuckDB reads a registered Arrow table (DuckDB wraps it in its own
        error) as the KeyboardInterrupt it is."""
        try:
            yield
        except duckdb.Error as e:
            if "KeyboardInterrupt" in str(e) or isinstance(e, duckdb.InterruptException):
                raise KeyboardInterrupt from None
            if not is_damage(e):
                raise
            raise NeurodashError(
                f"{self.path} is damaged ({first_line(e)}): build it again with {STORE.made_by}"
            ) from None

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cur = getattr(self._local, "cur", None)
        if cur is None:
            cur = self._local.cur = self._con.cursor()
        return cur

    # --- sources and vocabulary -------------------------------------------------------------
    @cached_property
    def meta(self) -> dict[str, str]:
        return dict(self.sql("SELECT key, value FROM meta").fetchall())

    @cached_property
    def _sources(self) -> dict[str, Source]:
        rows = self.sql(
            "SELECT source_id, model, hook, kind, layer, n_units, n_tokens, sae, config "
            "FROM sources ORDER BY kind = 'head', kind, layer, source_id"  # heads after neurons and features
        ).fetchall()
        return {r[0]: Source(*r[:8], config=json.loads(r[8] or "{}")) for r in rows}

    def sources(self) -> list[Source]:
        return list(self._sources.values())

    def source(self, source_id: str) -> Source:
        try:
            return self._sources[source_id]
        except KeyError:
            raise NeurodashError(f"no source {source_id!r} in {self.path}") from None

    def has_unit(self, ref: UnitRef) -> bool:
        s = self._sources.get(ref.source_id)
        return s is not None and 0 <= ref.unit < s.n_units

    @cached_property
    def vocab(self) -> list[str]:
        rows = self.sql("SELECT token_id, token FROM vocab ORDER BY token_id").fetchall()
        tokens = [""] * (rows[-1][0] + 1 if rows else 0)
        for i, t in rows:
            tokens[i] = t
        return tokens

    def tokens(self, token_ids: Iterable[int]) -> tuple[str, ...]:
        v = self.vocab
        return tuple(v[i] for i in token_ids)

    # --- units ------------------------------------------------------------------------------
    def unit_stats(self, ref: UnitRef) -> UnitStats:
        rows = self.sql(  # fetchall, not fetchone: an unfinished result blocks this thread's cursor
            f"SELECT {', '.join(STAT_COLUMNS)}, n_tokens, hist_edges, hist_counts FROM units "
            "WHERE source_id = ? AND unit = ?",
            [ref.source_id, ref.unit],
        ).fetchall()
        row = rows[0] if rows else None
        if row is None:
            raise NeurodashError(f"no unit {ref} in {self.path}")
        return UnitStats(ref, *row[:8], hist_edges=tuple(row[8]), hist_counts=tuple(row[9]))

    def examples(self, ref: UnitRef, buckets: Sequence[str] | None = None) -> list[Example]:
        """A unit's examples, ordered by bucket (top, quantile groups high to low, bottom) and rank."""
        where, params = _unit_buckets(ref, buckets, "e.")
        rows = self.sql(
            f"SELECT e.bucket, e.rank, {_EXAMPLE_WINDOW} WHERE {where} ORDER BY {_display_order('e.')}",
            params,
        ).fetchall()
        return [self._example(ref, b, r, *window) for b, r, *window in rows]

    def strongest_examples(self, refs: Sequence[UnitRef]) -> dict[UnitRef, Example]:
        """Each unit's strongest example (top #0), one query per source; units without one are left out."""
        by_source: dict[str, list[int]] = {}
        for ref in refs:
            by_source.setdefault(ref.source_id, []).append(ref.unit)
        found = {}
        for source_id, units in by_source.items():
            rows = self.sql(
                f"SELECT e.unit, {_EXAMPLE_WINDOW} WHERE e.source_id = ? "
                "AND e.unit IN (SELECT unnest(?::INTEGER[])) AND e.bucket = 'top' AND e.rank = 0",
                [source_id, units],
            ).fetchall()
            for unit, *window in rows:
                ref = UnitRef(source_id, unit)
                found[ref] = self._example(ref, "top", 0, *window)
        return found

    def _example(self, ref: UnitRef, bucket: str, rank: int, seq_id, pos, start, acts, token_ids) -> Example:
        """An ``Example`` from the columns of ``_EXAMPLE_WINDOW``."""
        return Example(
            ref, bucket, rank, seq_id, pos, start, self.tokens(token_ids), tuple(token_ids), tuple(acts)
        )

    def sequence(self, seq_id: int) -> tuple[int, ...]:
        """A stored window's token ids."""
        row = self.sql("SELECT token_ids FROM sequences WHERE seq_id = ?", [seq_id]).fetchone()
        if row is None:
            raise NeurodashError(f"no sequence {seq_id} in {self.path}")
        return tuple(row[0])

    def logit_effects(self, ref: UnitRef) -> list[LogitEffect]:
        rows = self.sql(
            "SELECT sign, rank, token_id, value FROM logits WHERE source_id = ? AND unit = ? "
            "ORDER BY sign, rank",
            [ref.source_id, ref.unit],
        ).fetchall()
        return [LogitEffect(sign, rank, tid, self.vocab[tid], value) for sign, rank, tid, value in rows]

    def neighbors(self, ref: UnitRef) -> list[tuple[UnitRef, float]]:
        """Units of the same source whose output directions are nearest by cosine similarity."""
        rows = self.sql(
            "SELECT neighbor, cosine FROM neighbors WHERE source_id = ? AND unit = ? ORDER BY rank",
            [ref.source_id, ref.unit],
        ).fetchall()
        return [(UnitRef(ref.source_id, n), c) for n, c in rows]

    def links(self, ref: UnitRef, strong: bool = False) -> list[Link]:
        """Units of another source tied to this one through an SAE's decoder, strongest first.

        ``strong``: a neuron's features by their share of its strong firing (each token weighted by
        the neuron's activation), from ``links_strong``; empty for a store from before it."""
        table = "links_strong" if strong else "links"
        if table not in self._tables:  # a store from before them
            return []
        rows = self.sql(
            f"SELECT target_source_id, target_unit, weight, share FROM {table} "
            "WHERE source_id = ? AND unit = ? ORDER BY target_source_id, rank",
            [ref.source_id, ref.unit],
        ).fetchall()
        return [Link(UnitRef(s, u), w, share) for s, u, w, share in rows]

    # --- attention heads (sources of kind HEAD) ---------------------------------------------
    @property
    def has_attention(self) -> bool:
        """Whether the store has the ``attention`` table (stores from before heads do not)."""
        return "attention" in self._tables

    def head_sources(self) -> list[Source]:
        """The attention-head sources (``L3.attn``, one per layer), by layer; empty before heads."""
        return [s for s in self._sources.values() if s.kind == HEAD]

    def heads_frame(self) -> pd.DataFrame:
        """One row per head of every head source: ``units_frame``'s columns (statistics of its
        ``||z_h||``, one column per score metric) with ``head`` (= ``unit``); for the layer x head
        heat maps and the heads table. Empty (same columns) for a store without heads."""
        frame = self.units_frame()
        heads = frame[frame["kind"] == HEAD].reset_index(drop=True)
        heads.insert(UNIT_FRAME_COLUMNS.index("unit") + 1, "head", heads["unit"])
        kept = [c for c in heads.columns if c in ("head", *UNIT_FRAME_COLUMNS) or heads[c].notna().any()]
        return heads[kept]  # without the metrics only other kinds of units have

    def scores(self, ref: UnitRef) -> dict[str, float]:
        rows = self.sql(
            "SELECT metric, value FROM scores WHERE source_id = ? AND unit = ? ORDER BY metric",
            [ref.source_id, ref.unit],
        ).fetchall()
        return dict(rows)

    def clusters(self, ref: UnitRef) -> dict[tuple[int, int], int]:
        """The context cluster of each of the unit's top and quantile examples, by (seq_id, pos);
        empty for a store written before clusters were kept."""
        if "clusters" not in self._tables:
            return {}
        rows = self.sql(
            "SELECT DISTINCT seq_id, pos, cluster FROM clusters WHERE source_id = ? AND unit = ?",
            [ref.source_id, ref.unit],
        ).fetchall()
        return {(seq, pos): c for seq, pos, c in rows}

    # --- search ------------------------------------------------------------------------------
    def units_peaking_on(self, text: str, substring: bool = False, limit: int = 50) -> list[TokenPeaks]:
        """Units whose top examples peak on a token matching ``text``, across every source: most matching
        top examples first, then the highest value there.

        A token matches exactly when it equals ``text`` or, surrounding whitespace stripped on both
        sides, the stripped ``text`` (``6`` finds `` 6``); with ``substring``, when it contains ``text``,
        case ignored. Only the ``top`` bucket counts: a unit's strongest examples. Reads ``peak_index``
        (loaded once), so that a search takes milliseconds, not a scan of every example."""
        wanted = self.matching_token_ids(text, substring)
        if not wanted.size:
            return []
        index = self.peak_index
        hit = np.zeros(max(len(self.vocab), 1), dtype=bool)
        hit[wanted] = True
        rows = np.flatnonzero(hit[index.token_id])
        if not rows.size:
            return []
        keys, which = np.unique(index.unit_key[rows], return_inverse=True)
        counts = np.bincount(which)
        best = np.full(len(keys), -np.inf, dtype=np.float64)
        np.maximum.at(best, which, index.value[rows])
        order = np.lexsort((-best, -counts))[:limit]  # most matches, then the highest value
        sources = self.sources()
        found = []
        for k in order:
            tokens = sorted({self.vocab[t] for t in index.token_id[rows[which == k]]})[:5]
            source, unit = divmod(int(keys[k]), 1 << 32)
            found.append(
                TokenPeaks(
                    UnitRef(sources[source].source_id, unit),
                    int(counts[k]),
                    int(index.n_top[np.searchsorted(index.units, keys[k])]),
                    float(best[k]),
                    tuple(tokens),
                )
            )
        return found

    def matching_token_ids(self, text: str, substring: bool = False) -> np.ndarray:
        """The vocabulary ids that ``units_peaking_on`` counts as ``text`` (see there)."""
        needle = text if substring else text.strip()
        if not needle:
            return np.zeros(0, dtype=np.int64)
        if substring:
            lowered = needle.lower()
            ids = [i for i, t in enumerate(self.vocab) if lowered in t.lower()]
        else:
            ids = [i for i, t in enumerate(self.vocab) if t == text or t.strip() == needle]
        return np.asarray(ids, dtype=np.int64)

    @cached_property
    def peak_index(self) -> PeakIndex:
        """Every top example's unit, max token and value, in memory (one scan of the examples)."""
        with self._peak_lock:
            cached = self.__dict__.get("peak_index")  # another thread may have loaded it meanwhile
            if cached is not None:
                return cached
            columns = self.sql(
                "SELECT src.i AS source, e.unit, s.token_ids[e.pos + 1] AS token_id, "
                "e.acts[e.pos - e.start + 1] AS value "
                "FROM examples e JOIN sequences s USING (seq_id) "
                "JOIN (SELECT unnest(?::VARCHAR[]) AS source_id, generate_subscripts(?::VARCHAR[], 1) - 1 AS i) "
                "src USING (source_id) WHERE e.bucket = 'top'",
                [[x.source_id for x in self.sources()]] * 2,
            ).fetchnumpy()
            unit_key = (columns["source"].astype(np.int64) << 32) | columns["unit"].astype(np.int64)
            units, n_top = np.unique(unit_key, return_counts=True)
            return PeakIndex(
                unit_key,
                columns["token_id"].astype(np.int64),
                columns["value"].astype(np.float32),
                units,
                n_top,
            )

    def attention_rows(self, ref: UnitRef, buckets: Sequence[str] | None = None) -> list[AttentionRow]:
        """A head's stored query rows, one per example (same bucket and rank), in ``examples`` order;
        empty for a store without the ``attention`` table or a unit that is not a head."""
        if "attention" not in self._tables:
            return []
        where, params = _unit_buckets(ref, buckets)
        rows = self.sql(
            f"SELECT bucket, rank, pattern, before FROM attention WHERE {where} ORDER BY {_display_order()}",
            params,
        ).fetchall()
        return [AttentionRow(b, r, tuple(p), None if m is None else float(m)) for b, r, p, m in rows]

    # --- frames for notebooks, the overview and export -------------------------------------
    def units_frame(self, source_id: str | None = None) -> pd.DataFrame:
        """One row per unit: statistics plus one column per score metric."""
        where = "WHERE u.source_id = ?" if source_id else ""
        df = self.sql(
            f"SELECT {_UNIT_FRAME_SELECT} FROM units u JOIN sources s USING (source_id) "
            f"{where} ORDER BY s.kind = 'head', s.kind, s.layer, u.source_id, u.unit",
            [source_id] if source_id else [],
        ).df()
        if not self._has_scores:
            return df
        # PIVOT takes no parameter in its source unless its columns are listed (the store's own metrics)
        columns = ", ".join(f"'{sql_string(m)}'" for m in self.score_metrics)
        scores = self.sql(
            f"PIVOT (SELECT * FROM scores {'WHERE source_id = ?' if source_id else ''}) "
            f"ON metric IN ({columns}) USING first(value)",
            [source_id] if source_id else [],
        ).df()
        return df.merge(scores, on=["source_id", "unit"], how="left")

    @cached_property
    def _has_scores(self) -> bool:
        return bool(self.sql("SELECT count(*) FROM scores").fetchall()[0][0])

    def examples_frame(self, ref: UnitRef, buckets: Sequence[str] | None = None) -> pd.DataFrame:
        """A unit's examples as a DataFrame: one row per example, text and per-token activations."""
        return pd.DataFrame(
            [
                {
                    "unit": str(e.ref),
                    "bucket": e.bucket,
                    "rank": e.rank,
                    "seq_id": e.seq_id,
                    "pos": e.pos,
                    "start": e.start,
                    "value": e.value,
                    "text": e.text,
                    "tokens": list(e.tokens),
                    "acts": list(e.acts),
                }
                for e in self.examples(ref, buckets)
            ]
        )

    # --- selections and export (neurodash/export.py) ---------------------------------------
    @cached_property
    def bucket_names(self) -> list[str]:
        """The buckets that examples are in, in display order: top, quantile groups high to low, bottom."""
        rows = self.sql(
            "SELECT DISTINCT bucket FROM examples ORDER BY bucket = 'bottom', bucket <> 'top', bucket DESC"
        ).fetchall()
        return [r[0] for r in rows]

    @cached_property
    def score_metrics(self) -> list[str]:
        return [r[0] for r in self.sql("SELECT DISTINCT metric FROM scores ORDER BY metric").fetchall()]

    def select_units(
        self,
        source_ids: Sequence[str] | None = None,
        refs: Sequence[UnitRef] | None = None,
        ranges: Sequence[tuple[str, float | None, float | None]] = (),
    ) -> pd.DataFrame:
        """Units (``source_id``, ``unit``) in store order that are in ``source_ids`` and ``refs`` (None: any)
        and within every ``(metric, low, high)`` range (None: open) of a statistic or score metric."""
        where, params = ["TRUE"], []
        if source_ids is not None:
            where.append("u.source_id IN (SELECT unnest(?::VARCHAR[]))")
            params.append(list(source_ids))
        if refs is not None:
            where.append("(u.source_id || '/' || u.unit) IN (SELECT unnest(?::VARCHAR[]))")
            params.append([str(r) for r in refs])
        for metric, low, high in ranges:
            clause, values = self._range_clause(metric, low, high)
            where.append(clause)
            params += values
        return self.sql(
            "SELECT u.source_id, u.unit FROM units u JOIN sources s USING (source_id) "
            f"WHERE {' AND '.join(where)} ORDER BY s.kind, s.layer, u.source_id, u.unit",
            params,
        ).df()

    def _range_clause(self, metric: str, low: float | None, high: float | None) -> tuple[str, list]:
        bounds = "(? IS NULL OR {0} >= ?) AND (? IS NULL OR {0} <= ?)"
        values = [low, low, high, high]
        if metric in STAT_COLUMNS:
            return bounds.format(f"u.{metric}"), values
        if metric in self.score_metrics:
            return (
                "EXISTS (SELECT 1 FROM scores c WHERE c.source_id = u.source_id AND c.unit = u.unit "
                f"AND c.metric = ? AND {bounds.format('c.value')})",
                [metric, *values],
            )
        known = ", ".join([*STAT_COLUMNS, *self.score_metrics])
        raise NeurodashError(f"no metric {metric!r} in {self.path} (known: {known})")

    def count_examples(self, keys: pa.Table, buckets: Sequence[str] = ()) -> int:
        """How many examples ``keys`` names (see ``_example_rows``)."""
        cur = self._cursor()
        query, params = _examples_joined(keys, buckets)
        with self._reading(), _registered(cur, keys):
            return cur.execute(f"SELECT count(*) {query}", params).fetchall()[0][0]

    def example_rows(self, keys: pa.Table, buckets: Sequence[str] = ()) -> pa.Table:
        """The examples that ``keys`` names, in store order, as Arrow; see ``_example_rows``."""
        with self._reading():
            return _example_rows(self._cursor(), keys, buckets)

    def example_batches(
        self, key_chunks: Iterable[pa.Table], buckets: Sequence[str] = ()
    ) -> Iterator[pa.Table]:
        """``example_rows`` per chunk of keys, on a cursor of its own: the stream may be read on any thread."""
        cur = self._con.cursor()
        try:
            for keys in key_chunks:
                with self._reading():
                    rows = _example_rows(cur, keys, buckets)
                yield rows
        finally:
            cur.close()

    # --- memory -------------------------------------------------------------------------------
    def release_cache(self, floor_mb: int = 16) -> None:
        """Hand back DuckDB's cache of the file's blocks, which grows with every unit read (to the
        size of the file): lower the memory limit to ``floor_mb`` (evicting the rest), then reset it
        to DuckDB's default (a store never sets its own; read back as text, "18.8 GiB", the old value
        would come back rounded, a little lower each time). For a server fallen idle: a query in
        that instant has ``floor_mb`` to work in."""
        cur = self._cursor()
        try:
            cur.execute(f"SET memory_limit = '{int(floor_mb)}MB'")
        except duckdb.Error:
            pass  # a query in flight holds more: the next idle moment will do
        finally:
            cur.execute("RESET memory_limit")


def _unit_buckets(ref: UnitRef, buckets: Sequence[str] | None, table: str = "") -> tuple[str, list]:
    """WHERE a row is ``ref``'s and in ``buckets`` (None or empty: any), for a table aliased ``table``."""
    where, params = f"{table}source_id = ? AND {table}unit = ?", [ref.source_id, ref.unit]
    if buckets:
        where += f" AND {table}bucket IN ({', '.join('?' * len(buckets))})"
        params += list(buckets)
    return where, params


def _display_order(table: str = "") -> str:
    """Examples as the pages show them: top, quantile groups high to low, bottom; by rank within each."""
    return f"{table}bucket = 'bottom', {table}bucket <> 'top', {table}bucket DESC, {table}rank"


def _examples_joined(keys: pa.Table, buckets: Sequence[str]) -> tuple[str, list]:
    """``FROM examples e`` joined to the registered ``keys`` on its columns among ``EXAMPLE_KEYS``."""
    on = " AND ".join(f"e.{c} = k.{c}" for c in EXAMPLE_KEYS if c in keys.column_names)
    query = (
        f"FROM examples e JOIN _nd_keys k ON {on} JOIN sequences s ON s.seq_id = e.seq_id "
        "JOIN sources src ON src.source_id = e.source_id"
    )
    if not buckets:
        return query, []
    return f"{query} WHERE e.bucket IN (SELECT unnest(?::VARCHAR[]))", [list(buckets)]


@contextmanager
def _registered(cur: duckdb.DuckDBPyConnection, keys: pa.Table) -> Iterator[None]:
    cur.register("_nd_keys", keys)
    try:
        yield
    finally:
        cur.unregister("_nd_keys")


def _example_rows(cur: duckdb.DuckDBPyConnection, keys: pa.Table, buckets: Sequence[str]) -> pa.Table:
    """Examples of the units (``keys``: source_id, unit) or the exact examples (``keys`` with every
    column of ``EXAMPLE_KEYS``, and optionally ``note``, carried along) in ``buckets`` (empty: all);
    ordered by source, unit, bucket (top first) and rank.

    Columns: unit (``L3.mlp/12``), source_id, unit_index, layer, bucket, rank, seq_id, pos, start,
    value, max_token_id, token_ids (the window), acts, [note].
    """
    query, params = _examples_joined(keys, buckets)
    note = ", k.note" if "note" in keys.column_names else ""
    with _registered(cur, keys):
        return cur.sql(
            "SELECT e.source_id || '/' || e.unit AS unit, e.source_id, e.unit AS unit_index, src.layer, "
            "e.bucket, e.rank, e.seq_id, e.pos, e.start, e.acts[e.pos - e.start + 1] AS value, "
            "s.token_ids[e.pos + 1] AS max_token_id, "
            f"list_slice(s.token_ids, e.start + 1, e.start + len(e.acts)) AS token_ids, e.acts{note} "
            f"{query} ORDER BY src.kind, src.layer, e.source_id, e.unit, "
            "e.bucket = 'bottom', e.bucket <> 'top', e.bucket DESC, e.rank",
            params=params,
        ).to_arrow_table()


def open_store(path: str | os.PathLike) -> Store:
    """Open a store read-only: ``open_store("demo.duckdb").units_frame()``."""
    return Store(path)
