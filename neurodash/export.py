"""Take examples out of a store: select units (or a curated set), get a DataFrame or write a file.

>>> sel = Selection(units=["L3N12"], buckets=["top"])  # doctest: +SKIP
>>> examples_frame(store, sel)                           # doctest: +SKIP
>>> export(store, sel, None, "l3n12.jsonl")              # doctest: +SKIP

One row per example: ``unit`` (``L3.mlp/12``), ``source_id``, ``unit_index``, ``layer``, ``bucket``,
``rank``, ``seq_id``, ``pos``, ``start``, ``value`` (the activation at ``pos``), ``max_token`` (the
token at ``pos``), ``text``, ``tokens``, ``acts``, and ``note`` for a curated set. Rows come in store
order: source, unit, bucket (top, quantile groups high to low, bottom), rank.

Files stream, ``CHUNK_UNITS`` units' rows at a time, into ``<out>.partial``, renamed into place only
when complete: memory holds one chunk (and DuckDB's cache of the store's pages), whatever the size
of the selection. CSV and JSONL write activations as doubles, the exact
float32 values, so they parse back equal; CSV writes ``tokens`` and ``acts`` as JSON arrays.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from neurodash.errors import NeurodashError
from neurodash.storage import Store, check_writable
from neurodash.storage.copy import copy_batches
from neurodash.units import UnitRef, parse_ref

FORMATS = ("csv", "jsonl", "parquet", "html")
EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".html": "html"}
QUANTILES = "quantiles"  # every quantile group
CHUNK_UNITS = 256  # units per query while streaming
HTML_MAX_EXAMPLES = 20_000  # a report a browser opens in seconds
ROW_SCHEMA = pa.schema(
    [
        ("unit", pa.string()),
        ("source_id", pa.string()),
        ("unit_index", pa.int32()),
        ("layer", pa.int32()),
        ("bucket", pa.string()),
        ("rank", pa.int32()),
        ("seq_id", pa.int64()),
        ("pos", pa.int32()),
        ("start", pa.int32()),
        ("value", pa.float32()),
        ("max_token", pa.string()),
        ("text", pa.string()),
        ("tokens", pa.list_(pa.string())),
        ("acts", pa.list_(pa.float32())),
    ]
)
NOTE_FIELD = pa.field("note", pa.string())

Range = tuple[str, float | None, float | None]


@dataclass(frozen=True)
class Selection:
    """Which examples to take. Every criterion given narrows the selection; the values of one
    criterion are alternatives. Nothing given: every example of every unit.

    - ``units``: references, ``L12N345``, ``L12F7`` or ``L12.mlp/345`` (``UnitRef``s too)
    - ``layers``, ``sources`` (``L12.mlp``)
    - ``ranges``: ``(metric, low, high)`` on a statistic (``max_act``, ``density``, ...) or a score
      metric, None for an open end; a mapping ``{"density": (None, 0.01)}`` works too
    - ``buckets``: ``top``, ``bottom``, quantile groups (``q0.40``) or ``quantiles`` (every group)
    - ``set_name``: a curated set (``neurodash.storage.sets``): its examples, narrowed by the rest
    """

    units: tuple[str, ...] = ()
    layers: tuple[int, ...] = ()
    sources: tuple[str, ...] = ()
    ranges: tuple[Range, ...] = ()
    buckets: tuple[str, ...] = ()
    set_name: str | None = None

    def __post_init__(self) -> None:  # lists, UnitRefs and a mapping of ranges are welcome
        fields = {
            "units": tuple(str(u) for u in self.units),
            "layers": tuple(int(x) for x in self.layers),
            "sources": tuple(self.sources),
            "ranges": _ranges(self.ranges),
            "buckets": tuple(self.buckets),
        }
        for name, value in fields.items():
            object.__setattr__(self, name, value)


def _ranges(ranges: Iterable[Range] | Mapping[str, tuple[float | None, float | None]]) -> tuple[Range, ...]:
    if isinstance(ranges, Mapping):
        return tuple((str(m), lo, hi) for m, (lo, hi) in ranges.items())
    return tuple((m, lo, hi) for m, lo, hi in ranges)


@dataclass(frozen=True)
class Plan:
    """A selection resolved against a store: the query keys per chunk, the buckets, the row count."""

    chunks: tuple[pa.Table, ...]
    buckets: tuple[str, ...]
    n_examples: int
    with_note: bool = False

    @property
    def schema(self) -> pa.Schema:
        return ROW_SCHEMA.append(NOTE_FIELD) if self.with_note else ROW_SCHEMA


# --- resolving a selection --------------------------------------------------------------------
def resolve_units(store: Store, selection: Selection) -> list[UnitRef]:
    """The units the selection's unit criteria match, in store order (a curated set is not applied)."""
    units = _units(store, selection)
    return [UnitRef(s, int(u)) for s, u in zip(units["source_id"], units["unit"])]


def resolve(store: Store, selection: Selection, sets_file: str | os.PathLike | None = None) -> Plan:
    """Resolve ``selection``; a clear error for an unknown unit, source, layer, metric, bucket or set,
    and for a selection with no example."""
    buckets = resolve_buckets(store, selection.buckets)
    if selection.set_name is not None:
        result = _set_plan(store, selection, selection.set_name, buckets, sets_file)
    else:
        keys = _unit_keys(_units(store, selection))
        chunks = tuple(keys.slice(i, CHUNK_UNITS) for i in range(0, keys.num_rows, CHUNK_UNITS))
        result = Plan(chunks, buckets, store.count_examples(keys, buckets))
    if result.n_examples == 0:
        raise NeurodashError("the selection has no examples: widen it")
    return result


def _units(store: Store, sel: Selection) -> pd.DataFrame:
    sources = store.sources()
    for source_id in sel.sources:
        store.source(source_id)  # an unknown source is an error
    missing = sorted(set(sel.layers) - {s.layer for s in sources})
    if missing:
        layers = sorted({s.layer for s in sources})
        raise NeurodashError(f"no layer {missing[0]} in {store.path} (layers: {_spans(layers)})")
    chosen = [
        s.source_id
        for s in sources
        if (not sel.sources or s.source_id in sel.sources) and (not sel.layers or s.layer in sel.layers)
    ]
    refs = [parse_ref(u, sources) for u in sel.units] or None
    return store.select_units(chosen if sel.sources or sel.layers else None, refs, sel.ranges)


def _unit_keys(units: pd.DataFrame) -> pa.Table:
    return pa.table(
        {"source_id": pa.array(units["source_id"], pa.string()), "unit": pa.array(units["unit"], pa.int32())}
    )


def _set_plan(
    store: Store, sel: Selection, name: str, buckets: tuple[str, ...], sets_file: str | os.PathLike | None
) -> Plan:
    from neurodash.storage.sets import ExampleSets

    items = ExampleSets.beside(store.path, sets_file).example_keys(name, buckets)
    if sel.units or sel.layers or sel.sources or sel.ranges:
        units = _units(store, sel)
        items = items.merge(units, on=["source_id", "unit"])
    keys = pa.Table.from_pandas(items, preserve_index=False)
    found = store.count_examples(keys)
    if found != len(items):
        raise NeurodashError(
            f"{len(items) - found} example(s) of set {name!r} are not in {store.path}: "
            "was the store rebuilt since they were added?"
        )
    return Plan((keys,), buckets, found, with_note=True)


def resolve_buckets(store: Store, names: Iterable[str]) -> tuple[str, ...]:
    """Bucket names as stored, in display order; ``quantiles`` is every group, ``q0.4`` is ``q0.40``."""
    known = store.bucket_names
    wanted: set[str] = set()
    for name in names:
        name = name.strip().lower()
        if name == QUANTILES:
            wanted.update(b for b in known if b.startswith("q"))
            continue
        if m := re.fullmatch(r"q(\d*\.?\d+)", name):
            name = f"q{float(m.group(1)):.2f}"
        if name not in known:
            raise NeurodashError(
                f"no bucket {name!r} in {store.path} (buckets: {', '.join(known)}, {QUANTILES})"
            )
        wanted.add(name)
    return tuple(b for b in known if b in wanted)


def parse_range(text: str) -> Range:
    """``METRIC=LOW:HIGH``, either bound may be left out: ``skew=2:`` -> ("skew", 2.0, None)."""
    metric, _, bounds = text.partition("=")
    low, colon, high = bounds.partition(":")
    try:
        if not metric.strip() or not colon:
            raise ValueError
        return metric.strip(), float(low) if low.strip() else None, float(high) if high.strip() else None
    except ValueError:
        raise NeurodashError(
            f"cannot read range {text!r}: use METRIC=LOW:HIGH, such as density=0.01:0.1 or skew=2:"
        ) from None


def split_list(values: Iterable[str]) -> tuple[str, ...]:
    """Comma-separated values, from one or several options: ["a,b", "c"] -> ("a", "b", "c")."""
    return tuple(v.strip() for text in values for v in text.split(",") if v.strip())


def _spans(values: list[int]) -> str:
    """[0, 1, 2, 3] -> "0-3"."""
    return f"{values[0]}-{values[-1]}" if values == list(range(values[0], values[-1] + 1)) else str(values)


# --- rows -----------------------------------------------------------------------------------
def batches(store: Store, p: Plan) -> Iterator[pa.Table]:
    """The plan's rows, one Arrow table per chunk, in ``p.schema``."""
    vocab = pa.array(store.vocab, pa.string())
    for rows in store.example_batches(p.chunks, p.buckets):
        yield _decode(rows, vocab).cast(p.schema)


def _decode(rows: pa.Table, vocab: pa.Array) -> pa.Table:
    """Token ids to tokens, text and max token; the columns in row order."""
    ids = rows["token_ids"].combine_chunks()
    offsets = pc.subtract(ids.offsets, ids.offsets[0])  # pyright: ignore[reportAttributeAccessIssue]  # made at import, not in pyarrow's stubs
    tokens = pa.ListArray.from_arrays(offsets, vocab.take(ids.flatten()))
    decoded = {
        "max_token": vocab.take(rows["max_token_id"]),
        "text": pc.binary_join(tokens, ""),  # pyright: ignore[reportAttributeAccessIssue]  # as pc.subtract
        "tokens": tokens,
    }
    names = [n for n in (*ROW_SCHEMA.names, NOTE_FIELD.name) if n in decoded or n in rows.column_names]
    return pa.table({n: decoded[n] if n in decoded else rows[n] for n in names})


def examples_frame(
    store: Store, selection: Selection, sets_file: str | os.PathLike | None = None
) -> pd.DataFrame:
    """The selection's examples as a DataFrame, one row per example (``tokens``, ``acts``: lists)."""
    p = resolve(store, selection, sets_file)
    table = pa.concat_tables(batches(store, p))
    df = table.drop_columns(["tokens", "acts"]).to_pandas()
    df.insert(df.columns.get_loc("text") + 1, "tokens", table["tokens"].to_pylist())
    df.insert(df.columns.get_loc("tokens") + 1, "acts", table["acts"].to_pylist())
    return df


# --- files ----------------------------------------------------------------------------------
def export(
    store: Store,
    selection: Selection,
    fmt: str | None,
    out: str | os.PathLike,
    overwrite: bool = False,
    sets_file: str | os.PathLike | None = None,
) -> Path:
    """Write the selection's examples to ``out`` as csv, jsonl, parquet or html (None: from the
    extension); return the path. Nothing is written unless the whole file is."""
    out = Path(out)
    fmt = output_format(fmt, out)
    _check_out(out, overwrite)
    p = resolve(store, selection, sets_file)
    if fmt == "html" and p.n_examples > HTML_MAX_EXAMPLES:
        raise NeurodashError(
            f"{p.n_examples:,} examples are too many for an HTML report (at most {HTML_MAX_EXAMPLES:,}): "
            "narrow the selection, or use csv, jsonl or parquet"
        )
    partial = out.with_name(out.name + ".partial")
    try:
        _write(store, p, fmt, partial, selection)
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return out


def export_bytes(
    store: Store, selection: Selection, fmt: str, sets_file: str | os.PathLike | None = None
) -> bytes:
    """The file ``export`` would write, as bytes (for a download)."""
    with tempfile.TemporaryDirectory(prefix="neurodash-export-") as folder:
        return export(
            store, selection, fmt, Path(folder) / f"examples.{fmt}", sets_file=sets_file
        ).read_bytes()


def output_format(fmt: str | None, out: Path) -> str:
    """The format asked for, or the one the file's extension names."""
    if fmt is None:
        fmt = EXTENSIONS.get(out.suffix.lower())
        if fmt is None:
            raise NeurodashError(f"cannot tell the format of {out.name}: pass --format {'|'.join(FORMATS)}")
    if fmt not in FORMATS:
        raise NeurodashError(f"unknown format {fmt!r}: use {', '.join(FORMATS)}")
    return fmt


def _check_out(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise NeurodashError(f"{out} is a directory: name the file to write")
    check_writable(out, overwrite)


def _write(store: Store, p: Plan, fmt: str, path: Path, selection: Selection) -> None:
    if fmt == "html":
        from neurodash.html_report import write_report

        write_report(store, batches(store, p), path, describe(selection), p.n_examples)
        return
    errors: list[BaseException] = []
    reader = pa.RecordBatchReader.from_batches(p.schema, _record_batches(batches(store, p), errors))
    try:
        copy_batches(reader, path, fmt)
    except Exception:
        if errors:  # raised while making rows (Ctrl-C included): that error, not DuckDB's wrapper of it
            raise errors[0] from None
        raise


def _record_batches(tables: Iterable[pa.Table], errors: list[BaseException]) -> Iterator[pa.RecordBatch]:
    """The tables' batches; an exception raised while making them is also kept in ``errors``."""
    try:
        for table in tables:
            yield from table.to_batches()
    except GeneratorExit:  # the reader was closed
        raise
    except BaseException as e:
        errors.append(e)
        raise


def describe(selection: Selection) -> str:
    """The selection in words, for a report's header."""
    parts = [
        f"set {selection.set_name!r}" if selection.set_name is not None else "",
        f"units {', '.join(selection.units)}" if selection.units else "",
        f"layers {_spans(sorted(selection.layers))}" if selection.layers else "",
        f"sources {', '.join(selection.sources)}" if selection.sources else "",
        *(
            f"{m} in [{'' if lo is None else lo}, {'' if hi is None else hi}]"
            for m, lo, hi in selection.ranges
        ),
        f"buckets {', '.join(selection.buckets)}" if selection.buckets else "",
    ]
    return "; ".join(p for p in parts if p) or "every example"
