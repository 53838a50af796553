"""Writing query results to files: Arrow batches streamed into CSV, JSON lines or Parquet."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from neurodash.storage.connect import connect_for_copy, sql_string

COPY_OPTIONS = {
    "parquet": "FORMAT PARQUET, ROW_GROUP_SIZE 16384",
    "jsonl": "FORMAT JSON",
    "csv": "FORMAT CSV, HEADER",
}


def copy_batches(reader: pa.RecordBatchReader, path: Path, fmt: str) -> None:
    """Stream Arrow batches into one csv, jsonl or parquet file with DuckDB's ``COPY`` (a private
    in-memory database reads the stream, so the batches may query a store; it may write ``path``
    and touch no other file).

    Text formats write activations as doubles (the exact float32 values, so they parse back equal);
    CSV writes list columns as JSON arrays.
    """
    as_double = "value::DOUBLE AS value, acts::DOUBLE[] AS acts"
    select = {
        "parquet": "SELECT * FROM _nd_batches",
        "jsonl": f"SELECT * REPLACE ({as_double}) FROM _nd_batches",
        "csv": "SELECT * REPLACE (value::DOUBLE AS value, to_json(tokens) AS tokens, "
        "to_json(acts::DOUBLE[]) AS acts) FROM _nd_batches",
    }[fmt]
    path = path.absolute()  # as allowed_paths holds it
    con = connect_for_copy(path)
    try:
        con.register("_nd_batches", reader)
        con.execute(f"COPY ({select}) TO '{sql_string(str(path))}' ({COPY_OPTIONS[fmt]})")
    except duckdb.InterruptException:
        raise KeyboardInterrupt from None
    finally:
        con.close()
