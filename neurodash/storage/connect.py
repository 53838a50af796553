"""Opening DuckDB files: the one place that calls ``duckdb.connect``.

A store or a sets file may come from anyone, so no file is handed to DuckDB before its first bytes
say it is a whole DuckDB database, and every connection is inert: extensions are never installed
nor loaded (a SQLite file would otherwise fetch ``sqlite_scanner`` from the internet), no file but
the database itself can be read or written (external access off, which also keeps DuckDB off the
network; DuckDB refuses to turn it back on while the database is open, and with it off no extension
can be installed or loaded even if a setting were changed). The configuration is not locked: the
server lowers the memory limit for a moment to hand back DuckDB's block cache. A file that is not
what was expected is refused with one line saying what it is.

Measured on DuckDB 2.0: with external access off, Arrow tables registered on the connection,
``CHECKPOINT``, ``.df()`` and spilling to the database's ``.tmp`` folder all work; ``COPY ... TO``
needs its one output file in ``allowed_paths`` (DuckDB >= 1.2), set before external access goes off.
"""

from __future__ import annotations

import codecs
import struct
from pathlib import Path

import duckdb

from neurodash.errors import NeurodashError
from neurodash.storage.schema import FILE_KINDS, FileSchema

Config = dict[str, str | bool | int | float | list[str]]  # duckdb.connect's ``config``
INERT: Config = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
}
OFFLINE: Config = {**INERT, "enable_external_access": False}

# A DuckDB file: a 4096-byte main header ("DUCK" at byte 8), two 4096-byte database headers, then blocks.
_HEADER_SIZE = 4096
_DUCKDB_MAGIC = (8, b"DUCK")
_OTHER_KINDS = (  # (offset, first bytes, what the file is)
    (0, b"SQLite format 3\x00", "a SQLite database"),
    (0, b"PAR1", "a Parquet file"),
    (0, b"ARROW1", "an Arrow file"),
    (0, b"PK\x03\x04", "a zip archive"),
    (0, b"\x1f\x8b", "a gzip file"),
)


def connect(path: Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """An inert connection to the DuckDB file ``path`` (check it first with ``check_file``)."""
    return duckdb.connect(str(path), read_only=read_only, config=OFFLINE)


def connect_for_copy(out: Path) -> duckdb.DuckDBPyConnection:
    """An inert in-memory connection that may write one file, ``out``, and read no other: for
    ``COPY (SELECT ... FROM registered_arrow) TO 'out'``. One thread: with more, DuckDB holds
    batches back to keep their order."""
    con = duckdb.connect(":memory:", config={**INERT, "threads": 1})
    try:
        con.execute(f"SET allowed_paths = ['{sql_string(str(out))}']")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def open_checked(
    path: Path, schema: FileSchema, *, read_only: bool, may_be_empty: bool = False
) -> tuple[duckdb.DuckDBPyConnection, frozenset[str]]:
    """An inert connection to ``path``, a file of the kind ``schema`` describes, and its tables.

    Raises ``NeurodashError`` with one line for anything else: another kind of file, a truncated
    one, a DuckDB database without the schema's tables (an empty one is fine if ``may_be_empty``)
    or of another schema version. Lets ``duckdb.IOException`` about a lock through (the caller may
    wait and retry).
    """
    check_file(path, schema)
    try:
        con = connect(path, read_only=read_only)
    except duckdb.Error as e:
        if isinstance(e, duckdb.IOException) and "lock" in str(e).lower():
            raise
        raise _not_readable(
            path, schema, f"a DuckDB file that DuckDB cannot read ({first_line(e)})"
        ) from None
    try:
        tables = check_tables(con, path, schema, may_be_empty)
    except BaseException:
        con.close()
        raise
    return con, tables


def check_file(path: Path, schema: FileSchema) -> None:
    """Refuse, with one line, a path that is not a whole DuckDB file, before DuckDB sees it."""
    what = describe_file(path)
    if what is not None:
        raise _not_readable(path, schema, what)


def describe_file(path: Path) -> str | None:
    """What ``path`` is, in words, unless it looks like a whole DuckDB file (None)."""
    if path.is_dir():
        return "a directory"
    try:
        with path.open("rb") as f:
            head = f.read(3 * _HEADER_SIZE)
            size = f.seek(0, 2)
    except OSError as e:
        return f"a file that cannot be read ({e.strerror})"
    if size == 0:
        return "an empty file"
    offset, magic = _DUCKDB_MAGIC
    if head[offset : offset + len(magic)] == magic:
        cut = _cut_short(head, size)
        return None if cut is None else f"a DuckDB file cut short: {cut}"
    for offset, start, what in _OTHER_KINDS:
        if head[offset : offset + len(start)] == start:
            return what
    return "a text file" if _is_text(head) else "a file of an unknown kind"


def _cut_short(head: bytes, size: int) -> str | None:
    """How a DuckDB file of ``size`` bytes is cut short, or None if it looks whole: it ends after
    its headers, on a block boundary (the block size is in the newer of its two database headers).
    A free block at the end may be left out of the file, so a shorter file than the header's block
    count is no sign; a file that ends within a block is."""
    if size < 3 * _HEADER_SIZE:
        return f"its {size:,} bytes are shorter than its headers"
    headers = []
    for start in (_HEADER_SIZE, 2 * _HEADER_SIZE):
        # checksum, iteration, meta block, free list, block count, block allocation size
        _, iteration, _, _, _, block_size = struct.unpack_from("<6Q", head, start)
        headers.append((iteration, block_size))
    _, block_size = max(headers)
    if not (0 < block_size <= 1 << 24 and block_size & (block_size - 1) == 0):
        return None  # a header this code does not know: DuckDB will judge
    if (size - 3 * _HEADER_SIZE) % block_size:
        return f"its {size:,} bytes end partway through a {block_size:,}-byte block"
    return None


def _is_text(head: bytes) -> bool:
    """Whether the first bytes are UTF-8 text (a character cut at their end is fine)."""
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return "\x00" not in text


def check_tables(
    con: duckdb.DuckDBPyConnection, path: Path, schema: FileSchema, may_be_empty: bool = False
) -> frozenset[str]:
    """The file's tables, if they are the schema's at its version; else one line saying what it is."""
    try:
        tables = frozenset(r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall())
        version = _schema_version(con, tables)
    except duckdb.Error as e:
        raise _not_readable(path, schema, f"a damaged DuckDB file ({first_line(e)})") from None
    _check_blocks(con, path, schema, tables)
    if set(schema.tables) <= tables:
        if version not in (None, schema.version) or (version is None and "meta" in schema.tables):
            raise _other_version(path, schema, version)
        return tables
    if not tables and may_be_empty:
        return tables
    for other in FILE_KINDS:
        if other is not schema and set(other.tables) <= tables:
            raise _not_readable(path, schema, f"a neurodash {other.what}")
    if version is not None:
        raise _other_version(path, schema, version)
    found = f"tables {', '.join(sorted(tables))}" if tables else "no tables"
    raise _not_readable(path, schema, f"a DuckDB database with {found}")


def _check_blocks(
    con: duckdb.DuckDBPyConnection, path: Path, schema: FileSchema, tables: frozenset[str]
) -> None:
    """Refuse a file cut short at a block boundary: one that lacks blocks its tables use (of the
    tables neurodash knows, their metadata read, not their data: 0.3 s for a 600 MB store)."""
    known = sorted({t for kind in FILE_KINDS for t in (*kind.tables, *kind.optional_tables)} & tables)
    if not known:
        return
    used = " UNION ALL ".join(f"SELECT max(block_id) AS b FROM pragma_storage_info('{t}')" for t in known)
    try:
        (last_block,) = con.execute(f"SELECT max(b) FROM ({used})").fetchall()[0]
        (block_size,) = con.execute("SELECT block_size FROM pragma_database_size()").fetchall()[0]
    except duckdb.Error as e:
        raise _not_readable(path, schema, f"a damaged DuckDB file ({first_line(e)})") from None
    if last_block is None or last_block < 0:
        return
    needed, size = 3 * _HEADER_SIZE + (last_block + 1) * block_size, path.stat().st_size
    if size < needed:
        raise _not_readable(
            path, schema, f"a DuckDB file cut short: its tables need {needed:,} bytes and it has {size:,}"
        )


def _schema_version(con: duckdb.DuckDBPyConnection, tables: frozenset[str]) -> int | None:
    if "meta" not in tables:
        return None
    try:
        rows = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
        return int(rows[0][0]) if rows else None
    except (duckdb.BinderException, duckdb.ConversionException, ValueError, TypeError):
        return None  # a meta table of another shape


def _not_readable(path: Path, schema: FileSchema, what: str) -> NeurodashError:
    return NeurodashError(
        f"{path} is not a readable neurodash {schema.what}: it is {what} "
        f"(expected a DuckDB file written by {schema.made_by})"
    )


def _other_version(path: Path, schema: FileSchema, version: int | None) -> NeurodashError:
    found = "no schema version" if version is None else f"schema version {version}"
    return NeurodashError(
        f"{path} is a neurodash {schema.what} of {found}, and this neurodash reads version "
        f"{schema.version}: open it with the neurodash that wrote it, or write a new one with {schema.made_by}"
    )


def is_damage(error: duckdb.Error) -> bool:
    """Whether DuckDB failed to read the file itself (cut short, corrupt), not to run the query."""
    return isinstance(error, (duckdb.IOException, duckdb.FatalException)) or "Corrupt database" in str(error)


def first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def sql_string(text: str) -> str:
    """``text`` inside a SQL string literal (for the statements that take no parameters)."""
    return text.replace("'", "''")
